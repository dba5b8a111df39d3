"""Import the released V-AURA experiment (``24-08-01T08-34-26``): a PyTorch Lightning ``.ckpt``.

The file cannot be opened with ``torch.load(weights_only=True)``: its ``hyper_parameters`` hold pickled
OmegaConf configs and a ``torch.optim.AdamW`` object. :func:`read_lightning_checkpoint` reads it with
:func:`vaura.safe_pickle.restricted_load`, which rebuilds tensors and plain containers only and records every
other pickled global as an inert placeholder (nothing in the file can execute code).

Accounting of the 757 ``state_dict`` tensors (all are used; an unknown key is an error):

* ``sampler.*`` (218) → :class:`vaura.model.VAURA` with ``conditioning=fusion, alignment=reference``; the key
  mapping is the prefix strip (vaura's parameter names are the reference's).
* ``visual_feature_extractor.*`` (238) → ``vaura.visual.load_segment_avclip`` (Segment-AVCLIP Motionformer).
* ``audio_encoder.model.*`` (301, fp16, ``weight_g``/``weight_v``) → ``vaura.codec.load_dac_state_dict``
  (44.1 kHz DAC, 9 codebooks used).

This module only maps keys (outside ``vaura/model`` it uses only the restricted unpickler and
:mod:`vaura.weights`); building the codec and visual encoder from the other two groups is
:mod:`vaura.generate.official`'s job.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vaura.model.config import named_size
from vaura.model.decoder import VAURA
from vaura.safe_pickle import Placeholder, UnsafeCheckpointError, restricted_load
from vaura.weights import WeightsError, load_strict

PREFIXES = {
    "sampler": "sampler.",
    "visual": "visual_feature_extractor.",
    "codec": "audio_encoder.model.",
}
EXPECTED_COUNTS = {"sampler": 218, "visual": 238, "codec": 301}
OFFICIAL_EXPERIMENT = "24-08-01T08-34-26"
DOWNLOAD_HINT = (f"download the released V-AURA experiment {OFFICIAL_EXPERIMENT}.tar.gz (see the V-AURA README, "
                 f"github.com/ilpoviertola/V-AURA), extract it and pass the folder or its checkpoints/*.ckpt, "
                 f"e.g. weights/{OFFICIAL_EXPERIMENT}/")
PAPER_N_HEAD = 16  # not recoverable from tensor shapes (head dim 96 = 1536 / 16)
DAC_FRAME_RATE = 44100 / 512
AVCLIP_FRAME_RATE = 12.5


def read_lightning_checkpoint(path: str | Path) -> tuple[Any, set[str]]:
    """Unpickle the released ``.ckpt`` with the project's restricted reader; returns ``(object, placeholder names)``."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint not found: {path}; {DOWNLOAD_HINT}")
    try:
        return restricted_load(path)
    except UnsafeCheckpointError as exc:
        raise WeightsError(str(exc)) from exc


def to_plain(obj: Any, depth: int = 0) -> Any:
    """Plain-Python view of unpickled hyper-parameters: recorded OmegaConf containers/nodes become dicts, lists
    and values (their ``_content`` / ``_val`` state); other placeholders stay placeholders. Never calls them."""
    if depth > 64:
        return None
    if isinstance(obj, Placeholder):
        state = obj.state if isinstance(obj.state, dict) else {}
        if "_content" in state:
            return to_plain(state["_content"], depth + 1)
        if "_val" in state:
            return to_plain(state["_val"], depth + 1)
        if obj.set_items:
            return {k: to_plain(v, depth + 1) for k, v in obj.set_items.items()}
        if obj.appended:
            return [to_plain(v, depth + 1) for v in obj.appended]
        return obj
    if isinstance(obj, dict):
        return {k: to_plain(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v, depth + 1) for v in obj]
    return obj


@dataclass
class OfficialCheckpoint:
    """The released checkpoint split by owner; prefixes stripped."""

    sampler: dict[str, torch.Tensor]
    visual: dict[str, torch.Tensor]
    codec: dict[str, torch.Tensor]
    placeholders: set[str] = field(default_factory=set)
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    hparams: dict[str, Any] = field(default_factory=dict)

    @property
    def sampler_params(self) -> dict[str, Any]:
        """``hyper_parameters.sampler_config.params`` (num_layers, d_model, nhead, ...) when readable."""
        params = (self.hparams.get("sampler_config") or {}).get("params") if isinstance(self.hparams, dict) else None
        return params if isinstance(params, dict) else {}


def split_state_dict(state: dict[str, Any], source: str = "state_dict") -> dict[str, dict[str, torch.Tensor]]:
    """Assign every tensor to its owner by prefix; any key outside the three prefixes is an error."""
    groups: dict[str, dict[str, torch.Tensor]] = {g: {} for g in PREFIXES}
    unknown = []
    for key, value in state.items():
        owner = next((g for g, p in PREFIXES.items() if key.startswith(p)), None)
        if owner is None or not isinstance(value, torch.Tensor):
            unknown.append(key)
            continue
        groups[owner][key[len(PREFIXES[owner]):]] = value
    if unknown:
        raise WeightsError(f"{source}: {len(unknown)} tensor(s) outside {list(PREFIXES.values())}: "
                                      f"{unknown[:8]}")
    return groups


def find_checkpoint(path: str | Path) -> Path:
    """The ``.ckpt`` inside an experiment folder (``checkpoints/*.ckpt``), or ``path`` itself."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("checkpoints/*.ckpt")) or sorted(path.glob("*.ckpt"))
        if not found:
            raise WeightsError(f"{path}: no checkpoints/*.ckpt in this folder; {DOWNLOAD_HINT}")
        return found[-1]
    return path


def load_official_checkpoint(path: str | Path, check_counts: bool = True) -> OfficialCheckpoint:
    """Read the released ``.ckpt`` (or its experiment folder) and split its ``state_dict`` by owner.

    ``check_counts`` demands the released tensor counts (218 / 238 / 301); tests with shrunk models turn it off.
    """
    ckpt_path = find_checkpoint(path)
    obj, placeholders = read_lightning_checkpoint(ckpt_path)
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        raise WeightsError(f"{ckpt_path}: no 'state_dict' mapping at the top level "
                                      f"(keys: {sorted(obj) if isinstance(obj, dict) else type(obj).__name__})")
    groups = split_state_dict(obj["state_dict"], str(ckpt_path))
    if check_counts:
        wrong = {g: len(groups[g]) for g in groups if len(groups[g]) != EXPECTED_COUNTS[g]}
        if wrong:
            raise WeightsError(f"{ckpt_path}: tensor counts {wrong} differ from the released "
                                          f"{EXPECTED_COUNTS}")
    meta = {k: obj[k] for k in ("epoch", "global_step", "pytorch-lightning_version") if k in obj}
    hparams = to_plain(obj.get("hyper_parameters"))
    return OfficialCheckpoint(groups["sampler"], groups["visual"], groups["codec"], placeholders, meta,
                              str(ckpt_path), hparams if isinstance(hparams, dict) else {})


def decoder_from_state(state: dict[str, torch.Tensor], n_head: int = PAPER_N_HEAD,
                       audio_frame_rate: float = DAC_FRAME_RATE, max_seconds: float = 2.56) -> VAURA:
    """Build the reference-mode :class:`VAURA` the sampler tensors describe and load them strictly (fp32)."""
    try:
        n_layer = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("layers."))
        d_model = state["norm.weight"].shape[0]
        n_codebooks = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("lm_heads."))
        codebook_size = state["lm_heads.0.weight"].shape[0]
        codebook_dim = state["tok_embeddings.0.emb.weight"].shape[1]
        cond_channels, visual_dim = state["cls_embeddings.projection.fc1.weight"].shape
        ffn_hidden = state["layers.0.feed_forward.w1.weight"].shape[0]
    except (KeyError, ValueError) as exc:
        raise WeightsError(f"sampler tensors do not have the released layout (missing {exc})") from exc
    cfg = named_size("paper", n_layer=n_layer, d_model=d_model, n_head=n_head, cond_channels=cond_channels,
                     conditioning="fusion", alignment="reference", null_condition="buffer",
                     max_seconds=max_seconds, ffn_multiple_of=_multiple_for(d_model, ffn_hidden))
    model = VAURA(cfg, n_codebooks, codebook_size, codebook_dim, audio_frame_rate, visual_dim, AVCLIP_FRAME_RATE)
    return load_strict(model, {k: v.float() for k, v in state.items()}, "sampler tensors").eval()


def _multiple_for(d_model: int, ffn_hidden: int) -> int:
    """An ``ffn_multiple_of`` that reproduces ``ffn_hidden`` under the Llama rule (256 for the paper)."""
    base = int(2 * 4 * d_model / 3)
    for m in (256, 128, 64, 32, 16, 8, 4, 2, 1):
        if (base if base % m == 0 else base + m - base % m) == ffn_hidden:
            return m
    raise WeightsError(f"FFN width {ffn_hidden} does not follow the Llama rule for d_model {d_model}")


def official_decoder(ckpt: OfficialCheckpoint) -> VAURA:
    """The checkpoint's decoder; head count from its hyper-parameters (``nhead``), else the paper's 16.

    Sizes visible in the hyper-parameters must agree with the tensors' shapes.
    """
    params = ckpt.sampler_params
    model = decoder_from_state(ckpt.sampler, n_head=int(params.get("nhead", PAPER_N_HEAD)))
    seen = {"num_layers": model.cfg.n_layer, "d_model": model.cfg.d_model, "num_codebooks": model.n_codebooks}
    wrong = {k: (params[k], v) for k, v in seen.items() if k in params and params[k] != v}
    if wrong:
        raise WeightsError(f"{ckpt.source}: hyper-parameters disagree with tensor shapes "
                                      f"(hparams vs tensors): {wrong}")
    return model


def load_official_vaura(path: str | Path) -> VAURA:
    """The released decoder, ready for generation in the mode it was trained with (fusion, reference)."""
    return official_decoder(load_official_checkpoint(path))
