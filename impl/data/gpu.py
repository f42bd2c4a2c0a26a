"""A loader whose whole dataset lives on the device: uint8 images in, augmented normalized batches out, no workers,
no host round trip, no host sync. Spec: spec/data/test_device_loader.py.

    images, labels = load_cache(root, "train")                            # impl.data.cache: uint8, memory-mapped
    loader = DeviceLoader(images, labels, 256, device="cuda", train=True)  # uploads once (4.9 GB for MiniPlaces)
    loader = cached_loader(root, "train", 256, device="cuda")             # the same two lines in one
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for x, y in loader: ...   # x: float32 (B, 3, 128, 128) normalized, channels_last; y: int64 (B,)

Train batches go through `impl.data.batch_transforms.train_batch` (the course augmentation, per image), val batches
through `val_batch`. The order (a CPU generator, so it is the same on every device) and the augmentation (a generator
on the device) are seeded by (seed, epoch): a run is reproducible and independent of everything else that draws
random numbers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from impl.data.batch_transforms import AugmentConfig, train_batch, val_batch
from impl.data.cache import load_cache


class DeviceLoader:
    """Batches of a uint8 image tensor held on `device`, augmented there (see the module docstring)."""

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        *,
        device: torch.device | str | None = None,
        train: bool = True,
        augment: AugmentConfig | None = None,  # None: the course's (AugmentConfig())
        seed: int = 0,
        drop_last: bool | None = None,
        channels_last: bool = True,
    ) -> None:
        if images.dim() != 4 or images.shape[1] != 3 or images.dtype != torch.uint8:
            raise ValueError(f"DeviceLoader needs uint8 images (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"DeviceLoader: {images.shape[0]} images but labels of shape {tuple(labels.shape)}")
        if batch_size < 1:
            raise ValueError(f"DeviceLoader: batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device) if device is not None else images.device
        self.images = images.to(self.device, non_blocking=True)  # once: the whole set stays on the device
        self.labels = labels.to(self.device, dtype=torch.long, non_blocking=True)
        augment = augment if augment is not None else AugmentConfig()
        self.batch_size, self.train, self.augment, self.seed = batch_size, train, augment, seed
        self.drop_last = train if drop_last is None else drop_last
        self.channels_last = channels_last
        self._val_sizes = (augment.size, augment.resize)
        self.epoch = 0
        self.generator = torch.Generator(self.device)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next iteration replays."""
        self.epoch = epoch

    def __len__(self) -> int:
        n = self.images.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = self.images.shape[0]
        seed = self.seed * 1_000_003 + self.epoch
        self.generator.manual_seed(seed)  # the augmentation's, on the device
        order = None
        if self.train:  # drawn on the CPU (the same order on every device), copied without a sync
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
            order = order.pin_memory() if self.device.type == "cuda" else order
            order = order.to(self.device, non_blocking=True)
        for b in range(len(self)):
            lo, hi = b * self.batch_size, min((b + 1) * self.batch_size, n)
            if order is None:
                x, y = self.images[lo:hi], self.labels[lo:hi]
            else:
                idx = order[lo:hi]
                x, y = self.images[idx], self.labels[idx]
            x = train_batch(x, self.generator, self.augment) if self.train else val_batch(x, *self._val_sizes)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y


def cached_loader(
    root: str | Path,
    split: str,
    batch_size: int,
    *,
    device: torch.device | str,
    augment: AugmentConfig | None = None,
    seed: int = 0,
    channels_last: bool = True,
    size: int = 128,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> DeviceLoader:
    """A MiniPlaces split as a DeviceLoader on `device`, read from its decoded uint8 cache (`impl.data.cache`, built
    on first use): the course's augmentation for "train", val's resize and centre crop for "val"."""
    images, labels = load_cache(root, split, size, cache_dir, progress)
    return DeviceLoader(images, labels, batch_size, device=device, train=split == "train", augment=augment,
                        seed=seed, channels_last=channels_last)  # fmt: skip
