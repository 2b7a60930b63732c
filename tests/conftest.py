"""Suite-wide pytest setup: --run-slow, GPU skips, few torch threads, the tiny data fixture.

Tests are collected rootdir-style (no ``__init__.py``), so test file basenames must be unique
across ``tests/``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Tests import a tool as the tools import each other: as a top-level module from tools/ (or
# tools/dev/) on sys.path, where Python puts a script's own folder (docs/DESIGN.md, "tools/").
_TOOLS = Path(__file__).resolve().parents[1] / "tools"
sys.path[:0] = [str(_TOOLS), str(_TOOLS / "dev")]

try:
    import torch
except ImportError:  # keep collection working for tests that need no torch
    torch = None

if torch is not None:
    # two shared CPU cores: more threads only add contention
    torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow", action="store_true", default=False, help="also run tests marked slow"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_slow = config.getoption("--run-slow")
    has_cuda = torch is not None and torch.cuda.is_available()
    skip_slow = pytest.mark.skip(reason="slow test: pass --run-slow to run it")
    skip_gpu = pytest.mark.skip(reason="needs CUDA, none available")
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session", autouse=True)
def _image_size_cache(tmp_path_factory: pytest.TempPathFactory):
    """Tests (and their subprocesses) cache image sizes in a temp dir, not in ``~/.cache``."""
    saved = os.environ.get("CYBORGS_CACHE_DIR")
    os.environ["CYBORGS_CACHE_DIR"] = str(tmp_path_factory.mktemp("cyborgs_cache"))
    yield
    if saved is None:
        os.environ.pop("CYBORGS_CACHE_DIR", None)
    else:
        os.environ["CYBORGS_CACHE_DIR"] = saved


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory: pytest.TempPathFactory):
    """The ``tiny`` preset (seed 0), generated once per session. ``CYBORGS_DEMO_DATASETS`` (the
    ``demo_*`` names) and ``DETECTRON2_DATASETS`` (our lazily resolved real names such as
    ``coco_2017_train_unlabeled``) point at it for the session, then are restored. detectron2's
    own built-in names bind their root at import, so use the ``demo_*`` twins in tests."""
    from cyborgs.data.writers import build_demo_data

    root = tmp_path_factory.mktemp("cyborgs_tiny_data")
    build_demo_data(root, "tiny", seed=0)
    keys = ("CYBORGS_DEMO_DATASETS", "DETECTRON2_DATASETS")
    saved = {k: os.environ.get(k) for k in keys}
    for k in keys:
        os.environ[k] = str(root)
    try:
        yield root
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
