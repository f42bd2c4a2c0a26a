"""The contract tiers and graded parts of the spec's subject tests (the rules and their sources: spec/CONTRACT.md).

Every test that uses the `subject` fixture declares a tier with a marker, optionally with the rule's source or reason:
`@pytest.mark.course("readme §3.1.1")`, `@pytest.mark.advised("why it is good practice")`, `@pytest.mark.extension`.
A parametrized case may carry its own tier (`pytest.param(..., marks=pytest.mark.extension)`); the weakest tier of a
test wins (extension over advised over course). Its graded part is its file's (FILE_PARTS) unless the test says
`@pytest.mark.part("conv_backward")`. The conftest refuses to run a subject test without a tier or a part.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from impl.verify import PARTS

TIERS = ("course", "advised", "extension")  # strongest first; a test's tier is the last of these it is marked with
# The part of each subject test file (path relative to spec/); a test of another part says @pytest.mark.part(...).
FILE_PARTS: dict[str, str] = {
    "conv/test_conv.py": "conv_backward",
    "models/test_cnn.py": "simplenet",
    "attention/test_attention.py": "attention",
    "attention/test_window.py": "transformer_block",
    "attention/test_block.py": "transformer_block",
    "attention/test_layers.py": "transformer_block",
    "models/test_vit.py": "simplevit",
    "attack/test_course.py": "pgd",
}


@dataclass(frozen=True)
class Contract:
    tier: str
    part: str
    reason: str  # the marker's argument: the rule's source (course) or why it is advised; may be ""


def uses_subject(item: pytest.Item) -> bool:
    return "subject" in getattr(item, "fixturenames", ())


def contract_of(item: pytest.Item, spec_root: str) -> Contract | str:
    """The item's tier, part and reason, or a one-line complaint naming what it lacks."""
    marks = [m for m in item.iter_markers() if m.name in TIERS]
    if not marks:
        return f"{item.nodeid}: uses `subject` but has no tier marker (course, advised or extension)"
    weakest = max(marks, key=lambda m: TIERS.index(m.name))
    part_mark = item.get_closest_marker("part")
    if part_mark is not None:
        part = part_mark.args[0]
    else:
        rel = str(item.path.relative_to(spec_root)) if item.path.is_relative_to(spec_root) else str(item.path)
        part = FILE_PARTS.get(rel.replace("\\", "/"), "")
    if part not in PARTS:
        return f"{item.nodeid}: graded part {part!r} is not one of {PARTS} (add the file to FILE_PARTS or mark part)"
    return Contract(weakest.name, part, str(weakest.args[0]) if weakest.args else "")
