"""Safe, atomic checkpoints for CYBORGS pretraining (SPEC §7).

torch >= 2.6 loads with ``weights_only=True`` by default and fvcore's ``Checkpointer`` calls
``torch.load`` without saying so. Rather than falling back to unpickling arbitrary objects (user
weight files are untrusted input), every checkpoint we write is *plain*: tensors, numbers,
strings, ``None``, and lists/tuples/dicts of those. :func:`check_plain` enforces it when saving
(naming the offending key), and :class:`SafeCheckpointer` always loads with
``weights_only=True``; ``.pkl`` files (detectron2 model-zoo format, and our converted backbones)
go through a restricted unpickler that admits only numpy arrays/dtypes and plain containers.

A file that needs anything else is refused with :class:`UnsafeCheckpointError`, naming the file
and the type. Writes go to a temp file in the same directory, are fsync'ed and then renamed
(``os.replace``), so a crash never leaves a truncated ``model_*.pth`` or ``last_checkpoint``.
"""

from __future__ import annotations

import collections
import os
import pickle
import re
from typing import Any

import torch
from detectron2.checkpoint import DetectionCheckpointer

from cyborgs.utils.atomic import atomic_write, atomic_write_bytes

__all__ = [
    "RunInfo",
    "SafeCheckpointer",
    "UnsafeCheckpointError",
    "check_plain",
    "safe_load",
    "safe_load_pickle",
]

_PLAIN_LEAVES = (bool, int, float, str, bytes, type(None), torch.dtype, torch.device)
_PLAIN_MAPS = (dict, collections.OrderedDict)


class UnsafeCheckpointError(ValueError):
    """A checkpoint holds (or would hold) something other than tensors and plain containers."""


def check_plain(obj: Any, where: str = "checkpoint") -> None:
    """Raise :class:`UnsafeCheckpointError` naming the key path of the first non-plain value.

    Exact type checks on purpose: ``numpy.float64`` is a ``float`` subclass yet pickles as a
    numpy global that ``weights_only`` refuses, so it must be converted (``.item()``) first.
    """
    if isinstance(obj, torch.Tensor):
        return
    t = type(obj)
    if t in _PLAIN_LEAVES or t is torch.Size:
        return
    if t in _PLAIN_MAPS:
        for k, v in obj.items():
            if type(k) not in (str, int):
                raise UnsafeCheckpointError(
                    f"{where}: key {k!r} has type {t.__module__}.{type(k).__qualname__}; "
                    "checkpoint keys must be str or int"
                )
            check_plain(v, f"{where}/{k}")
        return
    if t in (list, tuple):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")
        return
    raise UnsafeCheckpointError(
        f"{where} holds a {t.__module__}.{t.__qualname__}; checkpoints may only hold tensors, "
        "numbers, strings, None and lists/tuples/dicts of them (convert it in the state_dict "
        "that produced it, e.g. numpy -> torch.from_numpy / .item())"
    )


_UNSUPPORTED = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)")


def safe_load(path: str) -> Any:
    """``torch.load(path, weights_only=True)`` with a clear error naming file and type."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        m = _UNSUPPORTED.search(str(e))
        what = m.group(1) if m else "a non-tensor object"
        raise UnsafeCheckpointError(
            f"Refusing to load {path}: it contains {what}, which is not a tensor or a plain "
            "container. CYBORGS checkpoints are plain and load with torch.load(weights_only="
            "True); unpickling arbitrary objects from a weight file can run arbitrary code. "
            "If you trust the file, convert it yourself to a dict of tensors."
        ) from e


class _RestrictedUnpickler(pickle.Unpickler):
    # numpy arrays pickle through these globals; nothing else may be constructed.
    _ALLOWED = {
        ("collections", "OrderedDict"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),  # protocol-5 arrays
        ("numpy._core.numeric", "_frombuffer"),
    }

    def __init__(self, f: Any, path: str) -> None:
        super().__init__(f, encoding="latin1")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED or module == "numpy.dtypes":
            return super().find_class(module, name)
        raise UnsafeCheckpointError(
            f"Refusing to load {self._path}: it contains {module}.{name}; a .pkl weight file "
            "may only hold numpy arrays and plain containers (detectron2 model-zoo format)."
        )


def safe_load_pickle(path: str) -> Any:
    """Load a detectron2-style ``.pkl`` admitting only numpy arrays and plain containers."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weight file not found: {path}")
    with open(path, "rb") as f:
        return _RestrictedUnpickler(f, path).load()


class RunInfo:
    """Checkpointable carrying the config and command-line args as plain strings."""

    def __init__(self, config: str, args: str = "") -> None:
        self.config = config
        self.args = args
        self.loaded: dict[str, str] = {}

    def state_dict(self) -> dict[str, str]:
        return {"config": self.config, "args": self.args, "torch": str(torch.__version__)}

    def load_state_dict(self, state: dict[str, str]) -> None:
        # Kept for inspection only: the config of the resumed run comes from the command line.
        self.loaded = dict(state)


class SafeCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with plain-only, atomic saves and weights-only loads."""

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data: dict[str, Any] = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        check_plain(data, where=f"checkpoint {name!r}")
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write_bytes(path, last_filename_basename.encode())

    def _load_file(self, filename: str) -> dict[str, Any]:
        if filename.endswith(".pkl"):
            data = safe_load_pickle(filename)
            if not isinstance(data, dict):
                raise UnsafeCheckpointError(f"{filename}: expected a dict, got {type(data)}")
            if "model" in data and "__author__" in data:
                self.logger.info(f"Reading a file from '{data['__author__']}'")
                return data
            if "blobs" in data:  # Caffe2 detection models
                data = data["blobs"]
            data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
            return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
        loaded = safe_load(filename)
        if not isinstance(loaded, dict):
            raise UnsafeCheckpointError(f"{filename}: expected a dict, got {type(loaded)}")
        if filename.endswith(".pyth"):  # pycls
            if "model_state" not in loaded:
                raise ValueError(f"{filename}: pycls checkpoints must contain 'model_state'")
            state = {
                k: v
                for k, v in loaded["model_state"].items()
                if not k.endswith("num_batches_tracked")
            }
            return {"model": state, "__author__": "pycls", "matching_heuristics": True}
        if "model" not in loaded:
            loaded = {"model": loaded}
        return loaded
