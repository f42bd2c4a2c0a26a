"""Sessions: `nox -s verify` (default), `nox -s demo`, `nox -s training`, `nox -s bench`, `nox -s reports`,
`nox -s lint`.

Every session runs in the environment nox itself runs in (the project's .venv, see README): torch is installed once,
never per session. Arguments after `--` reach the underlying command.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nox

# "python" on PATH may be another interpreter: run the one nox itself runs in (.venv's).
PYTHON = sys.executable
HERE = Path(__file__).resolve().parent

nox.options.default_venv_backend = "none"
nox.options.sessions = ["verify"]


@nox.session
def verify(session: nox.Session) -> None:
    """The spec tree against `impl`, or `-- --impl path/to/student_code.py`: that file's subject tests and report card.

    The checkout's rootdir and config are passed explicitly and the --impl path is made absolute (from the folder nox
    was invoked in): otherwise pytest takes its rootdir from the student's path and never loads the spec's conftest.
    """
    args = _absolute_impl(session.posargs, Path(session.invoked_from))
    session.run(PYTHON, "-m", "pytest", f"--rootdir={HERE}", f"--config-file={HERE / 'pyproject.toml'}", *args)


def _absolute_impl(args: list[str], invoked_from: Path) -> list[str]:
    """`--impl X` and `--impl=X` as `--impl=<absolute X>` when X is a file path (a module name stays as it is)."""
    out, i = [], 0
    while i < len(args):
        arg = args[i]
        if arg == "--impl" and i + 1 < len(args):
            arg, i = f"--impl={args[i + 1]}", i + 1
        if arg.startswith("--impl="):
            value = arg.removeprefix("--impl=")
            path = invoked_from / Path(value).expanduser()
            if value.endswith(".py") or path.is_file():
                arg = f"--impl={path.resolve()}"
        out.append(arg)
        i += 1
    return out


@nox.session
def demo(session: nox.Session) -> None:
    """The main job: synthetic data, a short SimpleNet training, evaluation and a report (`-- --data DIR` for real)."""
    session.run(PYTHON, "-m", "impl", "demo", *session.posargs)


@nox.session
def training(session: nox.Session) -> None:
    """The seed's experiments at the reduced scale (real images, CPU, ~20 min), then reports/accuracy.md."""
    tests = ["spec/experiments/test_reproduce.py", "-m", "training and not gpu", "-p", "no:cacheprovider"]
    try:
        session.run(PYTHON, "-m", "pytest", *tests, *session.posargs)
    finally:  # a missed floor still leaves its raw JSON: the table shows it as missed
        session.run(PYTHON, "-m", "impl.accuracy_report")


# One raw file per topic, so a topic can be rerun alone (`nox -s bench -- conv models`) without clobbering the others.
BENCH_TOPICS: dict[str, list[str]] = {
    "conv": ["-m", "bench.conv.run"],
    "models": ["-m", "bench.models.throughput"],
    "data": ["-m", "bench.data.loader"],
    "attention": ["-m", "pytest", "bench/attention", "-m", "bench", "-p", "no:cacheprovider"],
    "attack": ["-m", "pytest", "bench/attack", "-m", "bench", "-p", "no:cacheprovider"],
    "attack-floor": ["-m", "bench.attack.floor"],
    "attack-early-stop": ["-m", "bench.attack.early_stop"],
}


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks on this machine's device (`-- TOPIC...` for some of them), each written to
    reports/raw/<device>-<topic>.json, then every table regenerated (`nox -s reports`)."""
    import torch

    device = torch.device(os.environ.get("BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")).type
    topics = session.posargs or list(BENCH_TOPICS)
    unknown = sorted(set(topics) - set(BENCH_TOPICS))
    if unknown:
        session.error(f"unknown bench topic(s) {unknown}; choose from {sorted(BENCH_TOPICS)}")
    for topic in topics:
        args = BENCH_TOPICS[topic]
        if "pytest" in args:
            # pytest-benchmark skips warm-up by default; the first rounds then carry lazy init and cold caches.
            args = [*args, "--benchmark-warmup=on", "--benchmark-min-rounds=7"]
            args.append(f"--benchmark-json=reports/raw/{device}-{topic}.json")
        session.run(PYTHON, *args)
    session.run(PYTHON, "-m", "bench.tables")


@nox.session
def reports(session: nox.Session) -> None:
    """Regenerate the markdown tables in reports/ from reports/raw/*.json, running nothing (byte-identical): the
    benchmark tables and accuracy.md (verification.md is the mutation run's own output, `nox -s mutants`)."""
    session.run(PYTHON, "-m", "bench.tables")
    session.run(PYTHON, "-m", "impl.accuracy_report")


@nox.session
def gpu(session: nox.Session) -> None:
    """The prepared GPU check (bench/gpu.sh, ≤ 8 min on one H200): `-- OUTDIR`, default reports/raw/gpu-run."""
    out = session.posargs[0] if session.posargs else "reports/raw/gpu-run"
    session.run("bash", "bench/gpu.sh", out, external=True, env={"PYTHON": PYTHON})


@nox.session
def corpus(session: nox.Session) -> None:
    """The report card on every corpus file and mutant (spec/corpus/); the default run checks a subset."""
    session.run(PYTHON, "-m", "pytest", "spec/test_corpus.py", "-m", "corpus or not corpus", *session.posargs)


@nox.session
def mutants(session: nox.Session) -> None:
    """mutmut over impl's course-interface code on a snapshot of HEAD, then reports/verification.md (tools/mutants.py;
    `-- --commit REV`, `-- --max-children N`, `-- --only PATTERN...`, `-- --report-only DIR [DIR ...]`)."""
    session.run(PYTHON, "-m", "tools.mutants", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the whole tree."""
    session.run(PYTHON, "-m", "ruff", "check", ".", *session.posargs)
    session.run(PYTHON, "-m", "ruff", "format", "--check", ".")
