"""Device choice, timing and memory helpers shared by the benchmarks."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap
from collections.abc import Callable

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


def cuda_peak_mib(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory allocated by torch on `device` while running `fn` once, above what was allocated before."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def subprocess_peak_rss_mib(setup: str, step: str, threads: int | None = None) -> float:
    """Peak resident memory (MiB) added by `step` (one line of code), in a fresh Python process after `setup`.

    Uses Linux's resettable high-water mark (/proc/self/clear_refs = 5), so imports and setup do not count. glibc is
    told to serve every block over 128 KiB by mmap, so a freed tensor leaves RSS at once: otherwise pages cached by
    malloc after the warm-up step hide the step's allocations and the reading depends on heap history.
    """
    script = textwrap.dedent(
        """
        import torch
        {threads}
        {setup}
        def _kib(key):
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) for l in f if l.startswith(key))
        {step}  # warm-up: allocator caches and lazy init are not the step's cost
        import gc; gc.collect()
        rss0 = _kib("VmRSS:")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        {step}
        print((_kib("VmHWM:") - rss0) / 1024)
        """
    ).format(
        setup=textwrap.dedent(setup).strip(),
        step=step.strip(),
        threads=f"torch.set_num_threads({threads})" if threads else "",
    )
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"memory probe failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])
