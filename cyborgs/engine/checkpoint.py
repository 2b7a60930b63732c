"""Safe, atomic checkpoints for CYBORGS pretraining and transfer (METHOD.md §7).

Every checkpoint we write is *plain*: tensors, numbers, strings, ``None``, and lists/tuples/dicts
of those. :func:`check_plain` enforces it when saving (naming the offending key). Every weight
file is read through :mod:`cyborgs.engine.weights_io` (torch ``weights_only=True`` for ``.pth``,
an exact allow-list unpickler for ``.pkl``), so loading never executes code; a refused file
raises :class:`UnsafeCheckpointError` naming the file and the offending global.

:class:`SafeCheckpointer` is the one checkpointer of the suite (pretraining, transfer, the
offline mask tools). Beyond detectron2's ``DetectionCheckpointer`` it

* writes atomically (temp file in the same directory, fsync, ``os.replace``), so a crash never
  leaves a truncated ``model_*.pth`` or ``last_checkpoint``;
* accepts ``last_checkpoint`` only when it names a ``.pth`` file inside its directory;
* on resume, falls back from a truncated / corrupt / missing latest checkpoint to the newest
  complete one, with a warning naming both.

:class:`PeriodicCheckpointer` (the hook) removes temp files left by a crashed write when
training starts and makes ``max_to_keep`` count the checkpoints written before a restart too.
"""

from __future__ import annotations

import collections
import logging
import os
import re
from collections.abc import Callable, Collection
from typing import Any

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import hooks

from cyborgs.utils.atomic import atomic_write, atomic_write_bytes, remove_stale_temp_files

from .weights_io import (
    CheckpointFormatError,
    NotACheckpointError,
    UnsafeCheckpointError,
    checkpoint_format,
    load_weights,
    safe_load,
    safe_load_pickle,
)

__all__ = [
    "CheckpointFormatError",
    "NotACheckpointError",
    "PeriodicCheckpointer",
    "RunInfo",
    "SafeCheckpointer",
    "UnsafeCheckpointError",
    "check_plain",
    "read_checkpoint",
    "safe_load",
    "safe_load_pickle",
]

logger = logging.getLogger(__name__)

_PLAIN_LEAVES = (bool, int, float, str, bytes, type(None), torch.dtype, torch.device)
_PLAIN_MAPS = (dict, collections.OrderedDict)


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


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a plain checkpoint (its size on disk, give or take the index)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


# Periodic checkpoints are model_0000039.pth, the end of a run model_final.pth.
_CHECKPOINT_NAME = re.compile(r"^model_(\d+|final)\.pth$")


def _held_iteration(data: dict[str, Any]) -> int:
    """The iteration a loaded checkpoint holds: the hooks' ``iteration``, else the trainer's;
    -1 (the trainer then starts at 0) if neither is an int."""
    it = data.get("iteration")
    if type(it) is not int and isinstance(data.get("trainer"), dict):
        it = data["trainer"].get("iteration")
    return it if type(it) is int else -1


class SafeCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with plain-only atomic saves and code-free loads.

    All loading goes through :meth:`_load_file` (the method fvcore's ``load`` calls), so every
    caller -- ``load``, ``resume_or_load``, the transfer backbone check -- is covered.
    """

    def load(self, path: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """detectron2's ``load``, callable again after a failed one (the resume fallback).

        detectron2 after v0.6 sets ``_parsed_url_during_load`` before loading, clears it only
        after a successful load and asserts it is unset on entry, so a second ``load`` after a
        corrupt file would fail with ``AssertionError``; v0.6 has no such field.
        """
        try:
            return super().load(path, *args, **kwargs)
        finally:
            if getattr(self, "_parsed_url_during_load", None) is not None:
                self._parsed_url_during_load = None

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
        atomic_write(save_file, lambda f: torch.save(data, f), size_hint=_tensor_bytes(data))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write_bytes(path, last_filename_basename.encode())

    def get_checkpoint_file(self) -> str:
        """The file ``last_checkpoint`` names; it must be a ``.pth`` basename in ``save_dir``.

        A planted ``last_checkpoint`` must not point the loader at a file elsewhere (absolute
        paths, ``..``) or at a ``.pkl``: ours only ever names ``model_*.pth`` beside it.
        """
        save_file = os.path.join(self.save_dir, "last_checkpoint")
        try:
            with open(save_file, encoding="utf-8", errors="replace") as f:
                name = f.read().strip()
        except OSError:
            return ""  # deleted meanwhile: fvcore's contract
        if not name:
            return ""  # emptied (e.g. by a file-system crash): resume falls back
        if (
            not name.endswith(".pth")
            or os.path.basename(name) != name
            or "\\" in name
            or name.startswith(".")
        ):
            raise UnsafeCheckpointError(
                f"{save_file} names {name[:200]!r}; it must name a .pth checkpoint file in "
                f"{self.save_dir} (a file name, no directories)"
            )
        return os.path.join(self.save_dir, name)

    def complete_checkpoints(self, skip: Collection[str] = ()) -> list[str]:
        """``model_*.pth`` files in ``save_dir`` (except ``skip``), newest first by the
        iteration they hold.

        A periodic checkpoint holds the iteration its name says: the hooks (detectron2's and
        ours) save ``model_{iteration:07d}`` with that iteration. ``model_final`` holds the last
        iteration of the run that wrote it, which a run extended afterwards (more epochs) has
        passed, so its iteration is read from the file (one extra read, on this fallback path
        only). A ``model_final`` that cannot be read is left out with a warning; one refused as
        unsafe raises (:meth:`resume_or_load` never skips those). Ties go to ``model_final``,
        written after the periodic checkpoint of the same iteration.
        """
        if not self.save_dir or not os.path.isdir(self.save_dir):
            return []
        ranked: list[tuple[int, bool, str]] = []
        for name in os.listdir(self.save_dir):
            m = _CHECKPOINT_NAME.match(name)
            path = os.path.join(self.save_dir, name)
            if not m or path in skip:
                continue
            if m.group(1) != "final":
                ranked.append((int(m.group(1)), False, path))
                continue
            try:
                ranked.append((_held_iteration(self._load_file(path)), True, path))
            except (NotACheckpointError, FileNotFoundError) as e:
                logger.warning(f"Cannot resume from {path} either: {e}")
        return [path for *_, path in sorted(ranked, reverse=True)]

    def resume_or_load(self, path: str, *, resume: bool = True) -> dict[str, Any]:
        """detectron2's contract, plus: a latest checkpoint that is truncated, corrupt or gone
        is skipped for the newest one that loads, with a warning naming both files.

        A file *refused* as unsafe is never skipped: that stops the run. Nothing is changed on
        disk; the next periodic save rewrites ``last_checkpoint``.
        """
        if not (resume and self.has_checkpoint()):
            return self.load(path, checkpointables=[])
        latest = self.get_checkpoint_file() or os.path.join(self.save_dir, "last_checkpoint")
        try:
            return self._load_existing(latest)
        except (NotACheckpointError, FileNotFoundError) as e:
            problem = e
        for older in self.complete_checkpoints(skip=[latest]):
            try:
                ret = self._load_existing(older)
            except (NotACheckpointError, FileNotFoundError) as e:
                logger.warning(f"Cannot resume from {older} either: {e}")
                continue
            logger.warning(
                f"Resumed from {older} instead of the latest checkpoint {latest}, which cannot "
                f"be loaded ({problem}). Training repeats the iterations in between."
            )
            return ret
        raise NotACheckpointError(
            f"Cannot resume from {self.save_dir}: the latest checkpoint {latest} cannot be "
            f"loaded ({problem}) and no other model_*.pth there loads either. Start without "
            "--resume (or with another OUTPUT_DIR) to train from the beginning."
        ) from problem

    def _load_existing(self, path: str) -> dict[str, Any]:
        if os.path.basename(path) == "last_checkpoint":
            raise FileNotFoundError(f"{path} names no checkpoint (it is empty)")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        return self.load(path)

    def _load_file(self, filename: str) -> dict[str, Any]:
        # detectron2's hook for reading a file: ours never executes code (read_checkpoint).
        return read_checkpoint(filename, self.logger)


def read_checkpoint(filename: str, log: logging.Logger | None = None) -> dict[str, Any]:
    """Read a weight file as :class:`SafeCheckpointer` loads it, without executing code.

    The format comes from the contents. Pickles get detectron2's model-zoo interpretation
    (``matching_heuristics``; Caffe2 ``blobs``), torch files the native one -- as detectron2
    does by file extension.

    Returns:
        dict with the weights under "model" (name -> tensor / array), plus "__author__" and
        "matching_heuristics" for model-zoo pickles and whatever else a torch checkpoint holds.
    """
    log = log or logger
    fmt = checkpoint_format(filename)
    data = load_weights(filename)
    if not isinstance(data, dict):
        raise NotACheckpointError(
            f"{filename} is not a checkpoint: it holds a {type(data).__name__}, not a dict"
        )
    if fmt == "pkl":
        if "model" in data and "__author__" in data:
            log.info(f"Reading a file from '{data['__author__']}'")
            return data
        if "blobs" in data:  # Caffe2 detection models
            data = data["blobs"]
        data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
        return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
    if filename.endswith(".pyth"):  # pycls
        if "model_state" not in data:
            raise ValueError(f"{filename}: pycls checkpoints must contain 'model_state'")
        state = {
            k: v for k, v in data["model_state"].items() if not k.endswith("num_batches_tracked")
        }
        return {"model": state, "__author__": "pycls", "matching_heuristics": True}
    if "model" not in data:
        data = {"model": data}
    return data


def _iteration_of(path: str) -> int:
    return int(re.search(r"_(\d+)\.pth$", path).group(1))  # type: ignore[union-attr]


class PeriodicCheckpointer(hooks.PeriodicCheckpointer):
    """detectron2's periodic checkpoint hook, tidy across crashes and restarts.

    ``before_train`` removes temp files a crashed atomic write left in the checkpoint directory
    and, with ``max_to_keep``, adopts the periodic checkpoints already there (oldest first), so
    the limit counts them too. Pruning happens only after a new checkpoint is written, and a
    rewritten name (a resumed run passing an old iteration again) counts once.
    """

    def before_train(self) -> None:
        super().before_train()
        save_dir = self.checkpointer.save_dir
        if not save_dir or not os.path.isdir(save_dir):
            return
        # Only temp files of this hook's own outputs: OUTPUT_DIR may hold other files.
        prefix = re.escape(self.file_prefix)
        ours = re.compile(rf"{prefix}_(\d+|final)\.pth|last_checkpoint")
        removed = remove_stale_temp_files(save_dir, targets=ours)
        if removed:
            logger.info(
                f"Removed {len(removed)} temp file(s) left by an interrupted write: {removed}"
            )
        if self.max_to_keep is not None:
            existing = [
                os.path.join(save_dir, n)
                for n in os.listdir(save_dir)
                if re.fullmatch(rf"{re.escape(self.file_prefix)}_\d+\.pth", n)
            ]
            self.recent_checkpoints = sorted(existing, key=_iteration_of)

    def __init__(
        self,
        checkpointer: Any,
        period: int,
        max_iter: int | None = None,
        max_to_keep: int | None = None,
        file_prefix: str = "model",
        also_at: Callable[[int], bool] | None = None,
    ) -> None:
        """detectron2's arguments, plus ``also_at(iteration)``: True after steps that must be
        checkpointed whatever the period (the last step of an epoch a bootstrap round
        follows, so that a failing round cannot lose the epoch's training)."""
        super().__init__(checkpointer, period, max_iter, max_to_keep, file_prefix)
        self.also_at = also_at

    def step(self, iteration: int, **kwargs: Any) -> None:
        iteration = int(iteration)
        state = {"iteration": iteration, **kwargs}
        extra = self.also_at is not None and self.also_at(iteration)
        if (iteration + 1) % self.period == 0 or extra:
            self.checkpointer.save(f"{self.file_prefix}_{iteration:07d}", **state)
            if self.max_to_keep is not None:
                path = self.checkpointer.get_checkpoint_file()
                self.recent_checkpoints = [p for p in self.recent_checkpoints if p != path]
                self.recent_checkpoints.append(path)
                while len(self.recent_checkpoints) > self.max_to_keep:
                    old = self.recent_checkpoints.pop(0)
                    if os.path.exists(old) and not old.endswith(f"{self.file_prefix}_final.pth"):
                        os.remove(old)
        if self.max_iter is not None and iteration >= self.max_iter - 1:
            self.checkpointer.save(f"{self.file_prefix}_final", **state)
