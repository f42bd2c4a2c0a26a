"""Spec of the verifier (impl/verify.py, the contract policy in spec/conftest.py): report card rows and exit codes,
the Gradescope format, one line for a file that cannot be imported, `nox -s verify -- --impl PATH` from another
folder with spaces in the path, and reproducible hypothesis verdicts. The subprocess runs use small part subsets."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import Phase, settings

import impl.verify
from conftest import hypothesis_profile
from impl import cli
from impl.verify import PARTS, POINTS, build_card, gradescope, render, verify
from spec.contract import Contract, contract_of

FOREIGN = Path(__file__).parent / "foreign"
REPO = Path(__file__).parent.parent


def _test(part: str, outcome: str, tier: str = "course", message: str = "", name: str = "t") -> dict[str, str]:
    return {"nodeid": f"spec/x.py::{name}", "tier": tier, "part": part, "outcome": outcome, "message": message}


def test_card_rows_follow_the_worst_outcome_of_each_part() -> None:
    tests = [
        _test("conv_forward", "passed"),
        _test("conv_backward", "passed"),
        _test("conv_backward", "failed", message="grad weight: max abs err 0.5", name="first"),
        _test("conv_backward", "failed", message="... — matches the known mistake: averaged", name="named"),
        _test("attention", "passed"),
        _test("attention", "warned", "advised", "fused path differs [advised: why]"),
        _test("pgd", "skipped", message="does not define `PGDAttack`"),
    ]
    card = build_card({"subject": "s.py", "tests": tests})
    assert [r.part for r in card.rows] == list(PARTS)
    assert card.status("conv_forward") == "PASS" and card.row("conv_forward").points == POINTS["conv_forward"]
    backward = card.row("conv_backward")
    assert backward.status == "FAIL" and backward.points == 0, backward
    assert backward.diagnosis == "named: ... — matches the known mistake: averaged", "the named mistake comes first"
    assert card.status("attention") == "WARN" and card.row("attention").points == POINTS["attention"]
    assert "advised: why" in card.row("attention").diagnosis
    assert card.status("pgd") == "MISSING" and "PGDAttack" in card.row("pgd").diagnosis
    assert card.status("simplevit") == "MISSING" and card.row("simplevit").diagnosis == ""
    assert card.exit_code == 1, "a failed course test fails the run"
    assert [r.part for r in build_card({"tests": tests}, ["pgd", "conv_forward"]).rows] == ["conv_forward", "pgd"]
    only_warned = build_card({"tests": [t for t in tests if t["outcome"] != "failed"]})
    assert only_warned.exit_code == 0, "advised warnings and missing parts do not fail the run"


def test_gradescope_results_have_one_test_per_part_and_the_total() -> None:
    card = build_card({"tests": [_test("conv_forward", "passed"), _test("pgd", "failed", message="ascends")]})
    results = gradescope(card)
    assert results["score"] == POINTS["conv_forward"] == card.score
    assert [set(t) for t in results["tests"]] == [{"name", "score", "max_score", "output"}] * len(PARTS)
    by_part = {t["name"].split()[0]: t for t in results["tests"]}
    assert by_part["pgd"]["score"] == 0 and by_part["pgd"]["max_score"] == POINTS["pgd"]
    assert "ascends" in by_part["pgd"]["output"]
    json.dumps(results)  # the autograder reads JSON


def test_a_foreign_run_reports_its_card_and_fails_only_on_course_failures() -> None:
    card = verify(FOREIGN / "returns_view" / "student_code.py", parts=["conv_forward"], pytest_args=["-k", "in_place"])
    assert [r.part for r in card.rows] == ["conv_forward"]
    row = card.row("conv_forward")
    assert row.status == "FAIL" and card.exit_code == 1, render(card)
    assert "in_place_by_relu" in row.diagnosis and "returns a view" in row.diagnosis, row.diagnosis
    assert row.counts["failed"] >= 1 and row.counts["passed"] == 0, row.counts
    assert re.search(r"conv_forward +FAIL +0/1", render(card)), render(card)


def test_a_file_that_cannot_be_imported_is_one_line_naming_the_module(tmp_path: Path) -> None:
    student = tmp_path / "student_code.py"
    student.write_text("import torch\nimport nope_xyz\n")
    card = verify(student, parts=["conv_forward", "pgd"])
    assert card.exit_code == 1 and "No module named 'nope_xyz'" in card.error, card
    assert {r.status for r in card.rows} == {"FAIL"} and all(r.diagnosis == card.error for r in card.rows)
    assert render(card).count("\n") == 1, render(card)


def test_nox_verify_takes_a_relative_path_with_spaces_from_another_folder(tmp_path: Path) -> None:
    """The README's command, space-separated `--impl PATH`, run from outside the checkout; the JUnit XML too."""
    folder = tmp_path / "my code"
    shutil.copytree(FOREIGN / "correct", folder)
    junit = tmp_path / "junit.xml"
    cmd = [sys.executable, "-m", "nox", "-f", str(REPO / "noxfile.py"), "-s", "verify", "--"]
    cmd += ["--impl", "my code/student_code.py", "-k", "in_place or drop_in or course_layers", f"--junit-xml={junit}"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert re.search(r"report card: .*my code/student_code\.py", out), out
    assert re.search(r"conv_forward +PASS", out) and re.search(r"simplenet +PASS", out), out
    assert junit.is_file() and "in_place_by_relu" in junit.read_text(), "no JUnit XML of the run"
    shutil.copytree(FOREIGN / "returns_view", tmp_path / "bad code")
    cmd[cmd.index("my code/student_code.py")] = "bad code/student_code.py"
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and re.search(r"conv_forward +FAIL", out), f"exit {proc.returncode}: {out[-3000:]}"


def _with_edit(tmp_path: Path, old: str, new: str) -> Path:
    """spec/foreign/correct with one edit, as a student's folder under tmp_path."""
    folder = tmp_path / "student"
    shutil.copytree(FOREIGN / "correct", folder)
    code = folder / "student_code.py"
    text = code.read_text()
    assert text.count(old) == 1, old
    code.write_text(text.replace(old, new))
    return code


def test_two_runs_of_a_buggy_file_give_the_same_card(tmp_path: Path) -> None:
    """The weight gradient averaged over the batch fails only where the drawn batch has N > 1: the failing example,
    and so the diagnosis, is the same in both runs."""
    code = _with_edit(tmp_path, ".sum(0).view_as(weight)", ".mean(0).view_as(weight)")
    runs = [
        verify(code, parts=["conv_backward"], pytest_args=["-k", "backward_matches_torch_nn_grad or float32_matches"])
        for _ in range(2)
    ]
    first = runs[0].row("conv_backward")
    assert first.status == "FAIL" and "ConvCase(" in first.diagnosis, render(runs[0])
    assert runs[0] == runs[1], f"two runs, two cards:\n{render(runs[0])}\n{render(runs[1])}"


def test_an_endless_loop_in_a_test_is_a_fail_row_naming_the_timeout(tmp_path: Path) -> None:
    code = _with_edit(tmp_path, "        ctx.stride, ctx.padding = stride, padding\n", "        while True: pass\n")
    card = verify(code, parts=["conv_forward"], pytest_args=["-k", "drop_in or forward_matches", "--test-timeout=2"])
    row = card.row("conv_forward")
    assert row.status == "FAIL" and card.exit_code == 1, render(card)
    assert "TestTimeout" in row.diagnosis and "2 s timeout" in row.diagnosis, row.diagnosis
    assert row.counts["failed"] == 2, row.counts


def test_a_run_past_its_timeout_raises_verify_error_naming_it(tmp_path: Path) -> None:
    student = tmp_path / "student_code.py"
    student.write_text("while True:\n    pass\n")  # at import: before any test's own timeout
    with pytest.raises(impl.verify.VerifyError, match="did not finish within the 8 s timeout"):
        verify(student, parts=["conv_forward"], timeout_s=8)


def test_a_file_with_nothing_graded_does_not_pass(tmp_path: Path) -> None:
    """The unedited starter (or an empty file) has every part MISSING: the run exits non-zero, pytest's own exit (what
    `nox -s verify` returns) as well as the card's."""
    student = tmp_path / "student_code.py"
    student.write_text("import torch\n")
    records = tmp_path / "records.json"
    cmd = [sys.executable, "-m", "pytest", str(REPO / "spec"), f"--rootdir={REPO}", "-q", "-p", "no:cacheprovider"]
    cmd += [f"--config-file={REPO / 'pyproject.toml'}", f"--impl={student}", f"--verify-json={records}"]
    proc = subprocess.run([*cmd, "--parts=conv_forward,pgd"], cwd=REPO, capture_output=True, text=True, timeout=600)
    card = build_card(json.loads(records.read_text()), ["conv_forward", "pgd"])
    assert {r.status for r in card.rows} == {"MISSING"}, render(card)
    assert card.exit_code == 1 and proc.returncode == 1, f"exit {proc.returncode}\n{proc.stdout[-2000:]}"
    partly = build_card({"tests": [_test("pgd", "skipped"), _test("conv_forward", "passed")]})
    assert partly.exit_code == 0, "a part left MISSING costs its points, not the run"


def test_foreign_runs_draw_the_same_examples_every_run() -> None:
    assert hypothesis_profile("/some/student_code.py", {}) == "verify"
    assert hypothesis_profile("impl", {}) == "dev" and hypothesis_profile("impl", {"CI": "1"}) == "ci"
    profile = settings.get_profile("verify")
    assert profile.derandomize and profile.database is None, "a stored example would change the next verdict"
    assert Phase.shrink not in profile.phases and Phase.generate in profile.phases


class _Item(SimpleNamespace):
    def iter_markers(self):
        return iter(self.marks)

    def get_closest_marker(self, name):
        return next((m for m in self.marks if m.name == name), None)


def test_every_subject_test_needs_a_tier_and_the_weakest_tier_wins() -> None:
    spec = Path(__file__).parent
    path = spec / "conv" / "test_conv.py"
    bare = _Item(nodeid="spec/conv/test_conv.py::t", path=path, marks=[])
    assert "no tier marker" in contract_of(bare, str(spec))
    mixed = _Item(nodeid="n", path=path, marks=[pytest.mark.extension.mark, pytest.mark.course("readme").mark])
    assert contract_of(mixed, str(spec)) == Contract("extension", "conv_backward", "")
    moved = _Item(nodeid="n", path=path, marks=[pytest.mark.part("pgd").mark, pytest.mark.advised("why").mark])
    assert contract_of(moved, str(spec)) == Contract("advised", "pgd", "why")
    stray = _Item(nodeid="n", path=spec / "elsewhere.py", marks=[pytest.mark.course.mark])
    assert "graded part" in contract_of(stray, str(spec))


def test_the_command_prints_the_card_writes_gradescope_and_exits_with_the_card(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    card = build_card({"subject": "s.py", "tests": [_test("pgd", "failed", message="ascends")]})
    calls = []
    monkeypatch.setattr(impl.verify, "verify", lambda path, **kw: calls.append((path, kw)) or card)
    results = tmp_path / "results.json"
    code = cli.main(["verify", "s.py", "--parts", "pgd", "--gradescope", str(results), "--junit-xml", "j.xml"])
    assert code == card.exit_code == 1
    assert calls == [("s.py", {"parts": ["pgd"], "pytest_args": [f"--junit-xml={Path('j.xml').resolve()}"]})]
    assert re.search(r"pgd +FAIL .*ascends", capsys.readouterr().out)
    assert json.loads(results.read_text()) == gradescope(card)


def test_the_command_writes_gradescope_results_even_when_the_run_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def hung(path, **kw):
        raise impl.verify.VerifyError("the spec run did not finish within the 900 s timeout:\nlast line")

    monkeypatch.setattr(impl.verify, "verify", hung)
    results = tmp_path / "results.json"
    assert cli.main(["verify", "s.py", "--gradescope", str(results)]) == 1
    written = json.loads(results.read_text())
    assert written["score"] == 0 and "900 s timeout" in written["output"] and "last line" in written["output"]
    assert "900 s timeout" in capsys.readouterr().err


def test_the_points_are_labelled_as_miniplaces_labs_allocation() -> None:
    card = build_card({"tests": [_test("conv_forward", "passed")]})
    assert impl.verify.POINTS_NOTE in render(card) and impl.verify.POINTS_NOTE in gradescope(card)["output"]
    assert sum(POINTS[p] for p in PARTS if p != "bonus") == 10, "the card's allocation of the course's code parts"


def test_the_command_names_a_missing_file_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["verify", str(tmp_path / "nope.py")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope.py: no such file" in err, err
