"""Reading released checkpoints (Segment-AVCLIP, Synchformer) without executing their pickled objects.

Both files pickle an OmegaConf config next to the weights (``ckpt["args"]``), so
``torch.load(weights_only=True)`` refuses them. We try ``weights_only=True`` first; if it refuses,
:func:`vaura.safe_pickle.restricted_load` rebuilds tensors and plain containers only and turns every other pickled
global into an inert placeholder, so no code from the file runs and the config classes need not be importable.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Mapping

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


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, or does not match the expected layout (names the file)."""


def read_checkpoint(path: str | Path, what: str, params_key: str = "") -> Mapping[str, Any]:
    """Load a checkpoint file as a mapping; missing files raise with download instructions (``what``) and the
    params key that holds the path."""
    path = Path(path)
    if not path.is_file():
        where = f" (or set params {params_key} to where you saved it)" if params_key else ""
        raise CheckpointError(
            f"checkpoint not found: {path}. Download the {what} and put it at {path}{where}; "
            "weights are never downloaded at run time."
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        try:
            obj, _ = restricted_load(path)
        except UnsafeCheckpointError as exc:
            raise CheckpointError(f"cannot read checkpoint: {exc}") from exc
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint: {exc}") from exc
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    return obj


def select_prefixed(state: Mapping[str, Any], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Keys under the first prefix of ``prefixes`` that occurs in ``state``, with that prefix stripped."""
    for prefix in prefixes:
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if sub:
            return sub
    return {}


def load_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """``load_state_dict`` that names every missing, unexpected or mis-shaped key in one error."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {missing[:20]}{' ...' if len(missing) > 20 else ''}")
        if unexpected:
            parts.append(
                f"unexpected keys ({len(unexpected)}): {unexpected[:20]}{' ...' if len(unexpected) > 20 else ''}"
            )
        if shapes:
            parts.append(f"shape mismatches ({len(shapes)}): {shapes[:10]}")
        raise CheckpointError(f"{source}: checkpoint does not match the model; " + "; ".join(parts))
    module.load_state_dict(dict(state), strict=True)
