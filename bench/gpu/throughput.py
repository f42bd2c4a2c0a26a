"""SimpleNet training throughput on the GPU path: uint8 data resident on the device, batch augmentation there,
channels_last, bf16 autocast, optional torch.compile, metrics accumulated on the device (no host sync in the step
loop). Target on one H200: >= 40 000 img/s, i.e. 60 epochs of 100 000 images in <= 5 minutes.

What is timed is `miniplaces train`'s own path, not a copy of it: `impl.train.train_one_epoch` (the step function
`fit` runs, with its course log reads every `print_freq` iterations), the optimizer and schedule of
`impl.train.build_optimizer`/`build_scheduler`, the model prepared by `impl.train.prepare_model`, and the
`impl.data.gpu.DeviceLoader` that `miniplaces train --device-data` feeds it from.

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
from torch import Tensor, nn

from bench.device import bench_device
from bench.interleaved import entry, env_int, raw_file, write
from impl.conv import CustomConv2d
from impl.data.batch_transforms import AugmentConfig
from impl.data.gpu import DeviceLoader, cached_loader
from impl.models import SimpleNet
from impl.train import (
    TrainConfig,
    WarmupCosineLR,
    build_optimizer,
    build_scheduler,
    cudnn_autotune,
    prepare_model,
    train_one_epoch,
)

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
    print_freq: int = 10  # the course's -p: the step loop reads the device every print_freq iterations
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


def train_config(cfg: ThroughputConfig) -> TrainConfig:
    """The `miniplaces train` configuration of this run (the course's defaults for everything it does not set)."""
    return TrainConfig(
        model_arch="simplenet",
        epochs=cfg.warmup_epochs + cfg.epochs,
        warmup=0,
        batch_size=cfg.batch,
        lr=cfg.lr,
        workers=0,
        print_freq=cfg.print_freq,
        seed=cfg.seed,
        amp=cfg.amp,
        compile=cfg.compile,
        channels_last=cfg.channels_last,
        tensorboard=False,
        plots=False,
    )


@dataclass
class Run:
    """What `setup` builds: the training state of `fit`, without its run folder."""

    net: nn.Module  # the module the step loop calls (channels_last, maybe compiled)
    optimizer: torch.optim.Optimizer
    scheduler: WarmupCosineLR
    loader: DeviceLoader
    train_cfg: TrainConfig


def train_epoch(run: Run, epoch: int, device: torch.device) -> tuple[dict[str, float], int]:
    """One epoch through `impl.train.train_one_epoch`; returns its metrics (loss, top1, top5) and the images seen."""
    metrics = train_one_epoch(run.net, run.loader, run.optimizer, run.scheduler, epoch=epoch, cfg=run.train_cfg,
                              device=device)  # fmt: skip
    return metrics, len(run.loader) * run.loader.batch_size  # train batches are full (drop_last)


def train_epochs(run: Run, cfg: ThroughputConfig, device: torch.device) -> list[dict[str, float]]:
    """Every epoch (warm-up first): seconds, images/s, mean loss and top-1 (%)."""
    rows = []
    for epoch in range(cfg.warmup_epochs + cfg.epochs):
        run.loader.set_epoch(epoch)
        _sync(device)
        t0 = time.perf_counter()
        metrics, seen = train_epoch(run, epoch, device)
        _sync(device)
        seconds = time.perf_counter() - t0
        rows.append(
            {
                "epoch": epoch,
                "warmup": epoch < cfg.warmup_epochs,
                "seconds": seconds,
                "images_per_s": seen / seconds,
                "loss": metrics["loss"],
                "top1": metrics["top1"],
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


def setup(cfg: ThroughputConfig, device: torch.device) -> Run:
    """The run's training state: synthetic uint8 data on the device (or `cfg.data`'s cache), SimpleNet, and what
    `fit` would build around it for the same flags."""
    augment = AugmentConfig(size=cfg.crop, resize=round(cfg.crop * 144 / 128))
    if cfg.data is None:
        images, labels = synthetic_uint8(cfg.n, cfg.size, device, cfg.seed)
        loader = DeviceLoader(images, labels, cfg.batch, device=device, augment=augment, seed=cfg.seed,
                              channels_last=cfg.channels_last)  # fmt: skip
    else:
        loader = cached_loader(cfg.data, "train", cfg.batch, device=device, augment=augment, seed=cfg.seed,
                               channels_last=cfg.channels_last, size=cfg.size, progress=True)  # fmt: skip
    train_cfg = train_config(cfg)
    torch.manual_seed(cfg.seed)
    model = SimpleNet(CustomConv2d if cfg.conv == "custom" else nn.Conv2d, num_classes=100).to(device)
    optimizer = build_optimizer(model, train_cfg)
    scheduler = build_scheduler(optimizer, train_cfg, len(loader))
    return Run(prepare_model(model, train_cfg), optimizer, scheduler, loader, train_cfg)


def run(cfg: ThroughputConfig, device: torch.device) -> dict[str, object]:
    """Generate the data, train, and return the summary (images/s, projected 60-epoch time) with every epoch's row."""
    run_state = setup(cfg, device)
    with cudnn_autotune(device):  # as fit does
        rows = train_epochs(run_state, cfg, device)
    timed = [r["images_per_s"] for r in rows if not r["warmup"]] or [rows[-1]["images_per_s"]]
    rate = statistics.median(timed)
    summary: dict[str, object] = {
        "images_per_s": rate,
        "loader_images_per_s": loader_rate(run_state.loader, device),
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
    p.add_argument("--print-freq", type=int, default=env_int("GPU_TP_PRINT_FREQ", d.print_freq),
                   help="iterations between the step loop's reads of the device (the course's -p)")  # fmt: skip
    p.add_argument("--data", default=os.environ.get("GPU_TP_DATA"), help="MiniPlaces folder (default: random data)")
    args = p.parse_args(argv)
    cfg = ThroughputConfig(
        n=args.n, size=args.size, crop=args.crop, batch=args.batch, epochs=args.epochs,
        warmup_epochs=args.warmup_epochs, amp=args.amp, compile=args.compile, conv=args.conv, data=args.data,
        print_freq=args.print_freq,
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
