"""Attack cost against its algorithmic floor, measured side by side in one interleaved loop.

The floor of an attack is the work its algorithm cannot skip, timed on the same model and batch in the same loop:

* PGD-k evaluation   = k × (forward + input-only backward) + 1 forward (the prediction on the final images);
* FGSM evaluation    = 1 × (forward + input-only backward) + 1 forward;
* PGD-k training     = k × (forward + input-only backward) + 1 natural training step;
* FGSM-RS training   = 1 × (forward + input-only backward) + 1 natural training step.

`forward + input-only backward` is `torch.autograd.grad(loss, x)` with the parameters frozen, i.e. the cheapest way to
get ∂loss/∂x. Rounds visit every candidate once, in a fresh random order, so load from other processes spreads over
all of them; medians of the rounds are reported (bench/interleaved.py). With one torch thread on CPU the
clock is this thread's CPU time, which other processes on a shared machine cannot inflate. Output:
pytest-benchmark-shaped JSON for the table script, with `floor_ms`, `floor` (the formula) and `ratio_vs_floor` on each
attack.

    python -m bench.attack.floor [--out reports/raw/cpu-attack-floor.json]   # BENCH_DEVICE, ATTACK_FLOOR_* env vars
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from bench.attack.cases import BATCH, SIZE, batch, eval_step, model, train_step
from bench.device import bench_device
from bench.interleaved import (
    bench_parser,
    cpu_clock,
    entry,
    env_int,
    interleave,
    median_ms,
    parse_bench_args,
    raw_file,
    write,
)

TABLE = "attack-floor"


def input_grad_step(device: torch.device, n: int, size: int) -> Callable[[], object]:
    """The floor's unit: one forward and one input-only backward, parameters frozen once outside the timing."""
    net, (x, y) = model(device), batch(device, n, size)
    for p in net.parameters():
        p.requires_grad_(False)

    def run() -> object:
        xr = x.detach().requires_grad_(True)
        loss = F.cross_entropy(net(xr), y, reduction="sum")
        return torch.autograd.grad(loss, xr)[0]

    return run


def candidates(device: torch.device, steps: int, n: int, size: int) -> dict[str, Callable[[], object]]:
    """Every timed step: the floor's parts (forward, forward + input backward, natural step) and the attacks."""
    return {
        "forward": eval_step("clean", device, steps, n, size),
        "forward+input-backward": input_grad_step(device, n, size),
        "natural step": train_step("natural", device, n, size),
        f"pgd-{steps} eval": eval_step("pgd", device, steps, n, size),
        f"course-pgd-{steps} eval": eval_step("course-pgd", device, steps, n, size),
        "fgsm eval": eval_step("fgsm", device, steps, n, size),
        "pgd-3 train step": train_step("pgd-3", device, n, size),
        "fgsm-rs train step": train_step("fgsm-rs", device, n, size),
    }


def floors(ms: dict[str, float], steps: int) -> dict[str, tuple[float, str]]:
    """Each attack's floor (ms) and the formula it came from, from the measured parts."""
    f, fb, nat = ms["forward"], ms["forward+input-backward"], ms["natural step"]
    return {
        f"pgd-{steps} eval": (steps * fb + f, f"{steps}·(F+B_in) + F"),
        f"course-pgd-{steps} eval": (steps * fb + f, f"{steps}·(F+B_in) + F"),
        "fgsm eval": (fb + f, "(F+B_in) + F"),
        "pgd-3 train step": (3 * fb + nat, "3·(F+B_in) + natural"),
        "fgsm-rs train step": (fb + nat, "(F+B_in) + natural"),
    }


def to_raw(times: dict[str, list[float]], device: torch.device, steps: int, n: int, size: int) -> dict[str, object]:
    """One record per candidate; attacks carry their floor (ms and formula) and their ratios to it and to clean."""
    ms = median_ms(times)
    floor = floors(ms, steps)
    case = f"simplenet b{n} {size}px"
    records = []
    for name, t in times.items():
        info: dict[str, object] = {}
        if name in floor:
            train = "train" in name
            base = ms["natural step"] if train else ms["forward"]
            info = dict(floor_ms=floor[name][0], floor=floor[name][1], ratio_vs_floor=ms[name] / floor[name][0])
            info["ratio_vs_natural" if train else "ratio_vs_clean"] = ms[name] / base
        records.append(entry(TABLE, case, name, t, name == "forward", **info))
    return raw_file(device, records)


def main(argv: list[str] | None = None) -> None:
    device = bench_device()
    parser = bench_parser(__doc__, device, TABLE, "ATTACK_FLOOR", rounds=9)
    parser.add_argument("--steps", type=int, default=env_int("ATTACK_FLOOR_STEPS", 10), help="PGD-k of the eval")
    parser.add_argument("--batch", type=int, default=env_int("ATTACK_FLOOR_BATCH", BATCH), help="images per batch")
    parser.add_argument("--size", type=int, default=env_int("ATTACK_FLOOR_SIZE", SIZE), help="image side (px)")
    args = parse_bench_args(parser, argv)
    clock, clock_name = cpu_clock(device)
    times = interleave(candidates(device, args.steps, args.batch, args.size), args.rounds, device, clock=clock)
    raw = to_raw(times, device, args.steps, args.batch, args.size)
    raw["machine_info"]["clock"] = clock_name
    write(raw, args.out)
    for b in raw["benchmarks"]:
        info = b["extra_info"]
        extra = f"  {info['ratio_vs_floor']:.3f}× floor ({info['floor']})" if "ratio_vs_floor" in info else ""
        print(f"{info['candidate']:>24}: {b['stats']['median'] * 1e3:9.2f} ms{extra}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
