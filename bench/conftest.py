"""Benchmark harness: every test under bench/ is marked `bench`; machine facts go into the pytest-benchmark JSON.

`nox -s bench` runs these pytest-benchmark suites (attention, attack) and the interleaved modules (bench.conv.run,
bench.models.throughput, bench.data.loader, ...) into reports/raw/<device>-<topic>.json; `python -m bench.tables`
(`nox -s reports`) turns reports/raw/*.json into the markdown tables in reports/.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from bench.device import bench_device, device_label


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.bench)


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    device = bench_device()
    machine_info["torch"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["cpu_count"] = os.cpu_count()
    machine_info["platform"] = platform.platform()
    machine_info["device"] = device_label(device)
    machine_info["commit"] = _git_commit()


def _git_commit() -> str:
    """HEAD's short hash, with "+dirty" when the code a benchmark runs (impl/, bench/) differs from it."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", "impl", "bench"], capture_output=True, text=True, check=True
        )
        return out.stdout.strip() + ("+dirty" if status.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@pytest.fixture(scope="session")
def device() -> torch.device:
    """The device every benchmark runs on: CUDA when present (or BENCH_DEVICE=...), else CPU."""
    return bench_device()
