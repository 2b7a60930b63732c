"""A config or command line that cannot be used, as the tools report it: one ``error:`` line,
exit status 2, nothing written."""

from __future__ import annotations

import contextlib
import difflib
import re
import sys
from collections.abc import Iterator, Sequence


class UsageError(Exception):
    """A command line that cannot be run as asked; reported as one ``error:`` line."""


def _config_keys(transfer: bool = False) -> list[str]:
    """Every key of the pretraining (or transfer) config, dotted (for "did you mean")."""
    from detectron2.config import get_cfg

    from cyborgs.config import flat_items

    if transfer:
        from cyborgs.transfer.config import add_transfer_config as add
    else:
        from cyborgs.config import add_cyborgs_config as add

    return list(flat_items(add(get_cfg())))


def config_error_line(
    e: BaseException,
    config_file: str | None = None,
    opts: Sequence[str] = (),
    transfer: bool = False,
) -> str | None:
    """One line for a config mistake: the suite's checks, yacs's unknown key (with the closest
    key) or type mismatch (saying whether it came from ``config_file`` or the command line), a
    missing file, a :class:`UsageError`. None for anything else: a bug keeps its traceback.
    ``transfer``: the keys to suggest from are the transfer config's (tools/train_net.py)."""
    from cyborgs.config import ConfigError
    from cyborgs.config_io import ConfigFileError

    msg = str(e.args[0]) if e.args else str(e)
    m = re.match(r"Non-existent (?:config )?key: (\S+)", msg)
    if isinstance(e, (AssertionError, KeyError)) and m:
        key = m.group(1)
    elif (
        isinstance(e, ValueError)
        and not isinstance(e, (ConfigError, ConfigFileError))
        and "Type mismatch" in msg
    ):
        key = msg.rsplit("config key: ", 1)[-1]
    elif isinstance(e, (ConfigError, ConfigFileError, FileNotFoundError, UsageError)):
        return f"error: {msg}"
    elif isinstance(e, AssertionError) and msg.startswith("Override list has odd length"):
        return "error: the overrides after the options must be KEY VALUE pairs: " + msg
    else:
        return None
    given = [str(o) for o in list(opts)[::2]]
    where = "the command line" if key in given or not config_file else f"config file {config_file}"
    line = f"error: {msg} (from {where})"
    if m:
        close = difflib.get_close_matches(key, _config_keys(transfer), n=1)
        if close:
            line += f"; did you mean {close[0]}?"
    return line


@contextlib.contextmanager
def one_line_config_errors(
    config_file: str | None = None, opts: Sequence[str] = (), transfer: bool = False
) -> Iterator[None]:
    """Around reading a config and checking a command line (before anything is written): a
    mistake (:func:`config_error_line`) becomes one ``error:`` line on stderr and
    ``SystemExit(2)``; anything else keeps its traceback. ``config_file`` and ``opts``: what
    the tool was given, to say where a bad key came from; ``transfer``: a transfer config."""
    try:
        yield
    except (AssertionError, KeyError, ValueError, OSError, UsageError) as e:  # the suite's too
        line = config_error_line(e, config_file, opts, transfer)
        if line is None:
            raise
        print(line, file=sys.stderr)
        raise SystemExit(2) from None
