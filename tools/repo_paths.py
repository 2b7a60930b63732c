"""Where things live in this checkout. Only the tools know the repository's layout; the library
(``cyborgs/``) takes real paths."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TRANSFER_CONFIGS = REPO_ROOT / "transfer_configs"


def resolve_transfer_config(path: str) -> str:
    """``path`` if it is a file, else the config of that name under ``transfer_configs/``."""
    if os.path.isfile(path):
        return path
    candidate = TRANSFER_CONFIGS / path
    if candidate.is_file():
        return str(candidate)
    raise FileNotFoundError(
        f"config file not found: {path} (neither a file nor a name under {TRANSFER_CONFIGS})"
    )
