"""Fixtures shared by the whole spec: the implementation under test and numeric settings."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch

from spec.subject import SubjectLoadError, load_subject


@pytest.fixture(scope="session")
def subject(request: pytest.FixtureRequest) -> ModuleType:
    """The implementation under test, chosen with --impl (default: the `impl` package)."""
    try:
        return load_subject(request.config.getoption("--impl"))
    except SubjectLoadError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(autouse=True)
def _deterministic_numerics() -> None:
    """Seed every test and keep TF32 off so float32 comparisons against oracles are meaningful on CUDA."""
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
