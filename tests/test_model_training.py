"""Training smoke tests: both conditionings learn, the loss masks padding, embeddings initialise from a codec."""
import warnings
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vaura.model import VAURA, named_size


def visual_task(n: int, seed: int):
    """Codes that copy a per-token class shown in the visual features (50 Hz audio, 12.5 Hz video)."""
    g = torch.Generator().manual_seed(seed)
    classes = torch.randint(0, 6, (n, 8), generator=g)
    visual = F.one_hot(classes, 12).float()
    codes = classes.repeat_interleave(4, dim=1)[:, None, :].repeat(1, 2, 1)  # [n, K=2, 32 frames]
    codes[:, 1] = (codes[:, 1] + 3) % 16
    return codes, visual


@pytest.mark.parametrize("conditioning", ["fusion", "prepend"])
def test_both_conditionings_train_with_falling_loss(conditioning):
    torch.manual_seed(0)
    cfg = named_size("tiny", conditioning=conditioning, max_seconds=0.64, cfg_dropout=0.1)
    model = VAURA(cfg, n_codebooks=2, codebook_size=16, codebook_dim=4, audio_frame_rate=50.0, visual_dim=12)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    codes, visual = visual_task(16, seed=1)
    model.train()
    losses = []
    for _ in range(60):
        loss, per_cb = model.loss(codes, visual)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        assert per_cb.shape == (2,) and not per_cb.requires_grad
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
    # it learned to use the video: held-out clips score better with their features than with the null one
    model.eval()
    test_codes, test_visual = visual_task(16, seed=2)
    with torch.no_grad():
        cond = model.loss(test_codes, test_visual, torch.zeros(16, dtype=torch.bool))[0]
        null = model.loss(test_codes, test_visual, torch.ones(16, dtype=torch.bool))[0]
    assert cond < null


def test_loss_ignores_padded_frames():
    torch.manual_seed(0)
    model = VAURA(named_size("tiny", max_seconds=0.64), 2, 16, 4, 50.0, 12).eval()
    for head in model.lm_heads:
        nn.init.normal_(head.weight, std=0.5)
    codes, visual = visual_task(3, seed=0)
    padded = codes.clone()
    padded[:, :, 25:] = -1
    loss, per_cb = model.loss(padded, visual)
    logits = model(padded, visual)
    manual = [F.cross_entropy(logits[:, q, :25].reshape(-1, 16), codes[:, q, :25].reshape(-1)) for q in range(2)]
    assert torch.allclose(per_cb, torch.stack(manual), atol=1e-6)
    assert torch.isclose(loss, torch.stack(manual).mean(), atol=1e-6)


class FakeQuantizer(nn.Module):
    def __init__(self, card: int, dim: int, latent: int, parametrized: bool):
        super().__init__()
        self.codebook = nn.Embedding(card, dim)
        conv = nn.Conv1d(dim, latent, 1)
        wn = nn.utils.parametrizations.weight_norm if parametrized else nn.utils.weight_norm
        self.out_proj = wn(conv)


class FakeCodec:
    """Follows vaura.codec.Codec's embedding-init interface."""

    def __init__(self, latent: int):
        torch.manual_seed(3)
        self.q = [FakeQuantizer(16, 4, latent, parametrized=i == 1) for i in range(2)]

    def codebooks(self):
        return [q.codebook.weight.detach().clone() for q in self.q]

    def out_projections(self):
        return [q.out_proj for q in self.q]


def test_audio_embedding_reproduces_codec_quantizer_output():
    model = VAURA(named_size("tiny", max_seconds=0.64), 2, 16, 4, 50.0, 12)  # audio width 32 - 8 = 24
    codec = FakeCodec(latent=24)
    assert model.init_audio_embeddings(codec) == 2
    codes = torch.randint(0, 16, (5,))
    for q, quant in enumerate(codec.q):
        want = quant.out_proj(quant.codebook(codes)[:, :, None])[:, :, 0]  # the codec's own z_q path
        assert torch.allclose(model.tok_embeddings[q](codes), want, atol=1e-5)


def test_width_mismatch_copies_codebooks_without_a_warning():
    """A model narrower than the codec's latent is a normal configuration: no warning the user cannot act on."""
    model = VAURA(named_size("tiny", max_seconds=0.64), 2, 16, 4, 50.0, 12)
    codec = FakeCodec(latent=40)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert model.init_audio_embeddings(codec) == 0
    assert torch.equal(model.tok_embeddings[0].emb.weight[:16], codec.codebooks()[0])
