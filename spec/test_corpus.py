"""Proof of power: the report card's verdicts on the corpus of implementations written for the spec (spec/corpus/).

Two correct implementations that make different valid choices PASS every part they have (WARN is allowed: advised
only); each mutant, one real student mistake, FAILs in its part, and where the spec names that mistake, the diagnosis
says so. A spec weakened so that a mistake slips through turns this red. The default run checks the correct files and
the `fast` mutants (about one per part); `nox -s corpus` checks every mutant (marker `corpus`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from impl.verify import PARTS, verify
from spec.corpus.mutants import CORPUS, CORRECT, MUTANTS, Mutant, materialize

# What each correct file lacks on purpose: correct_b does no adversarial training (the bonus is optional).
ABSENT = {"correct_a": set(), "correct_b": {"bonus"}}


@pytest.mark.slow
@pytest.mark.parametrize("name", CORRECT)
def test_a_correct_implementation_passes_every_part_at_the_course_tier(name: str) -> None:
    card = verify(CORPUS / name / "student_code.py")
    assert not card.error, f"{name}: {card.error}"
    wrong = [
        f"{r.part}: {r.status} ({r.diagnosis})"
        for r in card.rows
        if r.status != ("MISSING" if r.part in ABSENT[name] else "PASS") and r.status != "WARN"
    ]
    assert not wrong, f"{name} is correct, yet its card says: " + "; ".join(wrong)
    assert card.exit_code == 0, f"{name}: exit {card.exit_code} for a correct file"


@pytest.mark.parametrize(
    "mutant", [pytest.param(m, id=m.name, marks=() if m.fast else pytest.mark.corpus) for m in MUTANTS]
)
def test_a_mutant_is_caught_in_its_part(mutant: Mutant, tmp_path: Path) -> None:
    card = verify(materialize(mutant, tmp_path), parts=[mutant.part], pytest_args=["-x"])
    row = card.row(mutant.part)
    assert not card.error, f"{mutant.name}: the file did not even load: {card.error}"
    assert row.status == mutant.expect, (
        f"{mutant.name} ({mutant.new!r}): {mutant.part} is {row.status}, expected {mutant.expect} ({row.diagnosis})"
    )
    want_exit = int(mutant.expect == "FAIL")
    assert card.exit_code == want_exit, f"{mutant.name}: exit {card.exit_code}, expected {want_exit}"
    if mutant.diagnosis:
        assert mutant.diagnosis in row.diagnosis, f"{mutant.name}: the diagnosis does not name it: {row.diagnosis}"


def test_every_mutant_is_a_single_edit_of_a_correct_file_in_a_graded_part(tmp_path: Path) -> None:
    names = [m.name for m in MUTANTS]
    assert len(set(names)) == len(names), "mutant names repeat"
    for mutant in MUTANTS:
        assert mutant.part in PARTS and mutant.base in CORRECT, mutant
        edited = materialize(mutant, tmp_path).parent / mutant.file
        original = (CORPUS / mutant.base / mutant.file).read_text()
        assert edited.read_text() == original.replace(mutant.old, mutant.new) != original, mutant.name
    fast_parts = {m.part for m in MUTANTS if m.fast}
    assert fast_parts == set(PARTS), f"parts without a mutant in the default run: {set(PARTS) - fast_parts}"
