"""What every benchmark does with its result: record the command line, write the JSON
atomically to ``--out`` (if given) and print it."""

from __future__ import annotations

import json
import os
import sys


def emit(result: dict, script: str, argv: list[str] | None, out: str | None) -> None:
    """Add ``result["command"]`` (``script`` and its arguments), write ``out`` atomically when
    given, and print the JSON."""
    from cyborgs.utils.atomic import atomic_write_bytes

    result["command"] = " ".join([script, *(sys.argv[1:] if argv is None else argv)])
    text = json.dumps(result, indent=2)
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        atomic_write_bytes(out, (text + "\n").encode())
    print(text)
