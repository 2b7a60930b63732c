"""cyborgs.utils.ownership: a folder's record of what the suite wrote decides what may be
deleted or overwritten there; nothing else is touched."""

from __future__ import annotations

from pathlib import Path

import pytest

from cyborgs.utils import ownership
from cyborgs.utils.ownership import NotOwnedError


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_claim_record_and_remove_only_what_is_recorded(tmp_path: Path) -> None:
    out = tmp_path / "out"
    ownership.claim(out, "tool")  # a new folder: created, with an empty record
    assert ownership.is_claimed(out) and ownership.recorded(out) == set()
    ownership.claim(out, "tool")  # claiming again keeps the record
    ownership.record(out, "a", "b")
    (out / "a").mkdir()
    (out / "a" / "x").write_bytes(b"ours")
    (out / "b").write_bytes(b"ours")
    (out / "c").write_bytes(b"the user's")
    with pytest.raises(NotOwnedError, match=r"--overwrite: c in .* is not recorded"):
        ownership.remove_recorded(out, ["a", "b", "c"], why="--overwrite")
    assert sorted(_tree(out)) == [ownership.RECORD, "a/x", "b", "c"]  # nothing deleted
    assert ownership.remove_recorded(out, ["a", "b", "missing"]) == ["a", "b"]
    assert _tree(out)["c"] == b"the user's" and ownership.recorded(out) == set()
    # writing over a present file the record does not list is refused
    with pytest.raises(NotOwnedError, match="would overwrite it"):
        ownership.record(out, "c")
    with pytest.raises(ValueError, match="entries are names"):
        ownership.record(out, "../x")
    # another tool's folder is not this tool's
    with pytest.raises(NotOwnedError, match="holds the outputs of tool, not of other"):
        ownership.claim(out, "other")


def test_a_folder_of_other_files_is_refused_unless_recognised(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_bytes(b"n")
    with pytest.raises(NotOwnedError, match=r"not empty .* notes\.txt \(1 entry\)"):
        ownership.claim(mine, "tool")
    ownership.claim(mine, "tool", dry_run=True, legacy=["results.md"])  # recognised: no error
    assert not ownership.is_claimed(mine)  # dry run: nothing written
    ownership.claim(mine, "tool", legacy=["notes.txt", "absent"])
    assert ownership.recorded(mine) == {"notes.txt"}
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / ownership.RECORD).write_text("[1, 2]")
    with pytest.raises(NotOwnedError, match="not a record"):
        ownership.claim(bad, "tool")
    with pytest.raises(NotOwnedError, match="not a folder"):
        ownership.claim(mine / "notes.txt", "tool")
    with pytest.raises(NotOwnedError, match="claim it first"):
        ownership.record(tmp_path / "unclaimed", "a")
