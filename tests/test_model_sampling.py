"""Sampler: CFG by batch doubling, sampling filters, seeding, prompts, continuity across sliding windows."""
import pytest
import torch

from vaura.model import VAURA, named_size
from vaura.model.sampler import generate, generate_long, sample_logits, window_starts


def tiny_model(conditioning="fusion", seed=0) -> VAURA:
    torch.manual_seed(seed)
    cfg = named_size("tiny", conditioning=conditioning, max_seconds=0.8)
    model = VAURA(cfg, n_codebooks=3, codebook_size=16, codebook_dim=4, audio_frame_rate=50.0, visual_dim=12)
    for head in model.lm_heads:
        torch.nn.init.normal_(head.weight, std=0.5)
    return model.eval()


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("conditioning", ["fusion", "prepend"])
def test_gamma_one_equals_plain_conditional_sampling(conditioning):
    model = tiny_model(conditioning)
    visual = torch.randn(2, 10, 12)
    guided = generate(model, visual, 30, cfg_scale=1.0, top_k=0, generator=gen(3))
    plain = generate(model, visual, 30, cfg_scale=None, top_k=0, generator=gen(3))
    assert torch.equal(guided, plain)
    assert not torch.equal(generate(model, visual, 30, cfg_scale=6.0, top_k=0, generator=gen(3)), plain)


def test_gamma_zero_equals_sampling_the_null_condition():
    model = tiny_model()
    visual = torch.randn(2, 10, 12)
    null_visual = model.cls_embeddings.uncond_embedding[:10].expand(2, 10, 12).clone()
    guided = generate(model, visual, 30, cfg_scale=0.0, top_k=0, generator=gen(5))
    null_only = generate(model, null_visual, 30, cfg_scale=None, top_k=0, generator=gen(5))
    assert torch.equal(guided, null_only)


def test_same_seed_same_codes_and_batch_rows_match_single_runs():
    model = tiny_model()
    visual = torch.randn(2, 10, 12)
    a = generate(model, visual, 25, temperature=0.0)  # greedy: batch rows are independent of each other
    b = generate(model, visual[1:], 25, temperature=0.0)
    assert torch.equal(a[1:], b)
    assert torch.equal(generate(model, visual, 25, generator=gen(1)), generate(model, visual, 25, generator=gen(1)))
    assert a.shape == (2, 3, 25) and a.min() >= 0 and a.max() < 16


def test_top_k_and_top_p_restrict_the_candidates():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0, -1.0]]).expand(2000, 6)
    k2 = sample_logits(logits, top_k=2, generator=gen(0))
    assert set(k2.unique().tolist()) == {0, 1}
    # softmax of these logits: 0.636, 0.234, 0.086, ... -> p = 0.8 keeps exactly the first two
    p8 = sample_logits(logits, top_p=0.8, generator=gen(0))
    assert set(p8.unique().tolist()) == {0, 1}
    assert (sample_logits(logits, temperature=0.0) == 0).all()
    hot = sample_logits(logits, temperature=100.0, generator=gen(0))  # almost uniform
    assert len(hot.unique()) == 6


def test_prompt_frames_are_kept():
    model = tiny_model()
    prompt = torch.randint(0, 16, (2, 3, 12))
    out = generate(model, torch.randn(2, 10, 12), 30, prompt=prompt, generator=gen(0))
    assert torch.equal(out[..., :12], prompt)


def counting_model(card: int = 8) -> VAURA:
    """A hand-wired model whose next code is the previous code of the same codebook + 1 (mod card)."""
    cfg = named_size("tiny", d_model=24, n_head=2, cond_channels=8, max_seconds=0.8)
    model = VAURA(cfg, n_codebooks=2, codebook_size=card, codebook_dim=card, audio_frame_rate=50.0, visual_dim=4)
    with torch.no_grad():
        for layer in model.layers:  # blocks add nothing: the output reads the input embedding
            layer.attention.wo.weight.zero_()
            layer.feed_forward.w2.weight.zero_()
        model.cls_embeddings.projection.fc2.weight.zero_()
        for q, emb in enumerate(model.tok_embeddings):
            emb.emb.weight.copy_(torch.cat([torch.eye(card), torch.zeros(1, card)]))  # special -> zero vector
            place = torch.zeros(2 * card, card)
            place[q * card:(q + 1) * card] = torch.eye(card)
            emb.out_proj.weight_v.copy_((place + (place.sum(1, keepdim=True) == 0) * 1e-3)[:, :, None])
            emb.out_proj.weight_g.copy_(place.sum(1).view(-1, 1, 1))
            emb.out_proj.bias.zero_()
            head = torch.zeros(card, 24)
            for v in range(card):  # logit of v is high when the previous code was v - 1
                head[v, 8 + q * card + (v - 1) % card] = 40.0
            model.lm_heads[q].weight.copy_(head)
    return model.eval()


def test_long_generation_continues_across_window_joins():
    model = counting_model()
    visual = torch.randn(1, 25, 4)  # 2 s of 12.5 Hz features; 100 audio frames at 50 Hz
    codes = generate_long(model, visual, 100, window_frames=40, stride_frames=20, cfg_scale=3.0, top_k=0,
                          generator=gen(0))
    assert codes.shape == (1, 2, 100)
    for q in range(2):
        expected = (codes[0, q, 0] + torch.arange(100)) % 8
        assert torch.equal(codes[0, q], expected), q  # a restarted window would break the count
    # a window without the prompt does restart: its first frame is random, not the continuation
    fresh = [generate(model, visual[:, 5:15], 40, top_k=0, generator=gen(s))[0, 0, 0].item() for s in range(8)]
    assert len(set(fresh)) > 1


def test_window_starts_snap_to_visual_tokens():
    from vaura.cache import audio_frame_of_token

    rate = 44100 / 512
    starts = window_starts(431, 221, 55, rate, 12.5)  # 5 s of audio, stride ~0.64 s -> 8 tokens
    # stride 8 tokens; the last window is pulled back to token ceil((431 - 221) / 86.13 * 12.5) = 31
    assert [k for k, _ in starts] == [0, 8, 16, 24, 31]
    assert [a for _, a in starts] == [0, 55, 110, 165, 214]  # k * 0.08 s * 86.13 frames/s, rounded
    # the same start rule as the training cache's windows
    assert all(a == audio_frame_of_token(k, 12.5, rate) for k, a in starts)
    assert starts[-1][1] + 221 >= 431 and starts[-2][1] + 221 < 431
    assert window_starts(200, 221, 55, rate, 12.5) == [(0, 0)]  # shorter than one window


def test_compiled_decode_is_refused_off_cuda():
    with pytest.raises(ValueError, match="CUDA"):
        generate(tiny_model(), torch.randn(1, 10, 12), 10, compile=True)
