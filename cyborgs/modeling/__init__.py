"""CYBORGS modeling: importing this package registers the ``CYBORGS`` meta-architecture."""

from .meta_arch import CYBORGS

__all__ = ["CYBORGS"]
