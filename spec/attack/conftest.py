"""Fixtures of the attack spec: a tiny CNN trained once per session on the quadrant task (spec/attack/toys.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

from spec.attack.toys import TinyNet, one_thread, quadrant_data, train_natural


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="session")
def trained() -> tuple[nn.Module, Tensor, Tensor]:
    """(model in eval mode, validation images, labels): ~99 % clean, and ε = 8/255 splits PGD from FGSM."""
    images, labels = quadrant_data(512, seed=0, contrast=0.06)
    val_images, val_labels = quadrant_data(256, seed=1, contrast=0.06)
    torch.manual_seed(0)
    with one_thread():
        model = train_natural(TinyNet(), images, labels, steps=100)
    for p in model.parameters():
        p.requires_grad_(True)
    return model, val_images, val_labels


@pytest.fixture
def untrained() -> nn.Module:
    """A fresh TinyNet in train mode (BN and dropout active): the attacks must not disturb it."""
    torch.manual_seed(0)
    return TinyNet()
