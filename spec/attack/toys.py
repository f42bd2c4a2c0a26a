"""Tiny in-memory data and models for the attack and adversarial-training specs: trained in a second on CPU.

The task: 4 classes of 3×12×12 images, each class a brighter blob in one quadrant over uniform noise. A small CNN
learns it to ~100 %, yet a few pixel levels of ε move it: enough to order PGD, FGSM, noise and clean accuracy.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from impl.data import IMAGENET_MEAN, IMAGENET_STD

NUM_CLASSES = 4
SIZE = 12
MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


@contextmanager
def one_thread() -> Iterator[None]:
    """These nets are tiny: one intra-op thread is faster, and far faster on a shared, loaded CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def normalize(pixels: Tensor) -> Tensor:
    return (pixels - MEAN.to(pixels)) / STD.to(pixels)


def to_pixels(images: Tensor) -> Tensor:
    return images * STD.to(images) + MEAN.to(images)


def quadrant_data(n: int, seed: int, contrast: float = 0.25) -> tuple[Tensor, Tensor]:
    """`n` normalized images (n, 3, 12, 12) and labels: class k brightens quadrant k by `contrast` over noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    pixels = 0.3 + 0.4 * torch.rand(n, 3, SIZE, SIZE, generator=g)
    half = SIZE // 2
    for k in range(NUM_CLASSES):
        r, c = divmod(k, 2)
        pixels[labels == k, :, r * half : (r + 1) * half, c * half : (c + 1) * half] += contrast
    return normalize(pixels.clamp(0, 1)), labels


def random_images(n: int, seed: int, size: int = SIZE) -> Tensor:
    """Valid normalized images of uniform random pixels."""
    return normalize(torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)))


class TinyNet(nn.Module):
    """conv → BN → ReLU → dropout → conv → ReLU → global pool → linear: BN and dropout make mode matter."""

    def __init__(self, num_classes: int = NUM_CLASSES, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Conv2d(width, width, 3, padding=1, stride=2),
            nn.ReLU(),
        )
        self.head = nn.Linear(width * 4, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        f = self.features(x)  # (B, W, 6, 6)
        f = F.adaptive_avg_pool2d(f, 2).flatten(1)  # (B, 4W): keeps where the blob is
        return self.head(f)


def train_natural(model: nn.Module, images: Tensor, labels: Tensor, steps: int = 150, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for i in range(steps):
        idx = torch.arange(i * 64, (i + 1) * 64) % images.shape[0]
        opt.zero_grad()
        F.cross_entropy(model(images[idx]), labels[idx]).backward()
        opt.step()
    return model.eval()


def accuracy(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    with torch.no_grad():
        return 100 * float((model(images).argmax(1) == labels).float().mean())
