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
    _isolate_siblings(path.parent)
    if folder in sys.path:
        sys.path.remove(folder)
    sys.path.insert(0, folder)  # first, so `from custom_blocks import ...` finds the student's own sibling file
    name = f"_subject_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise SubjectLoadError(f"--impl={str(path)!r}: Python cannot load this file as a module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except ModuleNotFoundError as exc:
        del sys.modules[name]
        raise SubjectLoadError(f"{path.name} cannot be imported: {exc}{install_hint(exc.name)}") from exc
    except Exception as exc:
        del sys.modules[name]
        raise SubjectLoadError(f"--impl={str(path)!r}: importing it raised {type(exc).__name__}: {exc}") from exc
    return module


# What the course's starter files import that the spec's environment may lack, and the pip name that provides it.
COURSE_DEPENDENCIES = {"cv2": "opencv-python-headless", "einops": "einops"}
COURSE_FILES = ("utils", "custom_transforms", "custom_dataloader", "custom_blocks")  # the starter's code/ folder


def install_hint(module: str | None) -> str:
    """How to install the missing `module`: the project's course extra for the starter's dependencies, else pip."""
    top = (module or "").split(".")[0]
    if top in COURSE_DEPENDENCIES:
        return f" (a dependency of the course's starter files, {COURSE_DEPENDENCIES[top]}: pip install -e '.[course]')"
    if top in COURSE_FILES:
        return f" (a file of the course's starter: put code/{top}.py next to the student file)"
    return f" (pip install {top})" if top else ""


def _isolate_siblings(folder: Path) -> None:
    """Forget modules cached from another folder under the name of one of `folder`'s files (e.g. a previous
    subject's `custom_blocks`), so this subject imports its own siblings."""
    for sibling in folder.glob("*.py"):
        cached = sys.modules.get(sibling.stem)
        origin = getattr(cached, "__file__", None)
        if cached is not None and (origin is None or Path(origin).resolve().parent != folder):
            del sys.modules[sibling.stem]


def need(subject: ModuleType, name: str) -> Any:
    """Return `subject.name`, or skip the calling test saying which course name is missing."""
    try:
        return getattr(subject, name)
    except AttributeError:
        pytest.skip(f"the implementation under test ({subject.__name__}) does not define `{name}`")
