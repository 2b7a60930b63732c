"""The "bootstrap" mask source (CYBORGS): the label maps of the mask store's current round.

Reads ``store_root(cfg, "bootstrap", dataset_name)``, the directory ``BootstrapHook`` writes.
Before the first round exists (the vMF warm-up, METHOD.md §3-4) it returns whole-image masks (all
zeros): the warm-up trains with the vMF loss alone and needs no masks, so a run starts from raw
images. Rounds switch without restarting data-loader workers: every call stats the store's
pointer file (one ``os.stat``, microseconds) and re-reads it only when its inode, mtime or size
changed (the pointer is replaced atomically, so each new round gives a new inode). Batches that
workers prefetched before the switch still use the previous round.

Once rounds exist, a missing pointer is an error (:class:`MissingRoundError`), not whole-image
masks: ``BootstrapHook`` never deletes it (it points it at no round while it redoes one), so it
was deleted, or the store is not on a file system this process shares with rank 0, and
training on would silently fall back to image-level learning.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from .cell_grid import CellCentre
from .registry import MASK_SOURCE_REGISTRY, check_source_image
from .store import MaskStore, store_root

__all__ = ["BootstrapMaskSource", "MissingRoundError"]


class MissingRoundError(RuntimeError):
    """The store's ``current.json`` is gone although rounds were completed."""


class BootstrapMaskSource:
    def __init__(self, root: str):
        self.store = MaskStore(root)
        self._pointer_stat: Any = ...  # never a stat key: the first call reads the pointer
        self._round: int | None = None

    @classmethod
    def from_config(cls, cfg, dataset_name: str) -> BootstrapMaskSource:
        return cls(store_root(cfg, "bootstrap", dataset_name))

    def current_round(self) -> int | None:
        """The round this source reads now (re-checked cheaply on every call)."""
        try:
            st = os.stat(self.store.pointer_path)
            key: Any = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            key = None
        if key != self._pointer_stat:
            if key is None:
                self._check_no_rounds()
                self._round = None
            else:
                self._round = self.store.current_round()
            self._pointer_stat = key
        return self._round

    def _check_no_rounds(self) -> None:
        """No pointer means "before the first round" only while no round exists (module
        docstring); checked once per pointer change, so it costs nothing per image."""
        seen = [self._round] if self._round is not None else self.store.rounds()
        if seen:
            raise MissingRoundError(
                f"{self.store.pointer_path} is missing although bootstrap round(s) {seen} were "
                f"completed (pid {os.getpid()}): it was deleted, or {self.store.root} is not on a "
                "file system shared by all ranks (CYBORGS.MASKS.STORE_DIR). Refusing to go on "
                "with whole-image masks; resuming from the last checkpoint rewrites the pointer"
            )

    def __call__(self, dataset_dict: dict, image: np.ndarray) -> np.ndarray:
        check_source_image(image, "bootstrap")
        r = self.current_round()
        hw = image.shape[:2]
        if r is None:
            return np.zeros(hw, dtype=np.uint8)
        return self.store.read(dataset_dict["image_id"], out_hw=hw, round_id=r)

    def label_map(self, dataset_dict: dict, image_hw: tuple[int, int]) -> np.ndarray:
        """The current round's map at its stored resolution (a [1, 1] zero map before the first
        round): put on ``image_hw`` by its round's cell centre it is what ``__call__`` returns. The
        two-view mapper crops views from it directly (``augment.crop_resize_label_map``)."""
        return self.gridded_label_map(dataset_dict, image_hw)[0]

    def gridded_label_map(
        self, dataset_dict: dict, image_hw: tuple[int, int]
    ) -> tuple[np.ndarray, CellCentre]:
        """``label_map`` with the cell centre of the round it comes from (read together, so a
        round switch between the two cannot mismatch them; ``cyborgs.masks.cell_grid``)."""
        r = self.current_round()
        if r is None:
            return np.zeros((1, 1), dtype=np.uint8), None
        return self.store.read_placed(dataset_dict["image_id"], round_id=r)


@MASK_SOURCE_REGISTRY.register()
def bootstrap(cfg, dataset_name: str) -> Callable[[dict, np.ndarray], np.ndarray]:
    """``CYBORGS.MASKS.SOURCE: bootstrap``. The current round of the bootstrapped store (before the
    first round: one mask per image); follows the store's ``current`` pointer as rounds finish.
    """
    return BootstrapMaskSource.from_config(cfg, dataset_name)
