"""Spec of the harness itself: `--impl` loads a foreign file (with its sibling modules), reports what it lacks as
skipped with the name, fails a wrong file and passes a correct one. Foreign files live in spec/foreign/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from spec.subject import SubjectLoadError, load_subject, need

FOREIGN = Path(__file__).parent / "foreign"
REPO = Path(__file__).parent.parent


def test_a_student_file_loads_with_its_sibling_modules() -> None:
    student = load_subject(str(FOREIGN / "correct" / "student_code.py"))
    assert student.SimpleNet.__module__ == "custom_blocks"
    assert callable(student.CustomConv2DFunction.apply)


def test_a_missing_course_name_skips_naming_it() -> None:
    student = load_subject(str(FOREIGN / "correct" / "student_code.py"))
    with pytest.raises(pytest.skip.Exception, match="does not define `SimpleViT`"):
        need(student, "SimpleViT")


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SubjectLoadError, match="no such file"):
        load_subject(str(tmp_path / "student_code.py"))


def test_a_file_that_fails_to_import_names_the_file_and_the_cause(tmp_path: Path) -> None:
    bad = tmp_path / "student_code.py"
    bad.write_text("import torch\nraise RuntimeError('TODO: implement')\n")
    with pytest.raises(SubjectLoadError, match=r"student_code\.py.*RuntimeError: TODO: implement"):
        load_subject(str(bad))


def _run_spec(impl: Path, selection: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "spec/conv",
        "spec/models/test_cnn.py",
        "-q",
        "-p",
        "no:cacheprovider",
        "-k",
        selection,
        f"--impl={impl}",
    ]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_the_spec_passes_a_correct_foreign_file_and_fails_a_real_student_bug() -> None:
    selection = "in_place or drop_in or course_parameter_count or course_layers"
    good = _run_spec(FOREIGN / "correct" / "student_code.py", selection)
    assert good.returncode == 0 and " passed" in good.stdout and "failed" not in good.stdout, good.stdout[-3000:]
    bad = _run_spec(FOREIGN / "returns_view" / "student_code.py", selection)
    assert bad.returncode == 1 and "test_output_can_be_modified_in_place_by_relu" in bad.stdout, bad.stdout[-3000:]
