"""Sessions: `nox -s verify` (default), `nox -s demo`, `nox -s bench`, `nox -s lint`.

Every session runs in the environment nox itself runs in (the project's .venv, see README): torch is installed once,
never per session. Arguments after `--` reach the underlying command.
"""

from __future__ import annotations

import sys

import nox

# "python" on PATH may be another interpreter: run the one nox itself runs in (.venv's).
PYTHON = sys.executable

nox.options.default_venv_backend = "none"
nox.options.sessions = ["verify"]


@nox.session
def verify(session: nox.Session) -> None:
    """The spec tree against `impl` (or `-- --impl path/to/student_code.py`)."""
    session.run(PYTHON, "-m", "pytest", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """The main job: synthetic data, a short SimpleNet training, evaluation and a report (`-- --data DIR` for real)."""
    session.run(PYTHON, "-m", "impl", "demo", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks on this machine's device, written to reports/raw/<device>.json, then the markdown tables."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    session.run(
        PYTHON,
        "-m",
        "pytest",
        "bench",
        "-m",
        "bench",
        # pytest-benchmark skips warm-up by default; the first rounds of a candidate then carry lazy init and cold
        # caches, which skewed side-by-side ratios by up to 1.4x here.
        "--benchmark-warmup=on",
        "--benchmark-min-rounds=7",
        f"--benchmark-json=reports/raw/{device}.json",
        *session.posargs,
    )
    session.run(PYTHON, "-m", "bench.report")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the whole tree."""
    session.run(PYTHON, "-m", "ruff", "check", ".", *session.posargs)
    session.run(PYTHON, "-m", "ruff", "format", "--check", ".")
