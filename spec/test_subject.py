"""Spec of the harness itself: `--impl` loads a foreign file with its own sibling modules, reports what it lacks as
skipped with the name, and a file that cannot be imported as one error naming the cause. Foreign files live in
spec/foreign/; spec/test_verify.py runs the spec against them (a correct one passes, a real student bug fails)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from spec.subject import SubjectLoadError, install_hint, load_subject, need

FOREIGN = Path(__file__).parent / "foreign"


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
