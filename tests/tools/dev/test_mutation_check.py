"""tools/dev/mutation_check.py: its hand-written mutations still point at code that exists, so
a refactor that moves or rewrites a mutated line fails here (fix the list in the same change),
not the next time someone runs the (long) check."""

from __future__ import annotations

from pathlib import Path

import mutation_check

REPO = Path(__file__).resolve().parents[3]


def test_every_mutation_finds_its_text_once_and_its_tests_exist() -> None:
    assert mutation_check.check_mutations(REPO, mutation_check.MUTATIONS) == []


def test_a_moved_line_is_reported(tmp_path) -> None:
    m = mutation_check.MUTATIONS[0]
    (tmp_path / Path(m.path)).parent.mkdir(parents=True)
    (tmp_path / m.path).write_text("# the line moved elsewhere\n")
    for t in m.tests:
        (tmp_path / t).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / t).write_text("")
    problems = mutation_check.check_mutations(tmp_path, (m,))
    assert len(problems) == 1 and m.id in problems[0]
