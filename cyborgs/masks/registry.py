"""Registry of mask sources (``cfg.CYBORGS.MASKS.SOURCE``) and :func:`build_mask_source`."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cyborgs.config.registries import MASK_SOURCE_REGISTRY

__all__ = [
    "MASK_SOURCE_REGISTRY",
    "build_mask_source",
    "check_source_image",
    "is_precomputed",
    "mask_source_names",
    "precomputed",
]

MASK_SOURCE_REGISTRY.__doc__ = """
Registry for mask sources, one entry per value of ``cfg.CYBORGS.MASKS.SOURCE``. An entry is a
factory registered under its own name (``@MASK_SOURCE_REGISTRY.register()`` on a function
named like the config value: ``whole``, ``grid``, ``felzenszwalb``, ``selective_search``,
``ground_truth``, ``bootstrap``), called as ``factory(cfg, dataset_name)``. It returns a callable

    source(dataset_dict: dict, image: np.ndarray[H, W, 3] uint8 RGB) -> np.ndarray[H, W] uint8

giving one mask id (0..255) per pixel at the image's resolution. Sources that store masks
(bootstrapped rounds, precomputed heuristics) keep them at a lower resolution and put them on
the image's pixels by the store's rule (``cyborgs.masks.cell_grid``: nearest upsampling, or
each pixel to the nearest cell centre for a round that records its cells' centre); they may
also offer

    source.label_map(dataset_dict, image_hw: (H, W)) -> np.ndarray[h, w] uint8
    source.gridded_label_map(dataset_dict, image_hw) -> (np.ndarray[h, w] uint8, cell centre)

the stored map at its own resolution (and the cell centre of its round, None: nearest), which
put on ``image_hw`` by that rule is exactly what ``source(dataset_dict, image)`` returns. The
two-view mapper then crops each view's mask from it directly instead of building the whole
full-resolution map first (``gridded_label_map`` preferred; sources with neither are called as
above). A source must be picklable (it runs inside data-loader workers). A
source that needs an optional dependency imports it when it computes, never at registration.
A factory whose source computes its masks once per data set into the mask store
(``cyborgs.masks.precompute.cached_mask_source``) is also marked ``@precomputed``, so that what
reads the registry without building the source (the run's plan: disk, rounds kept) knows.
"""


def check_source_image(image, source: str) -> None:
    """The argument check every mask source makes: ``image`` must be an np.ndarray [H, W, ...]."""
    if not isinstance(image, np.ndarray) or image.ndim < 2:
        raise ValueError(
            f"mask source {source!r} expects an image np.ndarray[H, W, 3], got "
            f"{type(image).__name__} with shape {getattr(image, 'shape', None)}"
        )


def precomputed(factory: Callable) -> Callable:
    """Mark a mask-source factory whose masks are computed once per data set into the mask store
    (one stored round); put it under ``@MASK_SOURCE_REGISTRY.register()``."""
    factory.precomputed = True
    return factory


def is_precomputed(name: str) -> bool:
    """Whether the registered source ``name`` stores one precomputed round (:func:`precomputed`)."""
    return bool(getattr(_factory(name), "precomputed", False))


def _factory(name: str) -> Callable:
    names = mask_source_names()
    if name not in names:
        raise KeyError(
            f"CYBORGS.MASKS.SOURCE={name!r} is not a mask source; expected one of {names}"
        )
    return MASK_SOURCE_REGISTRY.get(name)


def mask_source_names() -> list[str]:
    """The values ``CYBORGS.MASKS.SOURCE`` may take: every registered source, sorted."""
    return sorted(name for name, _ in MASK_SOURCE_REGISTRY)


def build_mask_source(cfg, dataset_name: str):
    """Build the mask source named by ``cfg.CYBORGS.MASKS.SOURCE`` for ``dataset_name``.

    Returns the callable ``source(dataset_dict, image) -> uint8 [H, W]`` of the
    ``MASK_SOURCE_REGISTRY`` contract. Raises KeyError naming the registered sources for a
    name that is not one of them.
    """
    return _factory(cfg.CYBORGS.MASKS.SOURCE)(cfg, dataset_name)
