"""Facts about the installed detectron2 that the suite must respect."""

from __future__ import annotations

import importlib.util


def _has_d2_ops() -> bool:
    # Our pure-Python install (tools/install_detectron2.py) has no compiled ``detectron2._C``;
    # a source build of the official detectron2 has it.
    try:
        return importlib.util.find_spec("detectron2._C") is not None
    except (ImportError, ValueError):
        return False


HAS_D2_OPS: bool = _has_d2_ops()
