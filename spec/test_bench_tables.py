"""The benchmark reporting is honest and reproducible: the committed tables are exactly what `python -m bench.tables`
makes of the committed raw files (so nobody edited them by hand and `nox -s reports` is byte-identical), and the
memory probes read what a user's process holds. Fast: no benchmark runs here.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bench import device as bench_device
from bench import tables
from bench.device import nvml_used_mib, process_memory_mib
from bench.interleaved import interleave_processes

ROOT = Path(__file__).resolve().parents[1]


def test_committed_reports_are_what_the_generator_makes_of_the_committed_raw_files() -> None:
    texts = tables.render_all(ROOT / "reports" / "raw")
    assert {"speed.md", "memory.md"} <= set(texts), f"generated: {sorted(texts)}"
    stale = [name for name, text in texts.items() if (ROOT / "reports" / name).read_text() != text]
    assert not stale, f"reports differ from `python -m bench.tables` output (rerun `nox -s reports`): {stale}"


def test_generation_is_deterministic_and_reads_nothing_but_raw(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    record = {"median": 0.5, "iqr": 0.1, "rounds": 3}
    for stem, median in (("cpu-models", 0.5), ("cpu-data", 0.25)):
        table = stem.split("-")[1]
        benches = [
            {
                "name": f"{table}[{c}]",
                "group": f"{table}:case",
                "stats": {**record, "median": median * (1 + i)},
                "extra_info": {"table": table, "case": "case", "candidate": c, "baseline": i == 0, "images_per_s": 8},
            }
            for i, c in enumerate(("a", "b"))
        ]
        (raw / f"{stem}.json").write_text(json.dumps({"machine_info": {"device": "X"}, "benchmarks": benches}))
    (raw / "accuracy-run.json").write_text(json.dumps({"experiment": "not a benchmark"}))
    first, second = tables.render_all(raw), tables.render_all(raw)
    assert first == second
    assert sorted(first) == ["data.md", "memory.md", "models.md", "speed.md"]
    models = first["models.md"]
    assert "| b " in models.replace("  ", " ") and "2 " in models, models  # b's time ratio to baseline a is 2
    assert "loader b" in first["speed.md"], first["speed.md"]


def test_speed_table_puts_the_seeds_adversarial_training_ratio_beside_ours(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    steps = {"natural step": (0.1, {}), "pgd-3 train step": (0.4, {"ratio_vs_natural": 4.0}),
             "fgsm-rs train step": (0.2, {"ratio_vs_natural": 2.0}), "forward": (0.05, {})}  # fmt: skip
    benches = [
        {"name": c, "group": "g", "stats": {"median": m, "iqr": 0.0, "rounds": 3},
         "extra_info": {"table": "attack-floor", "case": "toy", "candidate": c, "baseline": c == "forward", **extra}}
        for c, (m, extra) in steps.items()
    ]  # fmt: skip
    (raw / "cpu-attack-floor.json").write_text(json.dumps({"machine_info": {"device": "X"}, "benchmarks": benches}))
    speed = tables.render_all(raw)["speed.md"]
    section = speed.split("## Adversarial training step against natural (cpu-attack-floor)")[1]
    rows = {line.split("|")[1].strip(): line for line in section.splitlines() if line.startswith("| ")}
    assert "forward" not in rows and {"natural step", "pgd-3 train step", "fgsm-rs train step"} <= rows.keys(), rows
    cells = [c.strip() for c in rows["pgd-3 train step"].split("|")]
    assert "4" in cells and "3.2" in cells, rows["pgd-3 train step"]
    assert "3.2" not in rows["fgsm-rs train step"], "the seed has no FGSM-RS figure"


def test_nvml_reading_is_none_without_a_driver_and_mib_with_one() -> None:
    class NVMLError(Exception):
        pass

    def fail() -> None:
        raise NVMLError("no driver")

    absent = SimpleNamespace(NVMLError=NVMLError, nvmlInit=fail)
    assert nvml_used_mib(0, nvml=absent) is None
    present = SimpleNamespace(
        NVMLError=NVMLError,
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(used=3 * 2**20),
    )
    assert nvml_used_mib(0, nvml=present) == 3.0


@pytest.mark.slow
def test_process_memory_probe_sees_what_the_steps_hold_and_their_peak() -> None:
    """A step that keeps one new 64 MiB tensor and briefly holds two: peak >= 128 MiB above setup, 64 still held.
    The probe runs under the default allocator (the environment is the caller's, nothing added)."""
    mem = process_memory_mib("import torch\nkeep = []", "keep[:] = [torch.ones(2**24) + 0]", steps=2)
    assert mem["step_peak_mib"] >= 127, mem
    assert mem["rss_after_mib"] - mem["rss_setup_mib"] >= 63, mem
    assert mem["rss_peak_mib"] >= mem["rss_after_mib"] >= mem["rss_setup_mib"] > 0, mem


def test_cpu_step_memory_reports_the_probe_with_the_median_step_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three fresh-process probes; the reported columns are all one probe's, the one whose step peak is the
    median (not the first, not the max, not a mix of probes)."""
    peaks = iter([300.0, 100.0, 200.0])
    calls: list[str] = []

    def probe(setup: str, step: str, steps: int, threads: int) -> dict[str, float]:
        calls.append(setup)
        peak = next(peaks)
        return {"rss_setup_mib": 1.0, "rss_peak_mib": peak + 1, "rss_after_mib": peak / 2, "step_peak_mib": peak}

    monkeypatch.setattr(bench_device, "process_memory_mib", probe)
    got = bench_device.step_memory_mib("step = print", lambda: print, torch.device("cpu"), steps=2)
    assert calls == ["step = print"] * 3, calls
    assert got == {
        "rss_setup_mib": 1.0,
        "rss_peak_mib": 201.0,
        "rss_after_mib": 100.0,
        "step_peak_mib": 200.0,
        "memory_probes": 3,
    }, got


def test_process_interleaving_runs_each_candidate_alone_in_its_own_process(tmp_path: Path) -> None:
    """Every candidate's `step` runs in a process of its own (a module global set by one is not seen by another),
    one at a time (no two steps' wall intervals overlap), `rounds` times after one warm-up, and the seconds it
    reports are that step's own (a 30 ms sleep reads 30-300 ms)."""
    log = tmp_path / "intervals"
    setup = """
import os, time
count = 0
def step():
    global count
    t0, count = time.time(), count + 1
    time.sleep({sleep})
    with open({log!r}, "a") as f:
        f.write(f"{{os.getpid()}} {{count}} {{t0}} {{time.time()}}\\n")
"""
    setups = {"a": setup.format(sleep=0.03, log=str(log)), "b": setup.format(sleep=0.0, log=str(log))}
    times = interleave_processes(setups, 3, torch.device("cpu"))
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}, times
    assert all(0.03 <= t < 0.3 for t in times["a"]), times
    assert all(t < 0.03 for t in times["b"]), times
    rows = [line.split() for line in log.read_text().splitlines()]
    pids = {pid for pid, *_ in rows}
    assert len(pids) == 2, f"two candidates ran in {len(pids)} processes"
    assert sorted(int(n) for _, n, *_ in rows) == [1, 1, 2, 2, 3, 3, 4, 4], "each process counts only its own steps"
    spans = sorted((float(t0), float(t1)) for *_, t0, t1 in rows)
    overlaps = [(a, b) for a, b in zip(spans, spans[1:], strict=False) if b[0] < a[1]]
    assert not overlaps, f"steps overlapped: {overlaps}"


def test_a_failing_benchmark_worker_is_named_with_its_error() -> None:
    """A candidate whose setup raises is reported by name with the end of its stderr, not as a hang or a bare
    ValueError from parsing an empty line, and not as a BrokenPipeError when it died while an earlier, slower
    worker was still setting up (the slow setup makes that the path taken)."""
    setups = {
        "fine": "import time\ntime.sleep(3)\ndef step(): pass",
        "broken": "raise ImportError('no module named nowhere')",
    }
    with pytest.raises(RuntimeError, match=r"(?s)worker 'broken' exited with status 1.*no module named nowhere"):
        interleave_processes(setups, 1, torch.device("cpu"))


@pytest.mark.gpu
def test_cuda_memory_columns_see_a_64_mib_tensor() -> None:
    import torch

    from bench.device import cuda_memory_mib

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    device = torch.device("cuda")
    held: list[torch.Tensor] = []
    mem = cuda_memory_mib(lambda: held.append(torch.ones(2**24, device=device)), device)
    assert mem["cuda_max_allocated_mib"] >= 64, mem
    assert mem["cuda_max_reserved_mib"] >= mem["cuda_max_allocated_mib"], mem
    assert mem["nvml_used_mib"] is None or mem["nvml_used_mib"] >= mem["cuda_max_reserved_mib"], mem


def test_a_raw_file_commit_says_dirty_when_the_benchmarked_code_is_uncommitted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit a raw file names is only provenance if uncommitted changes to impl/ or bench/ show in it;
    an edited report or note elsewhere does not."""
    import subprocess

    from bench.conftest import _git_commit

    def git(*args: str) -> None:
        subprocess.run(
            ["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=tmp_path, check=True, capture_output=True
        )

    (tmp_path / "impl").mkdir()
    (tmp_path / "impl" / "conv.py").write_text("x = 1\n")
    (tmp_path / "NOTES.md").write_text("a\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "c")
    monkeypatch.chdir(tmp_path)
    clean = _git_commit()
    assert len(clean) >= 7 and "+" not in clean, clean
    (tmp_path / "NOTES.md").write_text("b\n")
    assert _git_commit() == clean
    (tmp_path / "impl" / "conv.py").write_text("x = 2\n")
    assert _git_commit() == clean + "+dirty"
