"""Reading pickled torch checkpoints without running anything they pickle.

Released checkpoints (the V-AURA Lightning ``.ckpt``, Segment-AVCLIP and Synchformer ``.pt``) pickle OmegaConf
configs, optimizer objects and Lightning classes next to their tensors, so ``torch.load(weights_only=True)``
refuses them. :func:`restricted_load` reads the torch zip container itself with :class:`RestrictedUnpickler`,
whose ``find_class`` resolves only

* vaura's own tensor rebuild functions (a flat storage viewed with size/stride/offset),
* the legacy storage type names (``torch.FloatStorage`` … — only used to learn a dtype),
* ``collections.OrderedDict``, ``torch.Size``, dtypes, a few inert builtins (``set``, ``frozenset``, ``complex``)
  and a latin-1-only ``_codecs.encode`` (how protocol-2 pickles spell bytes).

Every other global (``omegaconf.*``, ``torch.optim.adamw.AdamW``, Lightning classes, ``os.system`` …) becomes an
inert :class:`Placeholder` that records its name, arguments and state and never calls anything, so nothing in
the file can execute code. Storages are read straight from the zip records. This is the project's one
pickle-reading path: every other file is loaded with ``weights_only=True``.
"""
from __future__ import annotations

import collections
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


class UnsafeCheckpointError(ValueError):
    """The file is not a torch zip checkpoint, or its pickle asks for something the reader will not build."""


class Placeholder:
    """Inert stand-in for a class/function named in the pickle. Records, never executes."""

    origin = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "Placeholder":
        # pickle's NEWOBJ calls __new__ without __init__, so the record starts here
        obj = super().__new__(cls)
        obj.args, obj.kwargs, obj.state = args, kwargs, None
        obj.set_items, obj.appended = {}, []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.set_items[key] = value

    def append(self, value: Any) -> None:
        self.appended.append(value)

    def extend(self, values: Any) -> None:
        self.appended.extend(values)

    def __repr__(self) -> str:
        return f"<placeholder {self.origin}>"


_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


@dataclass(frozen=True)
class _StorageType:
    dtype: torch.dtype


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple, stride: tuple) -> torch.Tensor:
    if not isinstance(storage, torch.Tensor):
        raise UnsafeCheckpointError(f"tensor rebuilt from a non-storage object {storage!r}")
    return storage.as_strided(tuple(size), tuple(stride), int(offset))


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    return _rebuild_tensor(storage, offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, hooks=None, state=None):
    return data


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    if encoding not in ("latin1", "latin-1"):
        raise UnsafeCheckpointError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


_ALLOWED: dict[str, Any] = {
    "collections.OrderedDict": collections.OrderedDict,
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch.Size": torch.Size,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "builtins.complex": complex,
    "_codecs.encode": _latin1_bytes,
    **{f"torch.{name}": dt for name in ("float16", "float32", "float64", "bfloat16", "int64", "int32", "int16",
                                         "int8", "uint8", "bool") for dt in [getattr(torch, name)]},
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for a torch zip checkpoint that can only rebuild tensors and plain containers."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, source: str):
        super().__init__(file)
        self.archive, self.prefix, self.source = archive, prefix, source
        self.placeholders: set[str] = set()
        self._storages: dict[str, torch.Tensor] = {}
        self._placeholder_classes: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        full = f"{module}.{name}"
        if full in _ALLOWED:
            return _ALLOWED[full]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        self.placeholders.add(full)
        if full not in self._placeholder_classes:
            self._placeholder_classes[full] = type(f"Placeholder[{full}]", (Placeholder,), {"origin": full})
        return self._placeholder_classes[full]

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] in ("storage", b"storage")):
            raise UnsafeCheckpointError(f"{self.source}: unsupported persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise UnsafeCheckpointError(f"{self.source}: unsupported storage type {storage_type!r}")
        key = key.decode() if isinstance(key, bytes) else str(key)
        if not re.fullmatch(r"\w+", key):
            raise UnsafeCheckpointError(f"{self.source}: bad storage key {key!r}")
        if key not in self._storages:
            try:
                raw = self.archive.read(f"{self.prefix}data/{key}")
            except KeyError:
                raise UnsafeCheckpointError(f"{self.source}: storage record data/{key} is missing") from None
            flat = torch.frombuffer(bytearray(raw), dtype=storage_type.dtype) if raw else \
                torch.empty(0, dtype=storage_type.dtype)
            if flat.numel() != int(numel):
                raise UnsafeCheckpointError(f"{self.source}: storage {key} has {flat.numel()} elements, "
                                            f"expected {numel}")
            self._storages[key] = flat
        return self._storages[key]


def restricted_load(path: str | Path) -> tuple[Any, set[str]]:
    """Unpickle a torch zip checkpoint safely; returns ``(object, names replaced by placeholders)``."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise UnsafeCheckpointError(f"{path}: not a torch zip checkpoint (the torch.save format since torch 1.6; "
                                    "re-save a legacy file with a current torch)")
    with zipfile.ZipFile(path) as archive:
        pkl = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise UnsafeCheckpointError(f"{path}: expected one <archive>/data.pkl record, found {pkl}")
        prefix = pkl[0][: -len("data.pkl")]
        if prefix + "byteorder" in archive.namelist() and archive.read(prefix + "byteorder") != b"little":
            raise UnsafeCheckpointError(f"{path}: big-endian checkpoints are not supported")
        with archive.open(pkl[0]) as fh:
            unpickler = RestrictedUnpickler(fh, archive, prefix, str(path))
            try:
                obj = unpickler.load()
            except UnsafeCheckpointError:
                raise
            except Exception as exc:  # noqa: BLE001 - any malformed pickle is reported with the file name
                raise UnsafeCheckpointError(f"{path}: cannot unpickle ({type(exc).__name__}: {exc})") from exc
    return obj, unpickler.placeholders
