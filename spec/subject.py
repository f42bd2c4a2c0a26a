"""Load the implementation under test (`--impl`) and look up course-interface names on it.

The spec never imports `impl` for the course interface: it asks the `subject` fixture, so the same tests check a
student's `student_code.py`. A name the subject does not define makes the test skip with that name, never pass.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

# The course interface, part by part (the report card groups results this way).
COURSE_INTERFACE: dict[str, tuple[str, ...]] = {
    "conv": ("CustomConv2DFunction", "CustomConv2d"),
    "models": ("SimpleNet",),
    "attention": ("Attention", "TransformerBlock", "SimpleViT"),
    "attack": ("PGDAttack",),
}


class SubjectLoadError(RuntimeError):
    """The --impl target could not be imported; the message names the file and the cause."""


def load_subject(spec: str) -> ModuleType:
    """Import `spec`: a module name, or a path to a .py file (imported with its folder on sys.path)."""
    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        return _load_file(path)
    try:
        return importlib.import_module(spec)
    except ImportError as exc:
        raise SubjectLoadError(f"--impl={spec!r}: not a file, and importing it as a module failed: {exc}") from exc


def _load_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise SubjectLoadError(f"--impl={str(path)!r}: no such file")
    path = path.resolve()
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # so `from custom_blocks import ...` in a student file works
    name = f"_subject_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise SubjectLoadError(f"--impl={str(path)!r}: Python cannot load this file as a module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise SubjectLoadError(f"--impl={str(path)!r}: importing it raised {type(exc).__name__}: {exc}") from exc
    return module


def need(subject: ModuleType, name: str) -> Any:
    """Return `subject.name`, or skip the calling test saying which course name is missing."""
    try:
        return getattr(subject, name)
    except AttributeError:
        pytest.skip(f"the implementation under test ({subject.__name__}) does not define `{name}`")


def ours_only(subject: ModuleType, what: str) -> None:
    """Skip unless the subject is this project's `impl`: `what` is our contract, not the course interface
    (e.g. the wording of input validation), so a foreign implementation is not failed for lacking it."""
    if subject.__name__ != "impl":
        pytest.skip(f"{what} is a miniplaces-lab extension, not part of the course interface")
