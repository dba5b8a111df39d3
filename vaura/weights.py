"""Pretrained weights: one way to read a released file, one strict loader, one error.

Every pretrained network of the project (DAC codec, Segment-AVCLIP, Synchformer, ImageBind, VGGish, PaSST, the
released V-AURA decoder and the offline stand-ins) is loaded through this module, so "the file is missing, cannot
be read, or does not fit the network" is always a :class:`WeightsError` whose message names the file and, when it
is missing, what to download and where to put it. Weights are never downloaded at run time.

Some released files pickle configs next to the weights (Segment-AVCLIP, Synchformer: an OmegaConf ``args``), so
``torch.load(weights_only=True)`` refuses them. :func:`read_checkpoint` tries ``weights_only=True`` first; if it
refuses, :func:`vaura.safe_pickle.restricted_load` rebuilds tensors and plain containers only and turns every other
pickled global into an inert placeholder, so no code from the file runs.
"""
from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import torch

from vaura.safe_pickle import UnsafeCheckpointError, restricted_load

SEGMENT_AVCLIP_URL_HINT = (
    "Segment-AVCLIP VGGSound checkpoint '23-12-22T16-10-50/checkpoints/epoch_best.pt' from the Synchformer "
    "project (github.com/v-iashin/Synchformer, README 'Segment AVCLIP' table, VGGSound row)"
)
SYNCHFORMER_URL_HINT = (
    "Synchformer AudioSet checkpoint '24-01-04T16-39-21/24-01-04T16-39-21.pt' from the Synchformer project "
    "(github.com/v-iashin/Synchformer, README 'Synchformer' table, AudioSet row)"
)

Module = TypeVar("Module", bound=torch.nn.Module)


class WeightsError(RuntimeError):
    """Pretrained weights that are missing, unreadable, or do not match the network (the message names the file)."""


def read_checkpoint(path: str | Path, what: str, params_key: str = "", own_file: bool = False) -> Mapping[str, Any]:
    """Load a weights file as a mapping; a missing file raises with download instructions (``what``) and the
    params key that holds the path.

    ``own_file``: a file vaura writes itself (the stand-ins) holds only tensors and plain types, so anything
    ``weights_only`` refuses means it was tampered with or is not ours: it is refused, not read around.
    """
    path = Path(path)
    if not path.is_file():
        where = f" (or set params {params_key} to where you saved it)" if params_key else ""
        raise WeightsError(
            f"checkpoint not found: {path}. Download the {what} and put it at {path}{where}; "
            "weights are never downloaded at run time."
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if own_file:
            raise WeightsError(f"{path}: holds pickled Python objects besides tensors and plain values, which vaura's "
                               f"own files never do; refused (nothing in it was run): {str(exc).splitlines()[0]}") from exc
        try:
            obj, _ = restricted_load(path)
        except UnsafeCheckpointError as exc:
            raise WeightsError(f"{path}: cannot read checkpoint: {exc}") from exc
    except Exception as exc:  # torch raises several types for corrupt files
        raise WeightsError(f"{path}: cannot read checkpoint: {exc}") from exc
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    return obj


def select_prefixed(state: Mapping[str, Any], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Keys under the first prefix of ``prefixes`` that occurs in ``state``, with that prefix stripped."""
    for prefix in prefixes:
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if sub:
            return sub
    return {}


def inner_tensors(obj: Mapping[str, Any], inner: str = "") -> dict[str, torch.Tensor]:
    """The tensors of ``obj[inner]`` when that is a mapping (a released checkpoint's state dict), else of ``obj``."""
    nested = obj.get(inner) if inner else None
    state = nested if isinstance(nested, Mapping) else obj
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def mismatch(expected: Mapping[str, torch.Tensor], state: Mapping[str, Any]) -> str:
    """Every missing, unexpected or mis-shaped key of ``state`` against ``expected``, in one line ("" = fits)."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    parts = []
    if missing:
        parts.append(f"missing keys ({len(missing)}): {missing[:20]}{' ...' if len(missing) > 20 else ''}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {unexpected[:20]}{' ...' if len(unexpected) > 20 else ''}")
    if shapes:
        parts.append(f"shape mismatches ({len(shapes)}): {shapes[:10]}")
    return "; ".join(parts)


def load_strict(module: Module, state: Mapping[str, torch.Tensor], source: str) -> Module:
    """``load_state_dict`` that names every missing, unexpected or mis-shaped key in one error."""
    problems = mismatch(module.state_dict(), state)
    if problems:
        raise WeightsError(f"{source}: checkpoint does not match the model; {problems}")
    module.load_state_dict(dict(state), strict=True)
    return module


def load_released(
    build: Callable[[], Module], path_or_state: str | Path | Mapping[str, Any], what: str, params_key: str = "",
    inner: str = "",
) -> Module:
    """Read a released weights file (or take its already-read mapping), pick the state dict under ``inner`` when
    present, keep its tensors and load them strictly into ``build()`` (built only once the file has been read, so
    a missing file never allocates a large network)."""
    source = str(path_or_state) if isinstance(path_or_state, (str, Path)) else "state dict"
    obj = read_checkpoint(path_or_state, what, params_key) if isinstance(path_or_state, (str, Path)) else path_or_state
    state = inner_tensors(obj, inner)
    if not state:
        raise WeightsError(f"{source}: no tensors{f' under {inner!r}' if inner else ''}; first keys: {sorted(obj)[:5]}")
    return load_strict(build(), state, source)


def weights_sha256(*state_dicts: Mapping[str, torch.Tensor]) -> str:
    """Digest of every tensor's name, dtype and bytes (sorted by name), over one or more state dicts: DDP replicas
    compare their final weights with it, and the cache fingerprints its encoders with it."""
    h = hashlib.sha256()
    for state in state_dicts:
        for name, t in sorted(state.items()):
            h.update(name.encode())
            h.update(str(t.dtype).encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
