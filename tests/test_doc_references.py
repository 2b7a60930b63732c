"""Every document the repository cites is in the repository, and every METHOD.md section cited
exists.

A clone holds only its tracked files, so a citation of a document outside them (the team's old
internal specification, a path above the checkout) leaves the reader with nothing to open.
Scanned: every tracked text file except ``tools/patches/`` (third-party sources) and this file
(its bad references are planted, see the last test).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METHOD = REPO / "docs" / "METHOD.md"

# The old internal document's name as a word ("THING_SPECS" is not one).
_INTERNAL = re.compile(r"\bSPEC\b")
# A path ending in .md, not part of a longer path, URL or shell / format variable.
_MD_PATH = re.compile(r"(?<![\w/$.{}-])((?:[\w.-]+/)*[\w.-]+\.md)\b")
# "METHOD.md §2", "METHOD.md §3-4", "METHOD.md §1, §2, §4", "METHOD.md §6/§7".
_METHOD_CITE = re.compile(r"METHOD\.md((?:[\s,/-]*(?:and\s+)?§\d+(?:\.\d+)?(?:-\d+(?:\.\d+)?)?)+)")
_SECTION = re.compile(r"§?(\d+(?:\.\d+)?)")


def _tracked_files() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
        ).stdout
        names = [n for n in out.decode().split("\0") if n]
    except (OSError, subprocess.CalledProcessError):
        names = []
    if not names:  # not a git checkout (an unpacked archive): its files are the tracked ones
        skip = {".git", ".venv", ".cache", ".pytest_cache", ".ruff_cache", "output", "datasets"}
        names = [
            str(p.relative_to(REPO))
            for p in REPO.rglob("*")
            if p.is_file()
            and not skip & set(p.relative_to(REPO).parts)
            and not any(q.endswith(".egg-info") or q == "__pycache__" for q in p.parts)
        ]
    this = Path(__file__).resolve()
    return [
        REPO / n for n in sorted(names) if not n.startswith("tools/patches/") and REPO / n != this
    ]


def _text_lines() -> list[tuple[Path, int, str]]:
    rows = []
    for path in _tracked_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError):
            continue  # images; a tracked file deleted in the working tree
        rows += [(path, i, line) for i, line in enumerate(text.splitlines(), 1)]
    return rows


def _where(path: Path, lineno: int) -> str:
    return f"{path.relative_to(REPO)}:{lineno}"


def test_no_file_cites_the_internal_specification():
    hits = [_where(p, i) for p, i, line in _text_lines() if _INTERNAL.search(line)]
    assert not hits, f"cite docs/METHOD.md instead of the internal specification: {hits}"


def missing_documents(rows: list[tuple[Path, int, str]]) -> list[str]:
    """References to .md files the repository does not hold. A path is checked when it starts
    in the repository (a tracked top-level directory, or ``..``), resolved from the repository
    root or from the citing file's directory; a bare name when it is capitalised like the
    repository's documents (``DESIGN.md``). Other paths and lower-case names (``OUT/study.md``,
    ``results.md``) are files that tools write."""
    tracked = _tracked_files()
    top_dirs = {p.relative_to(REPO).parts[0] for p in tracked if len(p.relative_to(REPO).parts) > 1}
    basenames = {p.name for p in tracked}
    bad = []
    for path, lineno, line in rows:
        for ref in _MD_PATH.findall(line):
            if "/" not in ref:
                if ref[0].isupper() and ref not in basenames:
                    bad.append(f"{_where(path, lineno)}: {ref}")
                continue
            first = ref.split("/", 1)[0]
            if first not in top_dirs and first != "..":
                continue
            candidates = [(REPO / ref).resolve(), (path.parent / ref).resolve()]
            if not any(c.is_file() and c.is_relative_to(REPO) for c in candidates):
                bad.append(f"{_where(path, lineno)}: {ref}")
    return bad


def test_cited_documents_exist():
    bad = missing_documents(_text_lines())
    assert not bad, f"references to documents the repository does not contain: {bad}"


def method_sections() -> set[str]:
    """Section numbers of docs/METHOD.md: "## 2. ..." -> "2", "### 2.4 ..." -> "2.4"."""
    text = METHOD.read_text(encoding="utf-8")
    return set(re.findall(r"^##+ (\d+(?:\.\d+)?)\.? ", text, flags=re.M))


def uncited_sections(rows: list[tuple[Path, int, str]], sections: set[str]) -> list[str]:
    """``METHOD.md §N`` citations (and, inside METHOD.md, every ``§N`` not written as
    ``paper §N``) that name no section of METHOD.md."""
    bad = []
    for path, lineno, line in rows:
        cited = [s for m in _METHOD_CITE.findall(line) for s in _SECTION.findall(m)]
        if path == METHOD:
            cited += re.findall(r"(?<!paper )(?<!Paper )§(\d+(?:\.\d+)?)", line)
        bad += [f"{_where(path, lineno)}: §{s}" for s in cited if s not in sections]
    return bad


def test_cited_method_sections_exist():
    sections = method_sections()
    # The topics code and configs cite by number (layer names .. detectron2 install).
    assert {"1", "2", "3", "4", "5", "6", "7"} <= sections
    bad = uncited_sections(_text_lines(), sections)
    assert not bad, f"METHOD.md has no such section: {bad}"


def test_the_checks_catch_planted_references():
    """The scanners on lines written here: each bad reference is reported, each good one not."""
    here = REPO / "cyborgs" / "config.py"
    rows = [
        (here, 1, "see `docs/DESIGN.md` and docs/METHOD.md §2.4 (loss)"),
        (here, 2, "written to OUT/study.md and results.md; https://x.org/a/README.md"),
        (here, 3, "the pinned `../shared/NOTES.md`"),
        (here, 4, "see docs/NOPE.md"),
        (here, 5, "see TODO_NOTES.md"),
        (here, 6, "METHOD.md §3-4, §9 and METHOD.md §6/§7.9"),
    ]
    assert missing_documents(rows) == [
        "cyborgs/config.py:3: ../shared/NOTES.md",
        "cyborgs/config.py:4: docs/NOPE.md",
        "cyborgs/config.py:5: TODO_NOTES.md",
    ]
    sections = method_sections()
    assert uncited_sections(rows, sections) == [
        "cyborgs/config.py:6: §9",
        "cyborgs/config.py:6: §7.9",
    ]
    assert _INTERNAL.search("as SPEC §2 says") and not _INTERNAL.search("THING_SPECS")
