"""VAURA decoder: sizes, names, causality, KV cache == full recompute, conditioning paths."""
import json
from pathlib import Path

import pytest
import torch

from vaura.model import VAURA, named_size
from vaura.model.delay import build_delayed, revert_logits

FIXTURES = Path(__file__).parent / "fixtures"
VARIANTS = [("fusion", "timestamp"), ("fusion", "reference"), ("prepend", "timestamp")]


def tiny_model(conditioning="fusion", alignment="timestamp", seed=0, **kw) -> VAURA:
    torch.manual_seed(seed)
    cfg = named_size("tiny", conditioning=conditioning, alignment=alignment, max_seconds=0.8, **kw)
    model = VAURA(cfg, n_codebooks=3, codebook_size=16, codebook_dim=4, audio_frame_rate=50.0, visual_dim=12)
    for head in model.lm_heads:  # zero-initialised heads would make every logit 0
        torch.nn.init.normal_(head.weight, std=0.5)
    return model.eval()


def test_paper_size_matches_released_sampler_exactly():
    with torch.device("meta"):
        model = VAURA(named_size("paper", alignment="reference"), 9, 1024, 8, 44100 / 512, 768)
    state = model.state_dict()
    assert sum(v.numel() for v in state.values()) == 694_554_696
    manifest = json.loads((FIXTURES / "vaura_official.json").read_text())["params"]
    released = {k[len("sampler."):]: shape for k, (shape, _) in manifest.items() if k.startswith("sampler.")}
    assert {k: list(v.shape) for k, v in state.items()} == released


def test_paper_size_default_timestamp_mode_within_tolerance():
    with torch.device("meta"):
        model = VAURA(named_size("paper"), 9, 1024, 8, 44100 / 512, 768)
    n = sum(v.numel() for v in model.state_dict().values())
    assert abs(n - 694_554_696) / 694_554_696 < 1e-3


@pytest.mark.parametrize("conditioning,alignment", VARIANTS)
def test_changing_a_future_token_never_changes_earlier_logits(conditioning, alignment):
    model = tiny_model(conditioning, alignment)
    codes = torch.randint(0, 16, (2, 3, 30))
    visual = torch.randn(2, 8, 12)
    q0, t0 = 1, 12
    changed = codes.clone()
    changed[:, q0, t0] = (changed[:, q0, t0] + 5) % 16
    a, b = model(codes, visual), model(changed, visual)
    step_changed = t0 + 1 + q0  # first decoder step that reads the changed token
    for q in range(3):
        for t in range(30):
            same = torch.equal(a[:, q, t], b[:, q, t])
            if t + q < step_changed:
                assert same, (q, t)
    assert not torch.allclose(a[:, :, 20], b[:, :, 20])  # later steps do see it


@pytest.mark.parametrize("conditioning,alignment", VARIANTS)
def test_kv_cache_logits_equal_full_recompute(conditioning, alignment):
    model = tiny_model(conditioning, alignment)
    codes = torch.randint(0, 16, (2, 3, 37))
    visual = torch.randn(2, 10, 12)
    full = model(codes, visual)
    seq = build_delayed(codes, model.special_token)[:, :, :-1]
    cond = model.condition(visual, torch.zeros(2, dtype=torch.bool))
    steps = model.align(cond, seq.shape[-1]) if model.fusion else None
    prefix = 0 if model.fusion else cond.shape[1]
    # end read from positions (one sync), end given by the caller (sync-free), CUDA-graph-style full-cache attention
    for mode in ("read", "given", "static"):
        cache = model.new_cache(2, prefix + seq.shape[-1], "cpu", torch.float32)
        x = model.embed_steps(seq[..., :3], None if steps is None else steps[:, :3])  # prefill 3 steps
        if prefix:
            x = torch.cat([cond, x], dim=1)
        outs = [model.run(x, torch.arange(x.shape[1]), cache)[:, :, prefix:]]
        for s in range(3, seq.shape[-1]):
            x = model.embed_steps(seq[..., s:s + 1], None if steps is None else steps[:, s:s + 1])
            end = prefix + s + 1 if mode == "given" else None
            outs.append(model.run(x, torch.tensor([prefix + s]), cache, static=mode == "static", end=end))
        kv = revert_logits(torch.cat(outs, dim=2), 37)
        rel = (kv - full).abs().max() / full.abs().max()
        assert rel < 1e-5, (mode, rel)


def test_fusion_input_uses_the_aligned_visual_token():
    model = tiny_model("fusion", "timestamp")
    cond = torch.arange(10, dtype=torch.float32).view(1, 10, 1).expand(1, 10, 8)
    steps = model.align(cond, 42)[0, :, 0]
    # 50 Hz audio / 12.5 Hz video: 4 steps per token, clamped to the last token for the tail steps
    assert steps.tolist() == [min(s // 4, 9) for s in range(42)]


def test_reference_mode_uses_empty_embedding_after_the_last_token():
    model = tiny_model("fusion", "reference")
    cond = torch.randn(1, 3, 8)
    out = model.align(cond, 20)  # ceil(50 / 12.5) = 4 steps per token -> steps 12.. are empty
    assert torch.equal(out[0, 5], cond[0, 1])
    assert torch.equal(out[0, 12], model.empty_video_emb[0, 0])


def test_null_condition_replaces_the_visual_features():
    model = tiny_model()
    visual = torch.randn(2, 6, 12)
    dropped = model.condition(visual, torch.tensor([True, False]))
    null_in = model.cls_embeddings.uncond_embedding[:6].expand(2, 6, 12)
    assert torch.allclose(dropped[0], model.condition(null_in, torch.tensor([False, False]))[0])
    assert torch.allclose(dropped[1], model.condition(visual, torch.tensor([False, False]))[1])


def test_training_mode_drops_condition_at_the_configured_rate():
    model = tiny_model(cfg_dropout=0.3).train()
    visual = torch.randn(4000, 1, 12) + 100.0  # far from the null features
    torch.manual_seed(1)
    out = model.condition(visual)
    null = model.condition(model.cls_embeddings.uncond_embedding[:1].expand(1, 1, 12),
                           torch.tensor([False]))
    rate = torch.isclose(out, null.expand_as(out), atol=1e-5).all(dim=(1, 2)).float().mean().item()
    assert 0.26 < rate < 0.34


def test_bad_inputs_raise_clear_errors():
    model = tiny_model()
    with pytest.raises(ValueError, match="visual features have dim"):
        model(torch.zeros(1, 3, 10, dtype=torch.long), torch.randn(1, 4, 7))
    with pytest.raises(ValueError, match="codebooks"):
        model(torch.zeros(1, 2, 10, dtype=torch.long), torch.randn(1, 4, 12))
    with pytest.raises(ValueError, match="max_seconds"):
        model(torch.zeros(1, 3, 41, dtype=torch.long), torch.randn(1, 4, 12))
    with pytest.raises(ValueError, match="reference"):
        named_size("tiny", conditioning="prepend", alignment="reference")
    # a cached step past the last position fails whether its end is read from the positions or given
    last = model.n_positions
    cache = model.new_cache(1, last + 1, "cpu", torch.float32)
    x = torch.zeros(1, 1, model.cfg.d_model)
    with pytest.raises(ValueError, match=f"position {last} exceeds"):
        model.run(x, torch.tensor([last]), cache)
    with pytest.raises(ValueError, match=f"position {last} exceeds"):
        model.run(x, torch.tensor([last]), cache, end=last + 1)


def test_learned_null_condition_is_trained_and_buffer_is_not():
    learned = tiny_model(null_condition="learned").train()
    fixed = tiny_model(null_condition="buffer").train()
    assert "cls_embeddings.uncond_embedding" in dict(learned.named_parameters())
    assert "cls_embeddings.uncond_embedding" not in dict(fixed.named_parameters())
    assert "cls_embeddings.uncond_embedding" in fixed.state_dict()  # still saved, as in the released model
    codes, visual = torch.randint(0, 16, (2, 3, 20)), torch.randn(2, 5, 12)
    learned.loss(codes, visual, torch.tensor([True, False]))[0].backward()
    assert learned.cls_embeddings.uncond_embedding.grad[:5].abs().sum() > 0


def test_half_precision_model_keeps_fp32_rotary_angles():
    model = tiny_model()
    table = model.rope_on(torch.device("cpu")).clone()
    model.half()
    assert model.rope_on(torch.device("cpu")).dtype == torch.float32
    assert torch.equal(model.rope_on(torch.device("cpu")), table)
