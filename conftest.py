"""Root pytest configuration: the --impl option, the verify options, the hypothesis profiles and the marker policy.

Markers are declared in pyproject.toml (strict); the default run excludes `training`, `gpu` and `bench`. The contract
tiers (course / advised / extension) and the report card live in spec/conftest.py and spec/contract.py.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, Phase, settings

# Verdicts must be reproducible: derandomized, no deadline (torch's first calls are slow on 2 cores). The spec's
# function-scoped fixtures (the subject's callables, seeding) hold no per-example state, so sharing them is safe.
_QUIET = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True, suppress_health_check=_QUIET)
settings.register_profile("dev", deadline=None, print_blob=True, suppress_health_check=_QUIET)
# A foreign file's run (--impl PATH): the same examples every run and no example database, which would replay a
# previous run's failures and so change the next verdict.
# No shrinking either: a failing example is reported as first drawn (the same every run), and shrinking a student's
# failures cost more than the rest of the run.
settings.register_profile(
    "verify", parent=settings.get_profile("ci"), database=None, phases=[Phase.explicit, Phase.generate]
)


def hypothesis_profile(impl: str, environ: os._Environ[str] | dict[str, str]) -> str:
    """ "verify" for any implementation but ours; otherwise HYPOTHESIS_PROFILE, "ci" under CI, else "dev"."""
    if impl != "impl":
        return "verify"
    return environ.get("HYPOTHESIS_PROFILE", "ci" if environ.get("CI") else "dev")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--impl",
        default="impl",
        metavar="MODULE_OR_PATH",
        help="implementation under test: an importable module name (default: impl) or a path to a .py file "
        "such as a student's student_code.py (its folder is put on sys.path so sibling modules import); "
        "for anything but impl only the subject's course and advised tests run, then the report card",
    )
    parser.addoption(
        "--parts",
        default="",
        metavar="PART[,PART...]",
        help="only the subject tests of these graded parts (see impl/verify.py PARTS)",
    )
    parser.addoption(
        "--test-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="fail a test (setup and call) that runs longer than this, naming the timeout: an endless loop in a "
        "student's file ends in a FAIL row, not a hung run (default: 120 for a foreign file, off for impl; 0: off)",
    )
    parser.addoption(
        "--verify-json",
        default="",
        metavar="PATH",
        help="write one record per subject test (tier, part, outcome, message) here, for `miniplaces verify`",
    )


def pytest_configure(config: pytest.Config) -> None:
    settings.load_profile(hypothesis_profile(config.getoption("--impl"), os.environ))
