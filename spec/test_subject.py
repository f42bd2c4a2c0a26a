"""Spec of the harness itself: `--impl` loads a foreign file (with its sibling modules), reports what it lacks as
skipped with the name, fails a wrong file and passes a correct one. Foreign files live in spec/foreign/."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from spec.subject import SubjectLoadError, install_hint, load_subject, need

FOREIGN = Path(__file__).parent / "foreign"
REPO = Path(__file__).parent.parent


def test_a_student_file_loads_with_its_sibling_modules() -> None:
    student = load_subject(str(FOREIGN / "correct" / "student_code.py"))
    assert student.SimpleNet.__module__ == "custom_blocks"
    assert callable(student.CustomConv2DFunction.apply)


def test_a_student_file_imports_its_own_siblings_not_a_previous_subjects(tmp_path: Path) -> None:
    """A previous subject's `custom_blocks` cached in sys.modules must not stand in for this subject's own."""
    other = tmp_path / "custom_blocks.py"
    other.write_text("SimpleNet = 'a previous student'\n")
    sys.modules["custom_blocks"] = module = type(sys)("custom_blocks")
    module.__file__ = str(other)
    try:
        student = load_subject(str(FOREIGN / "correct" / "student_code.py"))
        origin = Path(sys.modules[student.SimpleNet.__module__].__file__)
        assert origin == (FOREIGN / "correct" / "custom_blocks.py").resolve(), f"SimpleNet came from {origin}"
    finally:
        sys.modules.pop("custom_blocks", None)


def test_a_missing_module_is_one_error_naming_it_and_how_to_install_it(tmp_path: Path) -> None:
    bad = tmp_path / "student_code.py"
    bad.write_text("import torch\nimport nope_xyz.sub\n")
    with pytest.raises(SubjectLoadError, match=r"^student_code\.py cannot be imported: No module named 'nope_xyz'"):
        load_subject(str(bad))
    assert "pip install -e '.[course]'" in install_hint("cv2") and "opencv-python-headless" in install_hint("cv2")
    assert "pip install -e '.[course]'" in install_hint("einops")
    assert "code/utils.py" in install_hint("utils") and "pip" not in install_hint("utils")


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
    assert good.returncode == 0 and re.search(r"conv_forward +PASS", good.stdout), good.stdout[-3000:]
    bad = _run_spec(FOREIGN / "returns_view" / "student_code.py", selection)
    assert bad.returncode == 1 and re.search(r"conv_forward +FAIL .*in_place_by_relu", bad.stdout), bad.stdout[-3000:]
