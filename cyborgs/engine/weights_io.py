"""Loading weight files without running code: the one loader behind every weights entry point.

Weight files are downloaded from strangers, and unpickling can call any importable function.
So nothing here ever unpickles with the standard ``find_class``:

* torch files (``.pth``: the zip format and the legacy pre-1.6 format) load with
  ``torch.load(weights_only=True)``, torch's own allow-list of tensors and plain containers;
* pickles (``.pkl``: detectron2 / Caffe2 model-zoo files, MoCo-style converted backbones, our
  :func:`~cyborgs.transfer.convert.write_detectron2_pkl` output) go through
  :class:`_RestrictedUnpickler`, which resolves only an explicit allow-list of *exact*
  ``(module, name)`` pairs -- what numpy 1.x and 2.x arrays, dtypes and scalars, and
  ``collections.OrderedDict`` actually emit, at pickle protocols 0-5. No module is trusted as
  a whole and no dotted name is resolved (protocol 4 lets a pickle name ``a.b.c`` attribute
  paths, which is how a trusted module leads to ``builtins.eval``).

The format is decided by the file's first bytes, not its name. What is refused:

* a global outside the allow-list: :class:`UnsafeCheckpointError`, naming the file and global;
* an empty, text, random or truncated file: :class:`NotACheckpointError`, naming the file;
* a valid file of the other kind where a tool needs one kind (a ``.pth`` handed to a tool that
  reads converted ``.pkl`` backbones, or the reverse): :class:`CheckpointFormatError`.
"""

from __future__ import annotations

import _compat_pickle
import collections
import importlib
import io
import os
import pickle
import pickletools
import re
import zipfile
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch

__all__ = [
    "CheckpointFormatError",
    "NotACheckpointError",
    "UnsafeCheckpointError",
    "checkpoint_format",
    "load_weights",
    "safe_load",
    "safe_load_pickle",
]

Format = Literal["pth", "pkl"]


class UnsafeCheckpointError(ValueError):
    """A weight file holds (or a checkpoint would hold) something other than plain data."""


class NotACheckpointError(ValueError):
    """The file is not a (complete) checkpoint: empty, text, random bytes, truncated."""


class CheckpointFormatError(ValueError):
    """A valid weight file of the wrong kind for the tool (``.pth`` where ``.pkl`` is needed)."""


# torch.save's legacy (non-zip) format starts with a pickle of this number.
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
# Opcodes a protocol 0/1 pickle of a dict / list / tuple / global starts with.
_OLD_PICKLE_STARTS = b"(}])c"
_DESCRIBE: dict[str, str] = {
    "pth": "a torch checkpoint (.pth)",
    "pkl": "a pickle (.pkl, detectron2 model-zoo format)",
}


def checkpoint_format(path: str) -> Format:
    """``"pth"`` for torch files (zip or legacy format), ``"pkl"`` for plain pickles.

    Decided from the first bytes. Raises ``FileNotFoundError`` for a missing file and
    :class:`NotACheckpointError` for anything that is neither (empty, text, image, ...).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weight file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "pth"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pth" if _starts_with_torch_magic(head) else "pkl"
    if head[:1] and head[:1] in _OLD_PICKLE_STARTS:
        return "pkl"
    raise NotACheckpointError(
        f"{path} is not a checkpoint: it is neither a torch file (.pth) nor a pickle (.pkl); "
        f"it starts with {head[:16]!r}" + (" (empty file)" if not head else "")
    )


def _starts_with_torch_magic(head: bytes) -> bool:
    try:
        for op, arg, _ in pickletools.genops(io.BytesIO(head)):
            if op.name in ("PROTO", "FRAME"):
                continue
            return op.name == "LONG1" and arg == _TORCH_LEGACY_MAGIC
    except Exception:  # noqa: BLE001 -- a garbled head is simply not the torch magic
        return False
    return False


def load_weights(path: str, expect: Format | None = None, purpose: str = "") -> Any:
    """Load a ``.pth`` or ``.pkl`` weight file without executing code.

    ``expect`` ("pth" / "pkl") demands one kind and raises :class:`CheckpointFormatError`
    otherwise; ``purpose`` names the reader in that message (e.g. "voc07_svm --weights").
    Returns the unpickled object (torch files: tensors and plain containers; pickles: numpy
    arrays and plain containers).
    """
    fmt = checkpoint_format(path)
    if expect is not None and fmt != expect:
        raise CheckpointFormatError(
            f"{purpose or 'this reader'} expects a .{expect} ({_EXPECT_HINT[expect]}), but {path} "
            f"is {_DESCRIBE[fmt]}. {_CONVERT_HINT[expect]}"
        )
    return _load_torch(path) if fmt == "pth" else _load_pickle(path)


_EXPECT_HINT = {
    "pth": "a torch checkpoint, e.g. the pretraining run's model_final.pth",
    "pkl": "a converted backbone in detectron2 model-zoo format",
}
_CONVERT_HINT = {
    "pth": "Pass the pretraining checkpoint itself, not a converted backbone.",
    "pkl": "Convert the checkpoint first: convert_to_detectron2.py CKPT OUT.pkl.",
}


def safe_load(path: str) -> Any:
    """A torch checkpoint (``.pth``) loaded with ``weights_only=True``; see :func:`load_weights`."""
    return load_weights(path, expect="pth")


def safe_load_pickle(path: str) -> Any:
    """A detectron2-style ``.pkl`` through the restricted unpickler; see :func:`load_weights`."""
    return load_weights(path, expect="pkl")


# ---- torch files ----
_UNSUPPORTED = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)")


def _load_torch(path: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        m = _UNSUPPORTED.search(msg)
        if m or "Weights only load failed" in msg or "WeightsUnpickler error" in msg:
            # torch does not always say which global (any STACK_GLOBAL is "Unsupported operand
            # 147"; __builtin__.eval becomes "eval"): read the names the file itself spells
            # from its pickle opcodes, without executing them.
            refused = _first_refused_global(path) or (m.group(1) if m else None)
            what = f"the global {refused}" if refused else "a pickle instruction torch refuses"
            raise UnsafeCheckpointError(
                f"Refusing to load {path}: it contains {what}, which is not a tensor or a plain "
                "container. Weight files load with torch.load(weights_only=True); unpickling "
                "arbitrary objects from a weight file can run arbitrary code. If you trust the "
                "file, convert it yourself to a dict of tensors."
            ) from e
        raise _not_complete(path, e) from e
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise _not_complete(path, e) from e


_STRING_OPS = {
    "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
    "BINUNICODE8",
}  # fmt: skip


def _pickle_globals(stream: Any) -> list[str]:
    """``module.name`` of every global one pickle names, read from its opcodes (not run).

    STACK_GLOBAL takes its two names from the stack: tracked through string pushes and the
    memo, which is how picklers emit them."""
    names: list[str] = []
    strings: list[str] = []
    memo: dict[int, str | None] = {}
    last: str | None = None
    for op, arg, _ in pickletools.genops(stream):
        if op.name in ("GLOBAL", "INST"):
            names.append(str(arg).replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            names.append(".".join(strings[-2:]))
        if op.name in _STRING_OPS:
            last = arg if isinstance(arg, str) else arg.decode("latin1")
            strings.append(last)
            continue
        if op.name == "MEMOIZE":
            memo[len(memo)] = last
        elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[int(arg)] = last
        elif op.name in ("GET", "BINGET", "LONG_BINGET") and memo.get(int(arg)) is not None:
            strings.append(memo[int(arg)])  # type: ignore[arg-type]
            last = memo[int(arg)]
            continue
        last = None
    return names


def _first_refused_global(path: str) -> str | None:
    """The first global of a torch file that torch's weights-only allow-list lacks."""
    try:
        from torch import _weights_only_unpickler as wou

        allowed = set(wou._get_allowed_globals())
    except (ImportError, AttributeError):  # private API: without it, name the first global
        allowed = set()
    allowed |= {
        f"{getattr(g, '__module__', '')}.{getattr(g, '__qualname__', '')}"
        for g in torch.serialization.get_safe_globals()
        if not isinstance(g, tuple)
    }
    found: list[str] = []
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                for member in z.namelist():
                    if member.endswith("data.pkl"):
                        found += _pickle_globals(io.BytesIO(z.read(member)))
        else:  # legacy: magic, protocol, sys info, the object, storage keys, raw storages
            with open(path, "rb") as f:
                for _ in range(5):
                    found += _pickle_globals(f)
    except Exception:  # noqa: BLE001 -- raw storage bytes or garbage end the scan
        pass
    for name in found:
        module, _, attr = name.rpartition(".")
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)  # Python 2 spellings
        if f"{module}.{attr}" not in allowed and not module.startswith("torch"):
            return name
    return None


def _not_complete(path: str, e: BaseException) -> NotACheckpointError:
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return NotACheckpointError(
        f"{path} is not a complete checkpoint (truncated or corrupt): {reason}"
    )


# ---- pickles ----
def _numpy_core(submodule: str, name: str) -> Callable[[], Any]:
    """numpy 2 moved ``numpy.core`` to ``numpy._core``; pickles of either load on either."""

    def resolve() -> Any:
        for package in ("numpy._core", "numpy.core"):
            try:
                return getattr(importlib.import_module(f"{package}.{submodule}"), name)
            except (ImportError, AttributeError):
                continue
        raise ImportError(f"numpy has no {submodule}.{name}")

    return resolve


def _refuse_objects(what: str, dtype: Any) -> None:
    """Arrays, scalars and dtypes holding Python objects are refused wherever they appear: an
    object array built from raw bytes holds pointers the file chose."""
    if isinstance(dtype, np.dtype) and dtype.hasobject:
        raise UnsafeCheckpointError(f"{what} with dtype {dtype} holds Python objects")


def _safe_dtype(*args: Any) -> np.dtype:
    dtype = np.dtype(*args)
    _refuse_objects("np.dtype", dtype)
    return dtype


class _NdarrayClass:
    """What ``numpy.ndarray`` resolves to: only ``_reconstruct``'s first argument accepts it.
    Called directly, ``ndarray(shape, dtype, buffer)`` would build an array of any dtype
    (object included) over the file's bytes."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise UnsafeCheckpointError("numpy.ndarray called directly (only _reconstruct may use it)")


_NDARRAY = _NdarrayClass()


def _safe_numpy(name: str, resolve: Callable[[], Any]) -> Callable[[], Any]:
    """``_reconstruct``, ``scalar`` and ``_frombuffer`` with their dtype checked first."""

    def wrap() -> Callable[..., Any]:
        fn = resolve()

        def reconstruct(subtype: Any, shape: Any, dtype: Any) -> Any:
            if subtype is not _NDARRAY:
                raise UnsafeCheckpointError(f"_reconstruct of {subtype!r:.60}, not numpy.ndarray")
            _refuse_objects("_reconstruct", np.dtype(dtype))
            return fn(np.ndarray, shape, dtype)

        def scalar(dtype: Any, *args: Any) -> Any:
            if not isinstance(dtype, np.dtype):
                raise UnsafeCheckpointError(f"scalar of {type(dtype).__name__}, not a dtype")
            _refuse_objects("scalar", dtype)
            return fn(dtype, *args)

        def frombuffer(buf: Any, dtype: Any, *args: Any) -> Any:
            _refuse_objects("_frombuffer", np.dtype(dtype))
            return fn(buf, dtype, *args)

        return {"_reconstruct": reconstruct, "scalar": scalar, "_frombuffer": frombuffer}[name]

    return wrap


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # protocols 0-2 write ``bytes`` as _codecs.encode(str, "latin1")
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise UnsafeCheckpointError(f"_codecs.encode called with {encoding!r}, {errors!r}")
    return text.encode("latin1")


def _empty_bytes(*args: Any) -> bytes:
    # protocols 0-2 write b"" as __builtin__.bytes(); an int argument would allocate that size
    if args:
        raise UnsafeCheckpointError(f"bytes called with arguments {args!r:.80}")
    return b""


_ALLOWED: dict[tuple[str, str], Callable[[], Any]] = {
    ("collections", "OrderedDict"): lambda: collections.OrderedDict,
    ("numpy", "ndarray"): lambda: _NDARRAY,
    ("numpy", "dtype"): lambda: _safe_dtype,
    **{
        (f"numpy.{core}.{sub}", name): _safe_numpy(name, _numpy_core(sub, name))
        for core in ("core", "_core")
        for sub, name in (
            ("multiarray", "_reconstruct"),
            ("multiarray", "scalar"),
            ("numeric", "_frombuffer"),  # protocol 5
        )
    },
    ("_codecs", "encode"): lambda: _latin1_encode,
    ("__builtin__", "bytes"): lambda: _empty_bytes,  # Python 2 name, protocols 0-2
    ("builtins", "bytes"): lambda: _empty_bytes,
}


class _RestrictedUnpickler(pickle._Unpickler):
    """Resolves exactly the :data:`_ALLOWED` pairs, never through ``pickle``'s own lookup.

    The pure-Python unpickler, so that BUILD (``__setstate__``) can be checked too: a dtype's
    state can set the flags that make it hold objects, and an array's state carries a dtype.
    Weight files hold few opcodes and large byte strings, so the speed cost is small."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, f: Any, path: str) -> None:
        super().__init__(f, encoding="latin1")
        self._path = path

    def load_build(self) -> None:
        super().load_build()
        obj = self.stack[-1]
        if isinstance(obj, np.ndarray | np.generic | np.dtype):
            _refuse_objects(f"a {type(obj).__name__}", getattr(obj, "dtype", obj))

    dispatch[pickle.BUILD[0]] = load_build

    def find_class(self, module: str, name: str) -> Any:
        resolve = _ALLOWED.get((module, name))
        if resolve is None:
            raise UnsafeCheckpointError(
                f"Refusing to load {self._path}: it contains {module}.{name}, a global that is "
                "not on the allow-list; a .pkl weight file may only hold numpy arrays and plain "
                "containers (detectron2 model-zoo format), and unpickling anything else can run "
                "arbitrary code."
            )
        return resolve()

    def persistent_load(self, pid: Any) -> Any:
        raise NotACheckpointError(
            f"{self._path}: a pickle with persistent ids (e.g. torch's data.pkl) is not a .pkl "
            "weight file"
        )


def _check_no_objects(obj: Any) -> None:
    """Defence in depth: no array, scalar or dtype in the loaded tree holds Python objects."""
    todo = [obj]
    while todo:
        x = todo.pop()
        if isinstance(x, dict):
            todo += list(x.keys()) + list(x.values())
        elif isinstance(x, list | tuple):
            todo += list(x)
        elif isinstance(x, np.ndarray | np.generic | np.dtype):
            _refuse_objects(f"a loaded {type(x).__name__}", getattr(x, "dtype", x))


def _load_pickle(path: str) -> Any:
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, path).load()
        _check_no_objects(obj)
        return obj
    except UnsafeCheckpointError as e:
        if str(e).startswith("Refusing to load"):
            raise
        raise UnsafeCheckpointError(f"Refusing to load {path}: {e}") from e
    except (NotACheckpointError, FileNotFoundError):
        raise
    except Exception as e:  # noqa: BLE001 -- any other failure means a broken or foreign file
        raise NotACheckpointError(
            f"{path} is not a checkpoint (or is truncated/corrupt): unpickling failed with "
            f"{type(e).__name__}: {e}"
        ) from e
