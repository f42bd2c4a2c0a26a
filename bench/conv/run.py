"""Custom convolution (both algorithms) against native F.conv2d, side by side: forward+backward time per SimpleNet
layer, and time and process memory of SimpleNet SGD steps with each conv op. Targets for "fast": <= 1.2x native
time for the NCHW step (the course's layout; the channels_last step beside it) and <= 1.05x native peak memory.

Timing: candidates of a case run in one interleaved loop (bench.interleaved: every candidate once per round,
random order), and each is reported with the median over rounds of its time divided by the baseline's in the same
round. A layer case runs in this process; each SimpleNet step candidate in a process of its own
(`interleave_processes`), since in a shared one the candidates' allocations changed each other's page faults.
Memory: a fresh process per candidate, default allocator, 5 SGD steps (bench.device.process_memory_mib); on CUDA
torch's peak allocated / reserved and NVML's device usage. Table: reports/conv.md (and reports/memory.md).

    python -m bench.conv.run [--out reports/raw/cpu-conv.json]   # BENCH_DEVICE, CONV_BENCH_* env vars
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.device import bench_device, step_memory_mib
from bench.interleaved import METHOD, PROCESS_METHOD, entry, env_int, interleave, interleave_processes, raw_file, write
from bench.models.cases import make_simplenet_step
from impl.conv import _out_size, custom_conv2d

TABLE = "conv"
# SimpleNet's convolutions at a 128×128 input: (C_in, C_out, K, stride, padding, input H=W).
LAYERS = [
    (3, 64, 7, 2, 3, 128),
    (64, 64, 1, 1, 0, 32),
    (64, 64, 3, 1, 1, 32),
    (64, 256, 1, 1, 0, 32),
    (256, 128, 1, 1, 0, 16),
    (128, 128, 3, 1, 1, 16),
    (128, 512, 1, 1, 0, 16),
]
CONVS: dict[str, Callable[..., torch.Tensor]] = {
    "native": F.conv2d,
    "unfold": lambda x, w, b, s, p: custom_conv2d(x, w, b, s, p, algorithm="unfold"),
    "fast": lambda x, w, b, s, p: custom_conv2d(x, w, b, s, p, algorithm="fast"),
}
# SimpleNet step candidates: (conv op, channels_last).
STEPS = {
    "native": ("native", False),
    "unfold": ("unfold", False),
    "fast": ("fast", False),
    "native channels_last": ("native", True),
    "fast channels_last": ("fast", True),
}


def layer_step(layer: tuple[int, ...], conv: str, batch: int, device: torch.device) -> Callable[[], None]:
    c_in, c_out, k, s, p, hw = layer
    x = torch.randn(batch, c_in, hw, hw, device=device, requires_grad=c_in != 3)  # images need no gradient
    w = torch.randn(c_out, c_in, k, k, device=device, requires_grad=True)
    b = torch.randn(c_out, device=device, requires_grad=True)
    ho = _out_size(hw, k, s, p)
    dy = torch.randn(batch, c_out, ho, ho, device=device)
    fn = CONVS[conv]

    def step() -> None:
        fn(x, w, b, s, p).backward(dy)

    return step


def step_setup(conv: str, channels_last: bool, device: torch.device, batch: int) -> str:
    """Code that defines `step`, one SimpleNet SGD step with this conv op and layout, for a worker process."""
    return (
        "from bench.models.cases import make_simplenet_step\n"
        f"step = make_simplenet_step({conv!r}, {str(device)!r}, {batch}, channels_last={channels_last})"
    )


def step_memory(conv: str, channels_last: bool, device: torch.device, batch: int, steps: int) -> dict:
    setup = step_setup(conv, channels_last, device, batch)
    return step_memory_mib(
        setup, lambda: make_simplenet_step(conv, device, batch, channels_last=channels_last), device, steps
    )


def records_of(case: str, times: dict[str, list[float]], baseline: str, extra: dict[str, dict]) -> list[dict]:
    """One record per candidate, with the median over rounds of its time / the baseline's in the same round."""
    base = times[baseline]
    return [
        entry(
            TABLE,
            case,
            name,
            t,
            name == baseline,
            time_ratio_of_rounds=statistics.median(a / b for a, b in zip(t, base, strict=True)),
            **extra.get(name, {}),
        )
        for name, t in times.items()
    ]


def run(device: torch.device, batch: int, layer_rounds: int, step_rounds: int, memory_steps: int) -> dict:
    records = []
    for layer in LAYERS:
        c_in, c_out, k, s, _, hw = layer
        fns = {conv: layer_step(layer, conv, batch, device) for conv in CONVS}
        case = f"{c_in}->{c_out} k{k}/s{s} @{hw}x{hw} b{batch} NCHW"
        records += records_of(case, interleave(fns, layer_rounds, device), "native", {})
    for channels_last in (False, True):
        names = [n for n, (_, cl) in STEPS.items() if cl == channels_last]
        setups = {n: step_setup(*STEPS[n], device, batch) for n in names}
        times = interleave_processes(setups, step_rounds, device, threads=torch.get_num_threads())
        memory = {n: step_memory(*STEPS[n], device, batch, memory_steps) for n in names}
        case = f"SimpleNet SGD step b{batch} 128px {'channels_last' if channels_last else 'NCHW'}"
        records += records_of(case, times, names[0], memory)
    method = f"layers: {METHOD}; SimpleNet steps: {PROCESS_METHOD}"
    return raw_file(device, records, batch=batch, memory_steps=memory_steps, method=method)


def main(argv: list[str] | None = None) -> None:
    device = bench_device()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(f"reports/raw/{device.type}-conv.json"))
    parser.add_argument("--batch", type=int, default=env_int("CONV_BENCH_BATCH", 32))
    parser.add_argument("--layer-rounds", type=int, default=env_int("CONV_BENCH_LAYER_ROUNDS", 5))
    parser.add_argument("--step-rounds", type=int, default=env_int("CONV_BENCH_STEP_ROUNDS", 7))
    parser.add_argument("--memory-steps", type=int, default=env_int("CONV_BENCH_MEMORY_STEPS", 5))
    args = parser.parse_args(argv)
    write(run(device, args.batch, args.layer_rounds, args.step_rounds, args.memory_steps), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
