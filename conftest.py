"""Root pytest configuration: the --impl option, the hypothesis profiles and the marker policy.

Markers are declared in pyproject.toml (strict); the default run excludes `training`, `gpu` and `bench`.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

# CI must be reproducible: derandomized, no deadline (torch's first calls are slow on 2 cores). The spec's
# function-scoped fixtures (the subject's callables, seeding) hold no per-example state, so sharing them is safe.
_QUIET = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True, suppress_health_check=_QUIET)
settings.register_profile("dev", deadline=None, print_blob=True, suppress_health_check=_QUIET)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--impl",
        default="impl",
        metavar="MODULE_OR_PATH",
        help="implementation under test: an importable module name (default: impl) or a path to a .py file "
        "such as a student's student_code.py (its folder is put on sys.path so sibling modules import)",
    )
