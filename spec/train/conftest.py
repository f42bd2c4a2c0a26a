"""Small, fast training setups for the engine spec: tensor datasets and BatchNorm-free nets (so DDP can equal one
process exactly), and `cuda_sync_errors`, which turns any CUDA synchronization outside the step loop's reads into an
error."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from impl.train import TrainConfig

NUM_CLASSES = 5


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """These nets are tiny: one intra-op thread is faster, and far faster on a shared, loaded CPU (no OMP spinning)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_net(seed: int = 1) -> nn.Module:
    """Conv -> ReLU -> pool -> linear on (3, 8, 8) images; no BatchNorm, no dropout."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, NUM_CLASSES),
    )


def tensor_dataset(n: int = 64, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, NUM_CLASSES, (n,), generator=g))


class NoisyDataset(Dataset):
    """Adds fresh Gaussian noise from the global RNG on every read (an augmentation), and can fail on cue: `fail_at`
    is the read count at which __getitem__ raises `error` (a crash mid-epoch) or returns NaN images (`nan_at`)."""

    def __init__(self, base: TensorDataset, fail_at: int | None = None, nan_at: int | None = None) -> None:
        self.base, self.fail_at, self.nan_at, self.reads = base, fail_at, nan_at, 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        self.reads += 1
        if self.fail_at is not None and self.reads >= self.fail_at:
            raise KeyboardInterrupt(f"injected crash at read {self.reads}")
        x, y = self.base[i]
        if self.nan_at is not None and self.reads >= self.nan_at:
            return torch.full_like(x, float("nan")), y
        return x + 0.1 * torch.randn_like(x), y


def quiet_config(**overrides) -> TrainConfig:
    """Small batches, no TensorBoard or plots (slow to import), no worker processes."""
    base = dict(
        epochs=2,
        warmup=1,
        batch_size=16,
        val_batch_size=32,
        lr=0.05,
        workers=0,
        print_freq=1000,
        tensorboard=False,
        plots=False,
        model_arch="tiny",
    )
    return TrainConfig(**(base | overrides))


@contextmanager
def cuda_sync_errors(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Sync debug mode "error" inside the block, except in `impl.train._host` (the print-point and end-of-epoch
    reads, whose sizes it appends to the list it yields)."""
    from impl import train as engine

    reads: list[int] = []
    real = engine._host

    def allowed(values: Tensor) -> list[float]:
        reads.append(values.numel())
        torch.cuda.set_sync_debug_mode("default")
        try:
            return real(values)
        finally:
            torch.cuda.set_sync_debug_mode("error")

    monkeypatch.setattr(engine, "_host", allowed)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield reads
    finally:
        torch.cuda.set_sync_debug_mode("default")
        monkeypatch.setattr(engine, "_host", real)
