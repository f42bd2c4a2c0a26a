"""Proof of power: the report card's verdicts on the corpus of implementations written for the spec (spec/corpus/).

Two correct implementations that make different valid choices, and their valid variants (mutants with expect="PASS",
e.g. PGD with a random start), PASS every part they have (WARN is allowed: advised only); each other mutant, one real
student mistake, FAILs in its part, and where the spec names that mistake, the diagnosis says so. A spec weakened so
that a mistake slips through turns this red; one tightened so that a valid reading fails, too. The default run checks
the correct files and the `fast` mutants and variants (about one per part); `nox -s corpus` checks every one (marker
`corpus`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from impl.verify import PARTS, verify
from spec.corpus.mutants import BY_NAME, CORPUS, CORRECT, MUTANTS, VARIANTS, Mutant, edits, materialize

# What each correct file lacks on purpose: correct_b does no adversarial training (the bonus is optional).
ABSENT = {"correct_a": set(), "correct_b": {"bonus"}}


def _by_speed(mutants: tuple[Mutant, ...]) -> list:
    """One param per mutant; those not `fast` only under `nox -s corpus`."""
    return [pytest.param(m, id=m.name, marks=() if m.fast else pytest.mark.corpus) for m in mutants]


@pytest.mark.slow
@pytest.mark.parametrize("case", [*CORRECT, *_by_speed(VARIANTS)])
def test_a_correct_implementation_passes_every_part_at_the_course_tier(case: str | Mutant, tmp_path: Path) -> None:
    if isinstance(case, Mutant):
        name, folder, path = case.name, edits(case)[0].base, materialize(case, tmp_path)
    else:
        name, folder, path = case, case, CORPUS / case / "student_code.py"
    card = verify(path)
    assert not card.error, f"{name}: {card.error}"
    wrong = [
        f"{r.part}: {r.status} ({r.diagnosis})"
        for r in card.rows
        if r.status != ("MISSING" if r.part in ABSENT[folder] else "PASS") and r.status != "WARN"
    ]
    assert not wrong, f"{name} is correct, yet its card says: " + "; ".join(wrong)
    assert card.exit_code == 0, f"{name}: exit {card.exit_code} for a correct file"


@pytest.mark.parametrize("mutant", _by_speed(tuple(m for m in MUTANTS if m.expect != "PASS")))
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
        assert mutant.part in PARTS and mutant.expect in ("FAIL", "WARN", "PASS"), mutant
        assert mutant.base in CORRECT or mutant.base in {v.name for v in VARIANTS}, f"{mutant.name}: {mutant.base}"
        edited = materialize(mutant, tmp_path).parent / mutant.file
        if mutant.base in CORRECT:
            original = (CORPUS / mutant.base / mutant.file).read_text()
        else:  # a mistake on top of a valid variant: one edit of the variant's file
            original = (materialize(BY_NAME[mutant.base], tmp_path / mutant.name).parent / mutant.file).read_text()
        assert edited.read_text() == original.replace(mutant.old, mutant.new) != original, mutant.name
    fast_parts = {m.part for m in MUTANTS if m.fast and m.expect != "PASS"}
    assert fast_parts == set(PARTS), f"parts without a mutant in the default run: {set(PARTS) - fast_parts}"
