"""Side-by-side timing: every candidate once per round, in a fresh random order, medians of the rounds.

On a shared machine, load from other processes then spreads over all candidates instead of landing on whichever ran
during a busy spell, so ratios between candidates hold where absolute times do not. Results are written as
pytest-benchmark-shaped JSON (`benchmarks[].stats.median`, `extra_info.table/case/candidate/baseline`), the format
the table script of bench/ reads from reports/raw/.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from bench.conftest import _git_commit
from bench.device import device_label

METHOD = "one interleaved loop, random order per round, median of rounds"
PROCESS_METHOD = (
    "one interleaved loop over worker processes, one per candidate, random order per round, median of rounds"
)


def interleave(
    fns: Mapping[str, Callable[[], object]],
    rounds: int,
    device: torch.device,
    seed: int = 0,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds per round of every candidate (after one warm-up call each); CUDA work is synchronized per call.

    `clock` is wall time by default; `cpu_clock()` gives the CPU time of this thread where that measures the work.
    """
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    for fn in fns.values():
        fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in fns}
    order, rng = list(fns), random.Random(seed)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            t0 = clock()
            fns[name]()
            sync()
            times[name].append(clock() - t0)
    return times


_WORKER = """
import sys, time
import torch
{threads}
{setup}
sync = torch.cuda.synchronize if {cuda} else (lambda: None)
for _ in sys.stdin:
    t0 = time.perf_counter()
    step()
    sync()
    print(time.perf_counter() - t0, flush=True)
"""


def interleave_processes(
    setups: Mapping[str, str], rounds: int, device: torch.device, seed: int = 0, threads: int | None = None
) -> dict[str, list[float]]:
    """Like `interleave`, but every candidate lives in a Python process of its own, as a user's run does: `setups`
    maps each name to code that defines `step`. One process runs at a time (the others wait on their stdin), in a
    fresh random order per round, after one warm-up step each; each step's wall time is measured inside its process.

    In one shared process a candidate's allocations change another's: glibc's heap thresholds move with the sizes
    freed, so a native SimpleNet step page-faulted 49-103k times per step beside the custom conv's and 126k alone.
    """
    script = {
        name: _WORKER.format(
            threads=f"torch.set_num_threads({threads})" if threads else "",
            setup=textwrap.dedent(setup).strip(),
            cuda=device.type == "cuda",
        )
        for name, setup in setups.items()
    }
    with tempfile.TemporaryDirectory() as tmp:
        logs = {name: open(Path(tmp) / f"{i}.err", "w+") for i, name in enumerate(setups)}  # noqa: SIM115
        workers = {
            name: subprocess.Popen(
                [sys.executable, "-c", code],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=logs[name],
                text=True,
            )
            for name, code in script.items()
        }
        try:
            for name in workers:
                _ask(name, workers[name], logs[name])
            times: dict[str, list[float]] = {name: [] for name in workers}
            order, rng = list(workers), random.Random(seed)
            for _ in range(rounds):
                rng.shuffle(order)
                for name in order:
                    times[name].append(_ask(name, workers[name], logs[name]))
            return times
        finally:
            for proc in workers.values():
                with contextlib.suppress(BrokenPipeError):  # a worker that died keeps our unsent "\n" buffered
                    proc.stdin.close()
                proc.wait()
            for log in logs.values():
                log.close()


def _ask(name: str, proc: subprocess.Popen, log: Any) -> float:
    """One step of worker `name`: its seconds, or a RuntimeError carrying the end of its stderr if it died."""
    try:
        proc.stdin.write("\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
    except BrokenPipeError:
        line = ""
    if not line:
        proc.wait()
        log.seek(0)
        raise RuntimeError(f"benchmark worker {name!r} exited with status {proc.returncode}:\n{log.read()[-2000:]}")
    return float(line)


def cpu_clock(device: torch.device) -> tuple[Callable[[], float], str]:
    """(clock, its name): this thread's CPU time when the work runs on it alone (CPU, one torch thread), which a
    loaded shared machine cannot inflate by descheduling us; wall time otherwise."""
    if device.type == "cpu" and torch.get_num_threads() == 1:
        return time.thread_time, "thread CPU time (one torch thread)"
    return time.perf_counter, "wall time"


def median_ms(times: Mapping[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def entry(table: str, case: str, candidate: str, seconds: list[float], baseline: bool, **info: object) -> dict:
    """One benchmark record; `info` entries that are None are left out."""
    iqr = 0.0
    if len(seconds) >= 2:
        q = statistics.quantiles(seconds, n=4)
        iqr = q[2] - q[0]
    extra = {"table": table, "case": case, "candidate": candidate, "baseline": baseline}
    extra.update({k: v for k, v in info.items() if v is not None})
    stats = {"median": statistics.median(seconds), "iqr": iqr, "rounds": len(seconds), "data": list(seconds)}
    return {"name": f"{table}[{candidate}]", "group": f"{table}:{case}", "stats": stats, "extra_info": extra}


def raw_file(device: torch.device, benchmarks: list[dict], **machine: object) -> dict:
    """The JSON document: machine facts (device, torch, threads, commit, method) and the records."""
    info = {
        "device": device_label(device),
        "torch": torch.__version__,
        "python_version": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "commit": _git_commit(),
        "method": METHOD,
        **machine,
    }
    now = datetime.datetime.now(datetime.UTC).isoformat()
    return {"machine_info": info, "datetime": now, "benchmarks": benchmarks}


def write(raw: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(raw, indent=1) + "\n")


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def bench_parser(doc: str, device: torch.device, table: str, env: str, rounds: int) -> argparse.ArgumentParser:
    """The flags every interleaved benchmark shares: --out (reports/raw/<device>-<table>.json), --rounds and
    --threads, defaulting to $<env>_ROUNDS and $<env>_THREADS; the caller adds its own, then `parse_bench_args`."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(f"reports/raw/{device.type}-{table}.json"))
    parser.add_argument("--rounds", type=int, default=env_int(f"{env}_ROUNDS", rounds), help="interleaved rounds")
    parser.add_argument(
        "--threads",
        type=int,
        default=env_int(f"{env}_THREADS", 1 if device.type == "cpu" else 0),
        help="torch threads; 0: torch's default. On CPU 1, so the clock is this thread's CPU time",
    )
    return parser


def parse_bench_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse, then apply --threads (before any work, so `cpu_clock` sees it)."""
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args
