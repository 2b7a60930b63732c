"""Loading user weight files without executing code from them.

Weight files are untrusted input (SPEC §7): a ``.pkl`` may name any callable and ``torch.load``
with ``weights_only=False`` runs arbitrary pickles. Here ``.pkl`` files go through an unpickler
that only admits numpy arrays and plain containers, and ``.pth`` files through
``torch.load(weights_only=True)``. :class:`SafeDetectionCheckpointer` plugs both into detectron2.
"""

from __future__ import annotations

import io
import os
import pickle
from typing import Any

import torch
from detectron2.checkpoint import DetectionCheckpointer

# (module, name) pairs a weight pickle legitimately needs: numpy arrays (numpy 1 and 2 module
# paths), numpy scalars, dtypes, and OrderedDict. Anything else is refused.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),  # protocol-5 arrays
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
}


class _WeightsUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        # latin1: detectron/Caffe2 model-zoo pickles were written by Python 2.
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"{self._source}: refusing to load '{module}.{name}'; a weight .pkl may only hold "
            "numpy arrays and plain containers"
        )


def load_weights_pickle(path: str) -> Any:
    """Unpickle ``path`` allowing only numpy arrays and plain containers."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weight file not found: {path}")
    with open(path, "rb") as f:
        return _WeightsUnpickler(f, path).load()


def load_torch_checkpoint(path: str) -> Any:
    """``torch.load`` restricted to tensors and plain containers (``weights_only=True``)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise pickle.UnpicklingError(
            f"{path}: not loadable with weights_only=True (it holds more than tensors and plain "
            f"containers); refusing to unpickle arbitrary objects from a weight file. {e}"
        ) from e


class SafeDetectionCheckpointer(DetectionCheckpointer):
    """:class:`DetectionCheckpointer` whose file loading never runs code from the file."""

    def _load_file(self, filename: str) -> dict[str, Any]:
        if filename.endswith(".pkl"):
            data = load_weights_pickle(filename)
            if not isinstance(data, dict):
                raise ValueError(f"{filename}: expected a dict in the .pkl, got {type(data)}")
            if "model" in data and "__author__" in data:
                return data
            # Caffe2 / Detectron1 layout, handled as detectron2 does.
            if "blobs" in data:
                data = data["blobs"]
            data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
            return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
        loaded = load_torch_checkpoint(filename)
        if not isinstance(loaded, dict):
            raise ValueError(f"{filename}: expected a dict checkpoint, got {type(loaded)}")
        if "model" not in loaded:
            loaded = {"model": loaded}
        return loaded
