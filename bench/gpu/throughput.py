"""SimpleNet training throughput on the GPU path: uint8 data resident on the device, batch augmentation there,
channels_last, bf16 autocast, optional torch.compile, metrics accumulated on the device (no host sync in the step
loop). Target on one H200: >= 40 000 img/s, i.e. 60 epochs of 100 000 images in <= 5 minutes.

The data are random uint8 images of MiniPlaces shape (default 100 000 × 3 × 128 × 128) generated on the device, so
nothing but the code travels to the GPU machine; accuracy on them means nothing, images per second is the result.
`--data ROOT` trains on a real MiniPlaces folder instead, through its decoded uint8 cache (impl.data.cache).
Each epoch runs the course augmentation (impl.data.batch_transforms) and one SGD step per batch; the first
`warmup_epochs` (lazy init, cuDNN autotuning, compilation) are reported but not counted. The loader alone (augment,
no model) is timed too, so the report says whether data or model bounds the step.

    python -m bench.gpu.throughput --out reports/raw/cuda-throughput.json   # GPU_TP_* env vars or flags, see --help
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.device import bench_device
from bench.interleaved import entry, env_int, raw_file, write
from impl.conv import CustomConv2d
from impl.data.batch_transforms import AugmentConfig
from impl.data.cache import load_cache
from impl.data.gpu import DeviceLoader
from impl.models import SimpleNet
from impl.train import autocast

TABLE = "gpu-throughput"
TARGET_IMAGES_PER_S = 40_000


@dataclass(frozen=True)
class ThroughputConfig:
    """One throughput run (defaults: the H200 target run)."""

    n: int = 100_000  # synthetic training images
    size: int = 128  # stored image side (px); the augmentation crops `crop` from a 144 canvas
    crop: int = 128  # training resolution (px)
    batch: int = 512
    epochs: int = 4  # timed epochs, after the warm-up ones
    warmup_epochs: int = 1
    amp: Literal["off", "bf16"] = "bf16"
    compile: bool = False
    channels_last: bool = True
    conv: Literal["native", "custom"] = "native"
    lr: float = 0.1
    seed: int = 0
    data: str | None = None  # a MiniPlaces folder: train on its decoded cache (impl.data.cache) instead of random data


def synthetic_uint8(n: int, size: int, device: torch.device, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Random uint8 images (n, 3, size, size) and labels in [0, 100), generated on `device`."""
    g = torch.Generator(device).manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, device=device, dtype=torch.uint8)
    return images, torch.randint(0, 100, (n,), generator=g, device=device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_epoch(
    net: nn.Module, opt: torch.optim.Optimizer, loader: DeviceLoader, cfg: ThroughputConfig, device: torch.device
) -> tuple[Tensor, Tensor, int]:
    """One epoch of SGD steps; returns (summed loss, correct count) as device tensors and the images seen.

    Nothing in here reads a value back to the host: the GPU runs ahead of Python for the whole epoch.
    """
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for x, y in loader:
        with autocast(device, cfg.amp):
            logits = net(x)
            loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += loss.detach() * y.shape[0]
        correct += (logits.argmax(1) == y).sum()
        seen += y.shape[0]
    return loss_sum, correct, seen


def train_epochs(
    net: nn.Module, opt: torch.optim.Optimizer, loader: DeviceLoader, cfg: ThroughputConfig, device: torch.device
) -> list[dict[str, float]]:
    """Every epoch (warm-up first): seconds, images/s, mean loss and top-1 (%); one host sync per epoch."""
    rows = []
    for epoch in range(cfg.warmup_epochs + cfg.epochs):
        loader.set_epoch(epoch)
        _sync(device)
        t0 = time.perf_counter()
        loss_sum, correct, seen = train_epoch(net, opt, loader, cfg, device)
        _sync(device)
        seconds = time.perf_counter() - t0
        rows.append(
            {
                "epoch": epoch,
                "warmup": epoch < cfg.warmup_epochs,
                "seconds": seconds,
                "images_per_s": seen / seconds,
                "loss": float(loss_sum) / seen,
                "top1": 100 * float(correct) / seen,
            }
        )
    return rows


def loader_rate(loader: DeviceLoader, device: torch.device) -> float:
    """Images/s of the loader alone (gather + augmentation, no model), over one epoch after a warm-up batch."""
    loader.set_epoch(0)
    next(iter(loader))
    _sync(device)
    t0, seen = time.perf_counter(), 0
    for _, y in loader:
        seen += y.shape[0]
    _sync(device)
    return seen / (time.perf_counter() - t0)


def setup(cfg: ThroughputConfig, device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer, DeviceLoader]:
    """(model, optimizer, loader) of a run: synthetic uint8 data on the device, SimpleNet in the run's layout."""
    if cfg.data is None:
        images, labels = synthetic_uint8(cfg.n, cfg.size, device, cfg.seed)
    else:
        images, labels = load_cache(cfg.data, "train", cfg.size, progress=True)
    augment = AugmentConfig(size=cfg.crop, resize=round(cfg.crop * 144 / 128))
    loader = DeviceLoader(images, labels, cfg.batch, device=device, augment=augment, seed=cfg.seed,
                          channels_last=cfg.channels_last)  # fmt: skip
    torch.manual_seed(cfg.seed)
    model = SimpleNet(CustomConv2d if cfg.conv == "custom" else nn.Conv2d, num_classes=100).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    fused = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=5e-4, **fused)
    return (torch.compile(model) if cfg.compile else model), opt, loader


def run(cfg: ThroughputConfig, device: torch.device) -> dict[str, object]:
    """Generate the data, train, and return the summary (images/s, projected 60-epoch time) with every epoch's row."""
    net, opt, loader = setup(cfg, device)
    rows = train_epochs(net, opt, loader, cfg, device)
    timed = [r["images_per_s"] for r in rows if not r["warmup"]] or [rows[-1]["images_per_s"]]
    rate = statistics.median(timed)
    summary: dict[str, object] = {
        "images_per_s": rate,
        "loader_images_per_s": loader_rate(loader, device),
        "projected_60_epochs_of_100k_s": 60 * 100_000 / rate,
        "target_images_per_s": TARGET_IMAGES_PER_S,
        "meets_target": rate >= TARGET_IMAGES_PER_S,
        "epochs": rows,
        "config": asdict(cfg),
    }
    if device.type == "cuda":
        summary["cuda_max_memory_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        summary["cuda_max_memory_reserved_mib"] = torch.cuda.max_memory_reserved(device) / 2**20
    return summary


def to_raw(summary: dict[str, object], device: torch.device) -> dict:
    cfg = summary["config"]
    case = f"simplenet {cfg['conv']} b{cfg['batch']} {cfg['crop']}px {cfg['amp']}" + (
        " compiled" if cfg["compile"] else ""
    )
    seconds = [r["seconds"] for r in summary["epochs"] if not r["warmup"]] or [summary["epochs"][-1]["seconds"]]
    info = {k: v for k, v in summary.items() if k not in ("epochs", "config")}
    record = entry(TABLE, case, "train epoch", seconds, True, **info, n=cfg["n"])
    return raw_file(device, [record], epochs=summary["epochs"], config=cfg)


def main(argv: list[str] | None = None) -> None:
    device, d = bench_device(), ThroughputConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(f"reports/raw/{device.type}-throughput.json"))
    p.add_argument("--n", type=int, default=env_int("GPU_TP_N", d.n), help="synthetic images")
    p.add_argument("--size", type=int, default=env_int("GPU_TP_SIZE", d.size), help="stored image side (px)")
    p.add_argument("--crop", type=int, default=env_int("GPU_TP_CROP", d.crop), help="training resolution (px)")
    p.add_argument("--batch", type=int, default=env_int("GPU_TP_BATCH", d.batch))
    p.add_argument("--epochs", type=int, default=env_int("GPU_TP_EPOCHS", d.epochs), help="timed epochs")
    p.add_argument("--warmup-epochs", type=int, default=env_int("GPU_TP_WARMUP", d.warmup_epochs))
    p.add_argument("--amp", choices=["off", "bf16"], default=os.environ.get("GPU_TP_AMP", d.amp))
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=bool(env_int("GPU_TP_COMPILE", 0)))
    p.add_argument("--conv", choices=["native", "custom"], default=os.environ.get("GPU_TP_CONV", d.conv))
    p.add_argument("--data", default=os.environ.get("GPU_TP_DATA"), help="MiniPlaces folder (default: random data)")
    args = p.parse_args(argv)
    cfg = ThroughputConfig(
        n=args.n, size=args.size, crop=args.crop, batch=args.batch, epochs=args.epochs,
        warmup_epochs=args.warmup_epochs, amp=args.amp, compile=args.compile, conv=args.conv, data=args.data,
    )  # fmt: skip
    summary = run(cfg, device)
    write(to_raw(summary, device), args.out)
    for r in summary["epochs"]:
        tag = " (warm-up)" if r["warmup"] else ""
        print(f"epoch {r['epoch']}{tag}: {r['seconds']:.2f} s, {r['images_per_s']:,.0f} img/s, loss {r['loss']:.3f}")
    rate, loader = summary["images_per_s"], summary["loader_images_per_s"]
    seconds = summary["projected_60_epochs_of_100k_s"]
    print(
        f"SimpleNet {rate:,.0f} img/s (target {TARGET_IMAGES_PER_S:,}), loader alone {loader:,.0f} img/s; "
        f"60 epochs of 100k in {seconds:.0f} s"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
