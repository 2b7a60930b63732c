"""Run a tool with every label-map write slowed down: a test's hook into a subprocess.

    python tests/bootstrap/slow_mask_writes.py DELAY_S TOOL.py [TOOL ARGS ...]

Patches ``MaskStore.write`` to sleep ``DELAY_S`` seconds after each map, then runs ``TOOL.py``
as ``__main__`` with the remaining arguments. A bootstrap round then lasts long enough for a
test to watch it (progress lines) or to kill the process in the middle of it
(``test_kill_during_bootstrap.py``). Tests only: the library has no such switch.
"""

from __future__ import annotations

import functools
import os
import runpy
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def slow_mask_writes_cmd(delay_s: float, tool: str, *args: str) -> list[str]:
    """The command line running ``tool`` (a path) under this launcher."""
    return [sys.executable, os.path.abspath(__file__), str(delay_s), tool, *args]


def _patch_writes(delay_s: float) -> None:
    from cyborgs.masks.store import MaskStore

    write = MaskStore.write

    @functools.wraps(write)
    def slow_write(self, *args, **kwargs):
        n = write(self, *args, **kwargs)
        time.sleep(delay_s)
        return n

    MaskStore.write = slow_write


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    delay_s, tool = float(sys.argv[1]), sys.argv[2]
    sys.path.insert(0, REPO)  # the checkout's cyborgs, whatever is installed
    # as Python runs a script: its own folder first (the tools import each other, e.g. cli_errors)
    sys.path.insert(0, os.path.dirname(os.path.abspath(tool)))
    _patch_writes(delay_s)
    sys.argv = [tool, *sys.argv[3:]]
    runpy.run_path(tool, run_name="__main__")


if __name__ == "__main__":
    main()
