"""Registry of mask sources (``cfg.CYBORGS.MASKS.SOURCE``)."""

from __future__ import annotations

import importlib

import numpy as np
from detectron2.utils.registry import Registry

MASK_SOURCE_REGISTRY = Registry("MASK_SOURCE")
MASK_SOURCE_REGISTRY.__doc__ = """
Registry for mask sources. A registered object is a class (or factory) called as
``Source.from_config(cfg, dataset_name)`` that returns a callable

    source(dataset_dict: dict, image: np.ndarray[H, W, 3] uint8 RGB) -> np.ndarray[H, W] uint8

giving one mask id (0..255) per pixel at the image's resolution. Sources that store masks
(bootstrapped rounds, precomputed heuristics) keep them at a lower resolution and upsample with
nearest neighbour here. A source must be picklable (it runs inside data-loader workers).
"""


def check_source_image(image, source: str) -> None:
    """The argument check every mask source makes: ``image`` must be an np.ndarray [H, W, ...]."""
    if not isinstance(image, np.ndarray) or image.ndim < 2:
        raise ValueError(
            f"mask source {source!r} expects an image np.ndarray[H, W, 3], got "
            f"{type(image).__name__} with shape {getattr(image, 'shape', None)}"
        )


def register_mask_source(name: str):
    """Class decorator registering a mask source under ``name`` (the config value)."""

    def deco(cls):
        MASK_SOURCE_REGISTRY._do_register(name, cls)
        return cls

    return deco


# Modules that register sources; imported lazily so a missing optional dependency of one
# source (e.g. OpenCV's selective search) does not break the others.
_SOURCE_MODULES = {
    "whole": "cyborgs.masks.whole",
    "grid": "cyborgs.masks.grid",
    "felzenszwalb": "cyborgs.masks.felzenszwalb",
    "selective_search": "cyborgs.masks.selective_search",
    "ground_truth": "cyborgs.masks.ground_truth",
    "bootstrap": "cyborgs.masks.bootstrap",
}


def mask_source_names() -> list[str]:
    """The values ``CYBORGS.MASKS.SOURCE`` may take."""
    return sorted(_SOURCE_MODULES)


def import_mask_sources() -> None:
    """Register every mask source (``import cyborgs`` calls this once). A source whose module
    needs an optional dependency imports it only when used, so this never fails for that."""
    for module in _SOURCE_MODULES.values():
        importlib.import_module(module)


def build_mask_source(cfg, dataset_name: str):
    """Build the source named by ``cfg.CYBORGS.MASKS.SOURCE`` for ``dataset_name``."""
    name = cfg.CYBORGS.MASKS.SOURCE
    if name not in _SOURCE_MODULES:
        raise KeyError(
            f"CYBORGS.MASKS.SOURCE={name!r} is not a mask source; expected one of "
            f"{mask_source_names()}"
        )
    importlib.import_module(_SOURCE_MODULES[name])
    return MASK_SOURCE_REGISTRY.get(name).from_config(cfg, dataset_name)
