"""What early stopping saves: PGD-k evaluation of a TRAINED SimpleNet, full run against `pgd(early_stop=True)`.

The model: SimpleNet (10 classes) trained from scratch for `--train-steps` Adam steps on synthetic scenes drawn in
memory (`impl.data.render`, the demo's classes) at `--size` px; no augmentation. Early stopping saves in proportion
to how soon examples are fooled, so an untrained model (mostly wrong from the start) would flatter it: the report
states the model's clean accuracy beside the times. Timed side by side (bench/interleaved.py): clean forward,
PGD-k + forward, early-stopped PGD-k + forward, on the same validation batch. Accuracies come from the same runs.
`attacked_fraction`: the images the attack's forwards saw over steps × batch, what early stopping can save at most.

    python -m bench.attack.early_stop [--out reports/raw/cpu-attack-early-stop.json]   # BENCH_DEVICE, env vars below
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
from impl.attack import pgd
from impl.data import IMAGENET_MEAN, IMAGENET_STD, render
from impl.models import SimpleNet

TABLE = "attack-early-stop"
CLASSES = 10


def scenes(n_per_class: int, size: int, split_seed: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Normalized synthetic scenes (n_per_class · 10, 3, size, size) and labels, each image from its own seed."""
    labels = torch.arange(CLASSES).repeat_interleave(n_per_class)
    pixels = torch.stack([render(int(y), [split_seed, i], size) for i, y in enumerate(labels)]).float() / 255
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((pixels - mean) / std).to(device), labels.to(device)


def train(device: torch.device, size: int, steps: int, batch: int = 32) -> nn.Module:
    """SimpleNet trained naturally on 10 × 160 scenes; returned in eval mode."""
    images, labels = scenes(160, size, 0, device)
    torch.manual_seed(0)
    net = SimpleNet(num_classes=CLASSES).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    order = torch.randperm(images.shape[0], device=device)
    for i in range(steps):
        idx = order[(torch.arange(batch, device=device) + i * batch) % images.shape[0]]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(images[idx]), labels[idx]).backward()
        opt.step()
    return net.eval()


def attacked_fraction(net: nn.Module, run: Callable[[], object], batch: int, steps: int) -> float:
    """Images the attack's forwards saw over `steps` × `batch`: what early stopping can save at most (its time
    against the full run's, less the one final forward both make)."""
    seen: list[int] = []
    hook = net.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    try:
        run()
    finally:
        hook.remove()
    return sum(seen) / (steps * batch)


def main(argv: list[str] | None = None) -> None:
    device = bench_device()
    parser = bench_parser(__doc__, device, TABLE, "ATTACK_ES", rounds=7)
    parser.add_argument("--size", type=int, default=env_int("ATTACK_ES_SIZE", 64), help="image side (px)")
    parser.add_argument("--train-steps", type=int, default=env_int("ATTACK_ES_TRAIN_STEPS", 300))
    parser.add_argument("--batch", type=int, default=env_int("ATTACK_ES_BATCH", 64), help="validation batch")
    parser.add_argument("--steps", type=int, default=env_int("ATTACK_ES_STEPS", 10), help="PGD-k")
    args = parse_bench_args(parser, argv)
    net = train(device, args.size, args.train_steps)
    x, y = scenes(max(1, args.batch // CLASSES), args.size, 1, device)
    options = dict(eps=8 / 255, alpha=2 / 255, steps=args.steps, generator=None)

    def attacked(early: bool) -> Tensor:
        torch.manual_seed(1)  # the same random start for both
        return pgd(net, x, y, **options, early_stop=early)

    def accuracy(images: Tensor) -> float:
        with torch.no_grad():
            return 100 * float((net(images).argmax(1) == y).float().mean())

    def evaluate(early: bool | None):
        return lambda: accuracy(x if early is None else attacked(early))

    names = {"clean": None, f"pgd-{args.steps}": False, f"pgd-{args.steps} early stop": True}
    clock, clock_name = cpu_clock(device)
    times = interleave({name: evaluate(early) for name, early in names.items()}, args.rounds, device, clock=clock)
    ms = median_ms(times)
    top1 = {name: evaluate(early)() for name, early in names.items()}
    fractions = {name: attacked_fraction(net, lambda e=early: attacked(e), x.shape[0], args.steps)
                 for name, early in names.items() if early is not None}  # fmt: skip
    full = f"pgd-{args.steps}"
    case = f"simplenet(10) trained {args.train_steps} steps, b{x.shape[0]} {args.size}px"
    records = [
        entry(
            TABLE,
            case,
            name,
            times[name],
            name == "clean",
            top1=top1[name],
            ratio_vs_full_pgd=ms[name] / ms[full] if name != "clean" else None,
            attacked_fraction=fractions.get(name),
        )  # fmt: skip
        for name in names
    ]
    write(raw_file(device, records, model="SimpleNet, trained here on synthetic scenes", clock=clock_name), args.out)
    for name in names:
        print(f"{name:>22}: {ms[name]:9.2f} ms  top-1 {top1[name]:5.1f} %  ({ms[name] / ms[full]:.3f}× full PGD)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
