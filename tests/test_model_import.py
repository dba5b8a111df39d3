"""Import of the released V-AURA Lightning checkpoint: safety, accounting, and logits equal to the reference.

The reference forward pass is re-stated here naively from the published facts (explicit loops over steps,
explicit 7-steps-per-token repetition, RoPE on consecutive channel pairs as complex numbers, ``[visual | audio]``
concat, delay layout), independently of vaura's modules.
"""
import collections
import json
import math
import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from vaura.model import VAURA, named_size
from vaura.model.official import (
    load_official_checkpoint,
    load_official_vaura,
    official_decoder,
    read_lightning_checkpoint,
    decoder_from_state,
)
from vaura.weights import WeightsError

FIXTURES = Path(__file__).parent / "fixtures"
MANIFEST = json.loads((FIXTURES / "vaura_official.json").read_text())["params"]
DTYPES = {"float32": torch.float32, "float16": torch.float16}


class AttributeDict(dict):
    """Like Lightning's hparams container (a dict subclass pickled by reference)."""


class RunsCommand:
    """Unpickling this would run a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def lightning_checkpoint(path: Path, state: dict, marker: Path, num_layers: int = 2) -> None:
    """Write a checkpoint shaped like PL 2.2's dump_checkpoint, with hostile and non-tensor hparams."""
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([param], lr=1.08e-4, betas=(0.9, 0.95))
    hparams = AttributeDict(
        learning_rate=1.08e-4,
        sampler_config=OmegaConf.create({"target": "models.modules.sampler.llama.Transformer",
                                         "params": {"num_layers": num_layers, "nhead": 2, "d_model": 48}}),
        lr_scheduler={"params": {"optimizer": optimizer, "warmup_steps": 1000}},
        payload=RunsCommand(marker),
    )
    torch.save({
        "epoch": 3, "global_step": 1234, "pytorch-lightning_version": "2.2.1",
        "state_dict": collections.OrderedDict(state),
        "optimizer_states": [optimizer.state_dict()], "lr_schedulers": [{"last_epoch": 5}],
        "hparams_name": "kwargs", "hyper_parameters": hparams,
    }, path)


def test_hostile_checkpoint_loads_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    # the hostile object really is hostile when unpickled normally
    canary = tmp_path / "canary"
    pickle.loads(pickle.dumps(RunsCommand(canary)))
    assert canary.exists()

    state = {"sampler.norm.weight": torch.randn(4), "visual_feature_extractor.cls_token": torch.randn(1, 1, 4),
             "audio_encoder.model.quantizer.quantizers.0.codebook.weight": torch.randn(5, 2).half()}
    ckpt = tmp_path / "last.ckpt"
    lightning_checkpoint(ckpt, state, marker)
    with pytest.raises(Exception):
        torch.load(ckpt, weights_only=True)  # why the restricted unpickler exists

    obj, placeholders = read_lightning_checkpoint(ckpt)
    assert not marker.exists()
    assert obj["global_step"] == 1234
    for key, value in state.items():
        assert obj["state_dict"][key].dtype == value.dtype
        assert torch.equal(obj["state_dict"][key], value)
    assert any("system" in name for name in placeholders)
    assert "torch.optim.adamw.AdamW" in placeholders
    assert any(name.startswith("omegaconf.") for name in placeholders)


def test_all_757_released_tensors_are_accounted_for(tmp_path):
    state = {k: torch.zeros(1, dtype=DTYPES[dtype]) for k, (_, dtype) in MANIFEST.items()}
    assert len(state) == 757
    ckpt_dir = tmp_path / "24-08-01T08-34-26" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    lightning_checkpoint(ckpt_dir / "epoch_best.ckpt", state, tmp_path / "marker")
    loaded = load_official_checkpoint(tmp_path / "24-08-01T08-34-26")  # experiment folder form
    assert (len(loaded.sampler), len(loaded.visual), len(loaded.codec)) == (218, 238, 301)
    assert len(loaded.sampler) + len(loaded.visual) + len(loaded.codec) == 757
    assert loaded.codec["quantizer.quantizers.0.codebook.weight"].dtype == torch.float16
    # every sampler tensor has a home in vaura's reference-mode model under the same name
    with torch.device("meta"):
        model = VAURA(named_size("paper", alignment="reference"), 9, 1024, 8, 44100 / 512, 768)
    assert set(model.state_dict()) == set(loaded.sampler)


def test_unknown_tensor_and_missing_file_are_clear_errors(tmp_path):
    ckpt = tmp_path / "x.ckpt"
    lightning_checkpoint(ckpt, {"sampler.norm.weight": torch.ones(2), "ema.shadow": torch.ones(2)},
                         tmp_path / "m")
    with pytest.raises(WeightsError, match="ema.shadow"):
        load_official_checkpoint(ckpt, check_counts=False)
    with pytest.raises(WeightsError, match="download"):
        load_official_checkpoint(tmp_path / "missing.ckpt")
    legacy = tmp_path / "legacy.ckpt"
    legacy.write_bytes(pickle.dumps({"state_dict": {}}))
    with pytest.raises(WeightsError, match="not a torch zip"):
        load_official_checkpoint(legacy)


# ---- reference forward pass, re-stated naively -------------------------------------------------------------
L, D, H, K, CARD, CDIM, DV, COND, N_VIS = 2, 48, 2, 3, 32, 4, 12, 16, 5
FFN = 128  # find_multiple(int(8 * 48 / 3) = 128, 16)


def tiny_released_state(seed: int = 0) -> dict:
    """Random tensors under the released key names (from the manifest), shrunk to a tiny size."""
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "attention.wqkv.weight": (3 * D, D), "attention.wo.weight": (D, D),
        "feed_forward.w1.weight": (FFN, D), "feed_forward.w3.weight": (FFN, D), "feed_forward.w2.weight": (D, FFN),
        "attention_norm.weight": (D,), "ffn_norm.weight": (D,),
        "emb.weight": (CARD + 1, CDIM), "out_proj.weight_g": (D - COND, 1, 1), "out_proj.weight_v": (D - COND, CDIM, 1),
        "out_proj.bias": (D - COND,), "norm.weight": (D,), "lm_heads": (CARD, D),
        "cls_embeddings.uncond_embedding": (32, DV), "cls_embeddings.projection.fc1.weight": (COND, DV),
        "cls_embeddings.projection.fc2.weight": (COND, COND), "empty_video_emb": (1, 1, COND),
    }
    state = {}
    for key in MANIFEST:
        if not key.startswith("sampler."):
            continue
        name = key[len("sampler."):]
        parts = name.split(".")
        if parts[0] == "layers" and int(parts[1]) >= L or parts[0] in ("lm_heads", "tok_embeddings") and int(parts[1]) >= K:
            continue
        if parts[0] == "layers":
            shape = shapes[".".join(parts[2:])]
        elif parts[0] == "tok_embeddings":
            shape = shapes[".".join(parts[2:])]
        elif parts[0] == "lm_heads":
            shape = shapes["lm_heads"]
        else:
            shape = shapes[name]
        t = torch.randn(shape, generator=g) * 0.3
        if name.endswith("norm.weight"):
            t = 1.0 + t
        state[name] = t
    return state


def naive_reference_logits(sd: dict, codes: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
    b, k, t = codes.shape
    n_steps = t + k - 1
    hd = D // H
    # delay layout: step 0 is all-special; codebook q at step s holds frame s - 1 - q
    seq = torch.full((b, k, n_steps), CARD)
    for s in range(n_steps):
        for q in range(k):
            if 0 <= s - 1 - q < t:
                seq[:, q, s] = codes[:, q, s - 1 - q]
    # audio embedding: codebook vector -> weight-normed 1x1 projection, summed over codebooks
    audio = torch.zeros(b, n_steps, D - COND)
    for q in range(k):
        v = sd[f"tok_embeddings.{q}.out_proj.weight_v"][:, :, 0]
        w = sd[f"tok_embeddings.{q}.out_proj.weight_g"][:, :, 0] * v / v.norm(dim=1, keepdim=True)
        audio += sd[f"tok_embeddings.{q}.emb.weight"][seq[:, q]] @ w.T + sd[f"tok_embeddings.{q}.out_proj.bias"]
    # visual MLP, each token repeated for 7 steps, the rest "empty"
    proj = F.gelu(visual @ sd["cls_embeddings.projection.fc1.weight"].T, approximate="tanh")
    proj = proj @ sd["cls_embeddings.projection.fc2.weight"].T
    vis = torch.zeros(b, n_steps, COND)
    for s in range(n_steps):
        vis[:, s] = proj[:, s // 7] if s // 7 < proj.shape[1] else sd["empty_video_emb"][0, 0]
    x = torch.cat([vis, audio], dim=-1)

    def rms(v, w):
        return v / torch.sqrt((v * v).mean(-1, keepdim=True) + 1e-5) * w

    def rope(v):  # v [b, steps, H, hd]; pairs (2i, 2i+1) as complex numbers
        freqs = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
        angles = torch.outer(torch.arange(v.shape[1]).float(), freqs)
        rot = torch.polar(torch.ones_like(angles), angles)[None, :, None, :]
        return torch.view_as_real(torch.view_as_complex(v.reshape(*v.shape[:-1], -1, 2)) * rot).flatten(-2)

    for i in range(L):
        p = f"layers.{i}."
        hq, hk, hv = (rms(x, sd[p + "attention_norm.weight"]) @ sd[p + "attention.wqkv.weight"].T).split(D, -1)
        hq, hk = rope(hq.view(b, n_steps, H, hd)), rope(hk.view(b, n_steps, H, hd))
        hv = hv.view(b, n_steps, H, hd)
        att = torch.zeros(b, n_steps, H, hd)
        for s in range(n_steps):
            scores = torch.einsum("bhd,bjhd->bhj", hq[:, s], hk[:, : s + 1]) / math.sqrt(hd)
            att[:, s] = torch.einsum("bhj,bjhd->bhd", scores.softmax(-1), hv[:, : s + 1])
        x = x + att.reshape(b, n_steps, D) @ sd[p + "attention.wo.weight"].T
        hn = rms(x, sd[p + "ffn_norm.weight"])
        ff = F.silu(hn @ sd[p + "feed_forward.w1.weight"].T) * (hn @ sd[p + "feed_forward.w3.weight"].T)
        x = x + ff @ sd[p + "feed_forward.w2.weight"].T
    x = rms(x, sd["norm.weight"])
    out = torch.stack([x @ sd[f"lm_heads.{q}.weight"].T for q in range(k)], dim=1)  # [b, k, steps, card]
    # frame t of codebook q is predicted at step t + q
    return torch.stack([out[:, q, q:q + t] for q in range(k)], dim=1)


def test_imported_weights_reproduce_reference_logits(tmp_path):
    sd = tiny_released_state()
    ckpt = tmp_path / "tiny.ckpt"
    state = {f"sampler.{k}": v for k, v in sd.items()}
    state["visual_feature_extractor.cls_token"] = torch.randn(1, 1, 8)
    state["audio_encoder.model.quantizer.quantizers.0.codebook.weight"] = torch.randn(4, 2).half()
    lightning_checkpoint(ckpt, state, tmp_path / "marker")
    loaded = load_official_checkpoint(ckpt, check_counts=False)
    assert loaded.hparams["learning_rate"] == 1.08e-4  # read from the pickled OmegaConf/AttributeDict records
    assert loaded.sampler_params == {"num_layers": 2, "nhead": H, "d_model": D}
    model = official_decoder(loaded)  # head count from the hyper-parameters
    assert model.cfg.n_head == H
    assert model.cfg.alignment == "reference" and model.cfg.conditioning == "fusion"

    torch.manual_seed(0)
    t = 40  # 42 decoder steps: tokens 0..4 cover steps 0..34, steps 35..41 are "empty video"
    codes = torch.randint(0, CARD, (2, K, t))
    visual = torch.randn(2, N_VIS, DV)
    got = model(codes, visual)
    want = naive_reference_logits(sd, codes, visual)
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()


def test_half_split_rope_would_not_match(tmp_path):
    """Guards the test above: a different RoPE pairing gives clearly different logits."""
    sd = tiny_released_state()
    model = decoder_from_state(sd, n_head=H)
    torch.manual_seed(0)
    codes, visual = torch.randint(0, CARD, (1, K, 30)), torch.randn(1, N_VIS, DV)
    ref = naive_reference_logits(sd, codes, visual)
    rope = model.rope_on(torch.device("cpu"))
    hd2 = rope.shape[1]
    rope.copy_(rope[:, torch.cat([torch.arange(0, hd2, 2), torch.arange(1, hd2, 2)])].clone())  # permuted freqs
    assert not torch.allclose(model(codes, visual), ref, atol=1e-3)


def test_load_official_vaura_refuses_a_shrunk_checkpoint(tmp_path):
    ckpt = tmp_path / "tiny.ckpt"
    lightning_checkpoint(ckpt, {f"sampler.{k}": v for k, v in tiny_released_state().items()}, tmp_path / "m")
    with pytest.raises(WeightsError, match="tensor counts"):
        load_official_vaura(ckpt)


def test_hparams_that_contradict_the_tensors_are_refused(tmp_path):
    ckpt = tmp_path / "tiny.ckpt"
    lightning_checkpoint(ckpt, {f"sampler.{k}": v for k, v in tiny_released_state().items()}, tmp_path / "m",
                         num_layers=5)
    with pytest.raises(WeightsError, match="num_layers"):
        official_decoder(load_official_checkpoint(ckpt, check_counts=False))


def test_visual_and_codec_parts_fit_their_owners_modules():
    """The split halves go to vaura.visual / vaura.codec loaders: their modules must have exactly these tensors."""
    import dac

    from vaura.visual import PAPER_SIZE, MotionFormer

    with torch.device("meta"):
        codec, visual = dac.DAC(), MotionFormer(PAPER_SIZE)
    for prefix, module in (("audio_encoder.model.", codec), ("visual_feature_extractor.", visual)):
        released = {k[len(prefix):]: shape for k, (shape, _) in MANIFEST.items() if k.startswith(prefix)}
        assert {k: list(v.shape) for k, v in module.state_dict().items()} == released, prefix
