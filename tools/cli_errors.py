"""A config that cannot be used, as the tools report it: one ``error:`` line, exit status 2."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def one_line_config_errors() -> Iterator[None]:
    """Around reading a config (before anything is written): a config file that cannot be read
    (``ConfigFileError``), a value that cannot work (``ConfigError``) or a missing file becomes
    one ``error:`` line on stderr and ``SystemExit(2)``; anything else keeps its traceback."""
    from cyborgs.config import ConfigError
    from cyborgs.config_io import ConfigFileError

    try:
        yield
    except (ConfigFileError, ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
