"""Fixtures shared by the whole spec (the implementation under test, numeric settings) and the contract policy.

The policy (spec/CONTRACT.md): every test that uses `subject` declares a tier and belongs to a graded part
(spec/contract.py), checked at collection. For `impl` every tier is required. For a foreign file (`--impl PATH`) only
the subject's tests are collected, `extension` tests are deselected, an `advised` failure is reported as xfailed (a
warning with its reason), and the run ends with the report card; the exit status is non-zero exactly when a `course`
test failed, nothing was graded (every part MISSING), or the file cannot be imported (then the card is that one line,
not one error per test). Each test of a foreign file fails after --test-timeout seconds (default 120), naming it.
"""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from impl.verify import build_card, render
from spec import diagnose
from spec.contract import FILE_PARTS, Contract, contract_of, uses_subject
from spec.subject import SubjectLoadError, load_subject

SPEC = Path(__file__).parent
_SUBJECT = pytest.StashKey[ModuleType]()
_ERROR = pytest.StashKey[str]()
_RECORDS = pytest.StashKey[dict[str, dict[str, Any]]]()
_CONTRACTS = pytest.StashKey[dict[str, Contract]]()
_SUBJECT_PARAMETER = re.compile(r"def \w+\([^)]*\bsubject\b")  # a test or fixture that takes the subject
FOREIGN_TEST_TIMEOUT_S = 120.0  # per test of a foreign file; the slowest passes in a few seconds


def _foreign(config: pytest.Config) -> bool:
    return config.getoption("--impl") != "impl"


def _timeout_s(config: pytest.Config) -> float:
    chosen = config.getoption("--test-timeout")
    if chosen is None:
        return FOREIGN_TEST_TIMEOUT_S if _foreign(config) else 0.0
    return max(chosen, 0.0)


class TestTimeout(BaseException):
    """A test ran past --test-timeout. A BaseException, so that neither hypothesis (which would replay the example,
    with no alarm left) nor the subject's `except Exception` swallows it."""

    __test__ = False  # not a test class


@contextmanager
def _alarm(seconds: float, what: str) -> Iterator[None]:
    """Raise TestTimeout in the main thread after `seconds` (SIGALRM; nothing where there is none, e.g. Windows)."""
    if seconds <= 0 or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise TestTimeout(f"{what} ran past the {seconds:g} s timeout (an endless loop, or far too slow)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    with _alarm(_timeout_s(item.config), "the setup"):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with _alarm(_timeout_s(item.config), "the test"):
        return (yield)


def _parts(config: pytest.Config) -> set[str]:
    return {p for p in config.getoption("--parts").split(",") if p}


@pytest.fixture(scope="session")
def subject(request: pytest.FixtureRequest) -> ModuleType:
    """The implementation under test, chosen with --impl (default: the `impl` package)."""
    config = request.config
    if _SUBJECT not in config.stash:
        try:
            config.stash[_SUBJECT] = load_subject(config.getoption("--impl"))
        except SubjectLoadError as exc:
            pytest.fail(str(exc), pytrace=False)
    return config.stash[_SUBJECT]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoded-image caches (impl.data.cache) go to a temporary folder unless a test sets its own: a test never
    writes into the user's ~/.cache (a DeviceLoader test did, before this)."""
    monkeypatch.setenv("MINIPLACES_CACHE", str(tmp_path_factory.mktemp("miniplaces-cache")))


@pytest.fixture(autouse=True)
def _deterministic_numerics() -> None:
    """Seed every test and keep TF32 off so float32 comparisons against oracles are meaningful on CUDA."""
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """A foreign run (or a --parts run) collects only the test files that can hold the subject tests it needs, and
    skips the other folders whole: our own code's tests and their conftests never load for a student's file."""
    foreign, parts = _foreign(config), _parts(config)
    if not (foreign or parts) or collection_path == SPEC or not collection_path.is_relative_to(SPEC):
        return None
    if collection_path.is_dir():
        return not any(_holds(f, parts) for f in collection_path.rglob("test_*.py")) or None
    if collection_path.suffix == ".py" and collection_path.name.startswith("test_"):
        return not _holds(collection_path, parts) or None
    return None


def _holds(test_file: Path, parts: set[str]) -> bool:
    """Whether `test_file` may hold subject tests of `parts` (all parts when empty): a function takes `subject`, and its
    file part (spec/contract.py) or one of its part markers is among them."""
    text = test_file.read_text(encoding="utf-8", errors="replace")
    if not _SUBJECT_PARAMETER.search(text):
        return False
    if not parts:
        return True
    default = FILE_PARTS.get(test_file.relative_to(SPEC).as_posix())
    return default in parts or any(f'part("{p}")' in text for p in parts)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    contracts: dict[str, Contract] = {}
    problems: list[str] = []
    for item in items:
        if uses_subject(item):
            found = contract_of(item, str(SPEC))
            if isinstance(found, str):
                problems.append(found)
            else:
                contracts[item.nodeid] = found
    if problems:
        raise pytest.UsageError("the spec's contract is incomplete:\n  " + "\n  ".join(problems))
    parts, foreign = _parts(config), _foreign(config)

    def keep(item: pytest.Item) -> bool:
        c = contracts.get(item.nodeid)
        if c is None:
            return not (foreign or parts)  # not a subject test: ours only
        return not (foreign and c.tier == "extension") and (not parts or c.part in parts)

    kept = [i for i in items if keep(i)]
    dropped = [i for i in items if not keep(i)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    if foreign and kept:
        try:
            config.stash[_SUBJECT] = load_subject(config.getoption("--impl"))
        except SubjectLoadError as exc:  # one line on the card, not one error per test
            config.stash[_ERROR] = str(exc)
            config.hook.pytest_deselected(items=kept)
            kept = []
    items[:] = kept
    config.stash[_CONTRACTS] = {i.nodeid: contracts[i.nodeid] for i in kept if i.nodeid in contracts}
    config.stash[_RECORDS] = {}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    contract = item.config.stash.get(_CONTRACTS, {}).get(item.nodeid)
    if contract is None:
        return report
    if report.passed:
        if report.when == "call":
            _record(item, contract, "passed", "")
    elif call.excinfo is None:
        pass
    elif report.skipped:
        _record(item, contract, "skipped", _message(call.excinfo.value))
    elif contract.tier == "advised" and _foreign(item.config):  # a warning with its reason, not a failure
        message = _message(call.excinfo.value)
        report.outcome = "skipped"
        report.wasxfail = f"advised ({contract.reason}): {message}" if contract.reason else f"advised: {message}"
        _record(item, contract, "warned", f"{message} [advised: {contract.reason}]" if contract.reason else message)
    else:
        _record(item, contract, "failed", _message(call.excinfo.value))
    return report


def _record(item: pytest.Item, contract: Contract, outcome: str, message: str) -> None:
    records = item.config.stash[_RECORDS]
    if records.get(item.nodeid, {}).get("outcome") in ("failed", "warned"):
        return  # the first failure (setup or call) is the one that counts
    records[item.nodeid] = {
        "nodeid": item.nodeid,
        "tier": contract.tier,
        "part": contract.part,
        "outcome": outcome,
        "message": message,
    }


def _message(exc: BaseException) -> str:
    """The first line of a failure's message (a hypothesis group: of its first failure), at most 300 characters."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    msg = getattr(exc, "msg", None) if isinstance(exc, pytest.skip.Exception | pytest.fail.Exception) else None
    text = (msg or str(exc)).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    if not isinstance(exc, AssertionError | pytest.skip.Exception | pytest.fail.Exception):
        first = f"{type(exc).__name__}: {first}"
        why = diagnose.hint(exc)
        first = f"{first[:200]} — {why}" if why else first
    return first if len(first) <= 300 else first[:297] + "..."


def _results(config: pytest.Config) -> dict[str, Any]:
    return {
        "subject": config.getoption("--impl"),
        "error": config.stash.get(_ERROR, ""),
        "tests": list(config.stash.get(_RECORDS, {}).values()),
    }


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    passing = (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED)
    # The card's verdict: a file that could not be imported, or of which nothing was graded, does not pass.
    if _foreign(config) and _RECORDS in config.stash and session.exitstatus in passing:
        card = build_card(_results(config), _parts(config) or None)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED if card.exit_code else session.exitstatus
    out = config.getoption("--verify-json")
    if out:
        Path(out).write_text(json.dumps(_results(config), indent=1) + "\n")


def pytest_unconfigure(config: pytest.Config) -> None:
    """A foreign run ends with the report card, after pytest's own summary."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if not _foreign(config) or _RECORDS not in config.stash or reporter is None:
        return
    parts = _parts(config)
    card = build_card(_results(config), parts or None)
    reporter.write_sep("=", "report card")
    for line in render(card).splitlines():
        reporter.write_line(line)
