"""Verify a student's `student_code.py` against the spec and grade it: the report card. Spec: spec/test_verify.py.

    miniplaces verify PATH [--parts conv_forward pgd ...] [--gradescope results.json] [--junit-xml F]

`verify` runs the spec tree of this checkout in a fresh interpreter (`python -m pytest --impl=PATH`: no module of one
student file leaks into the next) and reads back one record per test of the subject, written by the spec's conftest.
Only tests that use the `subject` fixture count; for a foreign file `course` failures fail, `advised` failures warn and
`extension` tests do not run (spec/CONTRACT.md). Hypothesis runs derandomized with no example database, so a file gets
the same verdict on every run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from impl.errors import UsageError

REPO = Path(__file__).resolve().parent.parent

PARTS: tuple[str, ...] = (
    "conv_forward",
    "conv_backward",
    "simplenet",
    "attention",
    "transformer_block",
    "simplevit",
    "pgd",
    "bonus",
)
# The readme's points (CS 771 Fall 2025 HW2, §3): §3.1.1 "Understand Convolutions (2 Pts)" is split evenly between
# the forward and the backward pass; §3.1.2 "A Simple Convolutional Network (1 Pt)" and "Train with Your Own
# Convolutions (1 Pt)" both rest on SimpleNet running with CustomConv2d; §3.2.1 Self-Attention 2, Transformer Block 1;
# §3.2.2 SimpleViT 1; §3.3 Adversarial Samples 2; Adversarial Training is the +2 bonus. This is miniplaces-lab's
# allocation of the course's points to the parts code can check: 10 of the course's 12, the rest ("Design Your Own
# Network", "Fine-Tune ResNet18") is graded from the writeup.
POINTS_NOTE = "miniplaces-lab's allocation of the course's points to the parts it tests; the writeup is not graded"
POINTS: Mapping[str, float] = {
    "conv_forward": 1.0,
    "conv_backward": 1.0,
    "simplenet": 2.0,
    "attention": 2.0,
    "transformer_block": 1.0,
    "simplevit": 1.0,
    "pgd": 2.0,
    "bonus": 2.0,
}
STATUSES = ("PASS", "FAIL", "MISSING", "WARN")
OUTCOMES = ("passed", "failed", "warned", "skipped")  # "warned": an advised test a foreign file failed
KNOWN_MISTAKE = "matches the known mistake"  # what spec/diagnose.py writes when a result matches a wrong variant


@dataclass(frozen=True)
class Row:
    part: str
    status: str  # "PASS" | "FAIL" | "MISSING" | "WARN"
    points: float  # earned: the part's points on PASS or WARN, else 0
    diagnosis: str  # the first failure's one-line diagnosis ("" on PASS)
    max_points: float = 0.0
    counts: Mapping[str, int] = field(default_factory=dict)  # outcome -> number of the part's tests


@dataclass(frozen=True)
class ReportCard:
    rows: tuple[Row, ...]
    exit_code: int  # non-zero exactly when a `course` test failed, every part is MISSING or the file cannot load
    subject: str = ""
    error: str = ""  # why the file could not be imported (then every row is FAIL with this diagnosis)

    def status(self, part: str) -> str:
        return self.row(part).status

    def row(self, part: str) -> Row:
        for row in self.rows:
            if row.part == part:
                return row
        raise KeyError(f"no part {part!r} on the card; parts: {', '.join(r.part for r in self.rows)}")

    @property
    def score(self) -> float:
        return sum(r.points for r in self.rows)

    @property
    def max_score(self) -> float:
        return sum(r.max_points for r in self.rows)


class VerifyError(RuntimeError):
    """The spec run produced no results (pytest itself failed); the message carries pytest's last lines."""


def build_card(results: Mapping[str, Any], parts: Sequence[str] | None = None) -> ReportCard:
    """The card from the records the spec's conftest writes: {"subject", "error", "tests": [{nodeid, tier, part,
    outcome, message}]}."""
    parts = tuple(p for p in PARTS if not parts or p in parts)
    error = results.get("error") or ""
    if error:
        rows = tuple(Row(p, "FAIL", 0.0, error, POINTS[p]) for p in parts)
        return ReportCard(rows, 1, results.get("subject", ""), error)
    tests = results.get("tests", [])
    rows = tuple(_row(part, [t for t in tests if t["part"] == part]) for part in parts)
    failed = any(t["outcome"] == "failed" for t in tests)
    nothing_graded = all(r.status == "MISSING" for r in rows)  # e.g. the unedited starter: not a pass
    return ReportCard(rows, int(failed or nothing_graded), results.get("subject", ""))


def _row(part: str, tests: list[Mapping[str, Any]]) -> Row:
    counts = {o: sum(t["outcome"] == o for t in tests) for o in OUTCOMES}
    # The first of each outcome, preferring a failure whose message names the known mistake it matches.
    named = sorted(tests, key=lambda t: KNOWN_MISTAKE not in t["message"])
    first = {o: next((t for t in named if t["outcome"] == o), None) for o in OUTCOMES}
    if first["failed"]:
        status, why = "FAIL", first["failed"]
    elif first["warned"]:
        status, why = "WARN", first["warned"]
    elif first["passed"]:
        status, why = "PASS", None
    else:
        status, why = "MISSING", first["skipped"]
    diagnosis = "" if why is None else f"{_short_name(why['nodeid'])}: {why['message']}"
    points = POINTS[part] if status in ("PASS", "WARN") else 0.0
    return Row(part, status, points, diagnosis, POINTS[part], counts)


def _short_name(nodeid: str) -> str:
    return nodeid.rsplit("::", 1)[-1]


def render(card: ReportCard) -> str:
    """The card as text: one row per part, then the totals."""
    title = f"report card: {card.subject}" if card.subject else "report card"
    if card.error:
        return f"{title}\n  {card.error}"
    lines = [title, f"  {'part':<18} {'status':<8} {'points':>7}  diagnosis"]
    for r in card.rows:
        lines.append(f"  {r.part:<18} {r.status:<8} {_pts(r.points):>3}/{_pts(r.max_points):<3}  {r.diagnosis}")
    total = {o: sum(r.counts.get(o, 0) for r in card.rows) for o in OUTCOMES}
    course = [r for r in card.rows if r.part != "bonus"]
    score = f"score {_pts(sum(r.points for r in course))}/{_pts(sum(r.max_points for r in course))}"
    if len(course) < len(card.rows):
        bonus = card.row("bonus")
        score += f" + bonus {_pts(bonus.points)}/{_pts(bonus.max_points)}"
    score += f" ({POINTS_NOTE})"
    lines.append(
        f"  {score} · {sum(total.values())} tests of the subject: "
        + ", ".join(f"{total[o]} {o}" for o in OUTCOMES)
        + f" · exit {card.exit_code}"
    )
    return "\n".join(lines)


def _pts(x: float) -> str:
    return f"{x:g}"


def gradescope(card: ReportCard) -> dict[str, Any]:
    """The Gradescope autograder results format: one test per part, plus the total score."""
    tests = [
        {
            "name": f"{r.part} ({r.status})",
            "score": r.points,
            "max_score": r.max_points,
            "output": r.diagnosis or "all checks passed",
        }
        for r in card.rows
    ]
    out: dict[str, Any] = {"score": card.score, "tests": tests, "output": f"points: {POINTS_NOTE}"}
    if card.error:
        out["output"] = f"{card.error}\n{out['output']}"
    return out


def gradescope_failure(message: str) -> dict[str, Any]:
    """The Gradescope results of a run that produced no card (the spec run hung or crashed): score 0 and why."""
    return {"score": 0.0, "tests": [], "output": message}


RUN_TIMEOUT_S = 900.0  # the whole spec run of one file; each test also stops after spec/conftest.py's timeout


def verify(
    path: str | os.PathLike[str],
    *,
    parts: Sequence[str] | None = None,
    pytest_args: Sequence[str] = (),
    timeout_s: float = RUN_TIMEOUT_S,
) -> ReportCard:
    """Run the spec against `path` (a student_code.py), only the tests of `parts` when given; same verdict every run.
    Raises VerifyError when the run writes no results, or runs past `timeout_s` (e.g. a loop at import time)."""
    unknown = [p for p in parts or () if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown part(s) {unknown}; parts are {', '.join(PARTS)}")
    target = Path(path).expanduser().resolve()
    if not target.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with tempfile.TemporaryDirectory(prefix="miniplaces-verify-") as tmp:
        results_file = Path(tmp) / "results.json"
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            str(REPO / "spec"),
            f"--rootdir={REPO}",
            f"--config-file={REPO / 'pyproject.toml'}",
            f"--impl={target}",
            f"--verify-json={results_file}",
            "-p",
            "no:cacheprovider",
            "-q",
            "--no-header",
            *([f"--parts={','.join(parts)}"] if parts else []),
            *pytest_args,
        ]
        try:
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            tail = "\n".join(_text(exc.stdout).strip().splitlines()[-15:])
            raise VerifyError(f"the spec run did not finish within the {timeout_s:g} s timeout:\n{tail}") from None
        if not results_file.is_file():
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise VerifyError(f"the spec run wrote no results (pytest exit {proc.returncode}):\n{tail}")
        results = json.loads(results_file.read_text())
    return build_card(results, parts)


def _text(out: str | bytes | None) -> str:
    return out.decode(errors="replace") if isinstance(out, bytes) else out or ""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """`miniplaces verify`: registered by impl/cli.py's build_parser."""
    p = subparsers.add_parser(
        "verify",
        help="check a student_code.py against the spec and print its report card",
        description="Run the spec against a student_code.py and print the report card: one row per graded part "
        "(PASS/FAIL/MISSING/WARN, the course's points, the first failure's diagnosis). Exits 1 when a course test "
        "failed, nothing was graded (every part MISSING) or the file cannot be imported; each test stops after "
        "120 s, the run after 900 s.",
    )
    p.add_argument("path", metavar="PATH", help="the student_code.py to check (its folder goes on sys.path)")
    p.add_argument("--parts", nargs="+", choices=PARTS, metavar="PART", help=f"only these parts: {', '.join(PARTS)}")
    p.add_argument("--gradescope", metavar="JSON", type=Path, help="also write Gradescope's results.json here")
    p.add_argument("--junit-xml", metavar="XML", type=Path, help="also write pytest's JUnit XML here")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    extra = [f"--junit-xml={args.junit_xml.resolve()}"] if args.junit_xml else []
    try:
        card = verify(args.path, parts=args.parts, pytest_args=extra)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from exc
    except VerifyError as exc:
        print(exc, file=sys.stderr)
        _write_gradescope(args.gradescope, gradescope_failure(str(exc)))
        return 1
    print(render(card))
    _write_gradescope(args.gradescope, gradescope(card))
    return card.exit_code


def _write_gradescope(path: Path | None, results: Mapping[str, Any]) -> None:
    if path is not None:
        path.write_text(json.dumps(results, indent=2) + "\n")
