"""Device choice, timing and memory helpers shared by the benchmarks."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import torch


def bench_device() -> torch.device:
    """CUDA when available, unless BENCH_DEVICE names another device."""
    name = os.environ.get("BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def device_label(device: torch.device) -> str:
    """A human name for reports: the GPU model, or the CPU model and thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu} ({torch.get_num_threads()} threads)"


def synchronized(fn: Callable[[], object], device: torch.device) -> Callable[[], object]:
    """Wrap `fn` so that a timing of it includes the GPU work it queued (pytest-benchmark does not synchronize)."""
    if device.type != "cuda":
        return fn

    def run() -> object:
        out = fn()
        torch.cuda.synchronize(device)
        return out

    return run


def cuda_memory_mib(fn: Callable[[], object], device: torch.device) -> dict[str, float | None]:
    """Three views of GPU memory while `fn` runs once, each its own column: torch's peak allocated and peak reserved
    (its caching allocator's hold) above what was allocated before, and the whole device's usage read through NVML
    afterwards (what nvidia-smi shows: every context, cache and process; None without NVML)."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return {
        "cuda_max_allocated_mib": (torch.cuda.max_memory_allocated(device) - before) / 2**20,
        "cuda_max_reserved_mib": torch.cuda.max_memory_reserved(device) / 2**20,
        "nvml_used_mib": nvml_used_mib(device.index if device.index is not None else torch.cuda.current_device()),
    }


def nvml_used_mib(index: int = 0, nvml: Any = None) -> float | None:
    """Device memory in use (MiB) as NVML reports it, or None where NVML has no driver or no such device."""
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError:
            return None
    try:
        nvml.nvmlInit()
    except nvml.NVMLError:
        return None
    try:
        return nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(index)).used / 2**20
    except nvml.NVMLError:
        return None
    finally:
        nvml.nvmlShutdown()


_PROBE = """
import torch
{threads}
def _kib(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(key))
{setup}
import gc; gc.collect()
_setup = _kib("VmRSS:")
for _ in range({steps}):
    {step}
print(_setup / 1024, _kib("VmHWM:") / 1024, _kib("VmRSS:") / 1024)
"""


def process_memory_mib(setup: str, step: str, steps: int = 5, threads: int | None = None) -> dict[str, float]:
    """Memory as `top` shows it for a user's process that runs `setup` then `step` (one line) `steps` times.

    A fresh Python process per case, under the default allocator and environment (nothing a user's process would
    not have), read from Linux's /proc/self/status: `rss_setup_mib` after imports and setup, `rss_peak_mib` the
    process's high-water mark (VmHWM), `rss_after_mib` what it still holds after the steps, and `step_peak_mib`
    = peak - setup, what the steps added at their worst (every step counts, the first included).
    """
    script = _PROBE.format(
        setup=textwrap.dedent(setup).strip(),
        step=step.strip(),
        steps=steps,
        threads=f"torch.set_num_threads({threads})" if threads else "",
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"memory probe failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
    setup_mib, peak_mib, after_mib = map(float, out.stdout.strip().splitlines()[-1].split())
    return {
        "rss_setup_mib": setup_mib,
        "rss_peak_mib": peak_mib,
        "rss_after_mib": after_mib,
        "step_peak_mib": peak_mib - setup_mib,
    }


def step_memory_mib(
    setup: str, make_step: Callable[[], Callable[[], object]], device: torch.device, steps: int, probes: int = 3
) -> dict[str, float | None]:
    """The memory columns of `steps` training steps. On CPU `probes` fresh processes (`process_memory_mib`) each
    run `setup`, code that defines `step`, and the one with the median step peak is reported (one SimpleNet probe
    varied by +-3 %, as much as the custom conv's margin); on CUDA `make_step()` runs here, one warm-up step first
    (lazy init and cuDNN autotuning are not a step's memory), under `cuda_memory_mib`."""
    if device.type == "cuda":
        step = make_step()
        step()
        return cuda_memory_mib(lambda: [step() for _ in range(steps)], device)
    runs = [process_memory_mib(setup, "step()", steps=steps, threads=torch.get_num_threads()) for _ in range(probes)]
    return sorted(runs, key=lambda run: run["step_peak_mib"])[len(runs) // 2] | {"memory_probes": probes}
