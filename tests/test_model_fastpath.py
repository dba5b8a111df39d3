"""The fast paths give the results of the plain ones (CPU, fp32): loss, sampling draw, static-cache decode.

The GPU speed of these paths is measured by ``benchmarks/gpu_suite.py``; here only their equality with the
reference formulations, which is what lets the fast path be the default.
"""
import pytest
import torch
import torch.nn.functional as F

from test_model_sampling import gen, tiny_model
from vaura.model.sampler import draw, generate, generate_recompute, sample_logits, use_compiled_decode
from vaura.model.decoder import codebook_loss


def boolean_mask_loss(logits, codes):
    """The reference formulation: per codebook, gather the valid frames with a boolean mask."""
    valid = codes >= 0
    per = torch.stack([F.cross_entropy(logits[:, q][valid[:, q]].float(), codes[:, q][valid[:, q]])
                       for q in range(codes.shape[1])])
    return per.mean(), per


def test_codebook_loss_equals_the_boolean_mask_formulation_with_its_gradient():
    torch.manual_seed(0)
    codes = torch.randint(0, 32, (3, 4, 20))
    codes[0, :, 15:] = -1  # a clip padded past its end
    codes[2, 3, :7] = -5   # any negative code is padding
    logits_a = torch.randn(3, 4, 20, 32, requires_grad=True)
    logits_b = logits_a.detach().clone().requires_grad_(True)
    loss, per = codebook_loss(logits_a, codes)
    ref, ref_per = boolean_mask_loss(logits_b, codes)
    torch.testing.assert_close(per, ref_per.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(logits_a.grad, logits_b.grad, rtol=1e-5, atol=1e-8)
    assert logits_a.grad[0, :, 15:].abs().max() == 0  # padding gets no gradient
    assert not per.requires_grad


def test_model_loss_uses_the_unmasked_formulation():
    model = tiny_model().train()
    codes = torch.randint(0, 16, (2, 3, 30))
    codes[1, :, 22:] = -1
    visual = torch.randn(2, 10, 12)
    drop = torch.tensor([False, True])
    torch.manual_seed(1)
    loss, per = model.loss(codes, visual, drop)
    torch.manual_seed(1)  # same dropout masks
    ref, ref_per = boolean_mask_loss(model(codes, visual, drop), codes)
    torch.testing.assert_close(per, ref_per.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)


def test_a_codebook_without_valid_frames_gives_a_non_finite_loss():
    codes = torch.randint(0, 8, (2, 2, 5))
    codes[:, 1] = -1
    loss, per = codebook_loss(torch.randn(2, 2, 5, 8), codes)
    assert torch.isfinite(per[0]) and not torch.isfinite(per[1]) and not torch.isfinite(loss)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_draw_is_torch_multinomial_without_its_host_check(seed):
    logits = torch.randn(64, 1024) * 3
    logits[:, 500:] = float("-inf")  # zero-probability tokens (top-k / top-p filtered) are never drawn
    probs = logits.softmax(-1)
    ours = draw(probs, gen(seed))
    plain = torch.multinomial(probs, 1, generator=gen(seed))[:, 0]
    assert torch.equal(ours, plain)
    assert ours.max() < 500


def test_sample_logits_equals_the_plain_top_k_multinomial_path():
    logits = torch.randn(4, 9, 1024)
    flat = logits.reshape(-1, 1024) / 0.7
    kth = flat.topk(128, dim=-1).values[:, -1:]
    plain = torch.multinomial(flat.masked_fill(flat < kth, float("-inf")).softmax(-1), 1,
                              generator=gen(5)).reshape(4, 9)
    assert torch.equal(sample_logits(logits, 0.7, 128, 0.0, gen(5)), plain)


@pytest.mark.parametrize("conditioning", ["fusion", "prepend"])
def test_static_cache_decode_equals_the_dynamic_one(conditioning):
    model = tiny_model(conditioning)
    visual = torch.randn(2, 10, 12)
    for kwargs in (dict(temperature=0.0), dict(top_k=8), dict(cfg_scale=None)):
        dynamic = generate(model, visual, 35, generator=gen(9), **kwargs)
        static = generate(model, visual, 35, static=True, generator=gen(9), **kwargs)
        assert torch.equal(static, dynamic), kwargs
    prompt = torch.randint(0, 16, (2, 3, 11))
    assert torch.equal(generate(model, visual, 35, prompt=prompt, static=True, generator=gen(1)),
                       generate(model, visual, 35, prompt=prompt, generator=gen(1)))


def test_reused_static_cache_never_reads_the_previous_call():
    model = tiny_model()
    first, second = torch.randn(2, 10, 12), torch.randn(2, 10, 12)
    generate(model, first, 35, static=True, generator=gen(0))  # fills the pooled cache
    assert torch.equal(generate(model, second, 35, static=True, generator=gen(3)),
                       generate(model, second, 35, generator=gen(3)))
    assert len(model._static_decoders) == 1  # same shape: the cache was reused, not reallocated


@pytest.mark.parametrize("conditioning", ["fusion", "prepend"])
def test_greedy_decode_is_the_same_on_every_path_in_fp32(conditioning):
    model = tiny_model(conditioning, seed=3)
    visual = torch.randn(3, 10, 12)
    reference = generate_recompute(model, visual, 30, cfg_scale=6.0, temperature=0.0)
    assert torch.equal(generate(model, visual, 30, cfg_scale=6.0, temperature=0.0), reference)
    assert torch.equal(generate(model, visual, 30, cfg_scale=6.0, temperature=0.0, static=True), reference)
    # and sampling with the same seed: the recompute baseline draws exactly what the cached decode draws
    assert torch.equal(generate_recompute(model, visual, 30, 6.0, top_k=8, generator=gen(7)),
                       generate(model, visual, 30, cfg_scale=6.0, top_k=8, generator=gen(7)))


def test_compiled_decode_resolution_and_its_single_fallback_message(capsys, monkeypatch):
    import vaura.model.sampler as sampler

    monkeypatch.setattr(sampler, "_fallback_said", set())
    assert not use_compiled_decode("auto", "cpu")
    assert not use_compiled_decode("auto", torch.device("cpu"))
    err = capsys.readouterr().err
    assert err.count("eager decoding") == 1 and "cpu" in err
    assert not use_compiled_decode("eager", "cuda")
    with pytest.raises(ValueError, match="generation.decode=compiled.*cpu"):
        use_compiled_decode("compiled", "cpu")
    with pytest.raises(ValueError, match="choose one of"):
        use_compiled_decode("fast", "cpu")
    monkeypatch.setattr(sampler.importlib.util, "find_spec", lambda name: None)
    assert not use_compiled_decode("auto", "cuda")
    assert "triton" in capsys.readouterr().err
    monkeypatch.setattr(sampler.importlib.util, "find_spec", lambda name: object())
    assert use_compiled_decode("auto", "cuda") and use_compiled_decode("compiled", "cuda")
    assert capsys.readouterr().err == ""
