"""Training-step throughput (img/s) and peak memory of every network of the seed, side by side.

All models' steps run in one interleaved loop (bench.interleaved: each round visits every model once, in a
fresh random order; medians of the rounds), so load from other processes spreads over all of them; each model in a
process of its own (`interleave_processes`), so that one model's allocations do not change another's page faults.
Memory: on CPU the process probe (`bench.device.process_memory_mib`: a fresh process per model, default allocator,
5 steps, the process's high-water mark); on CUDA torch's peak allocated / reserved and NVML's device usage, separate
columns.
The seed's figures (GPU, nvidia-smi) stand beside SimpleNet's rows.

    python -m bench.models.throughput [--out reports/raw/cpu-models.json]   # BENCH_DEVICE, MODELS_* env vars
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from bench.device import bench_device, step_memory_mib
from bench.interleaved import PROCESS_METHOD, entry, env_int, interleave_processes, raw_file, write
from bench.models.cases import MODELS, make_train_step

TABLE = "models"
BASELINE = "SimpleNet (native conv)"
# The seed's own measurements (its README, one GPU, nvidia-smi): memory in GB and time per iteration in ms.
SEED = {
    "SimpleNet (native conv)": {"seed_gpu_memory_gb": 2.2, "seed_time_ms": 12.0},
    "SimpleNet (custom conv)": {"seed_gpu_memory_gb": 4.5, "seed_time_ms": 145.0},
}


def step_setup(name: str, device: torch.device, batch: int) -> str:
    """Code that defines `step`, one training step of model `name`, for a worker process."""
    return f"from bench.models.cases import make_train_step\nstep = make_train_step({name!r}, {str(device)!r}, {batch})"


def memory(name: str, device: torch.device, batch: int, steps: int) -> dict[str, float | None]:
    """The memory columns of one model: a fresh process on CPU, torch's and NVML's counters on CUDA."""
    return step_memory_mib(step_setup(name, device, batch), lambda: make_train_step(name, device, batch), device, steps)


def run(device: torch.device, batch: int, rounds: int, memory_steps: int) -> dict:
    setups = {name: step_setup(name, device, batch) for name in MODELS}
    times = interleave_processes(setups, rounds, device, threads=torch.get_num_threads())
    case = f"train step b{batch} 128px"
    records = []
    for name, seconds in times.items():
        info = {"images_per_s": batch / statistics.median(seconds), **memory(name, device, batch, memory_steps)}
        records.append(entry(TABLE, case, name, seconds, name == BASELINE, **info, **SEED.get(name, {})))
    return raw_file(device, records, batch=batch, memory_steps=memory_steps, method=PROCESS_METHOD)


def main(argv: list[str] | None = None) -> None:
    device = bench_device()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(f"reports/raw/{device.type}-models.json"))
    parser.add_argument("--batch", type=int, default=env_int("MODELS_BATCH", 256 if device.type == "cuda" else 32))
    parser.add_argument("--rounds", type=int, default=env_int("MODELS_ROUNDS", 5), help="interleaved rounds")
    parser.add_argument("--memory-steps", type=int, default=env_int("MODELS_MEMORY_STEPS", 5))
    args = parser.parse_args(argv)
    write(run(device, args.batch, args.rounds, args.memory_steps), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
