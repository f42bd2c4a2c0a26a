"""The synthetic set's promise, rerun with `-m training` (minutes on 2 CPU cores): SimpleNet, trained on the default
synthetic set with the course train augmentation, reaches a validation accuracy far above chance in a few epochs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from impl.data import MiniPlaces, make_synthetic, train_transform, val_transform
from impl.models import SimpleNet

EPOCHS, BATCH, LR = 6, 64, 0.05


@pytest.mark.training
def test_simplenet_learns_the_default_synthetic_set_in_a_few_epochs(tmp_path: Path) -> None:
    root = make_synthetic(tmp_path / "synthetic")
    train, val = MiniPlaces(root, "train"), MiniPlaces(root, "val", transform=val_transform())
    images = [train[i][0] for i in range(len(train))]  # uint8, augmented afresh each epoch
    labels = torch.tensor(train.targets())
    val_x = torch.stack([val[i][0] for i in range(len(val))])  # (N, 3, 128, 128)
    val_y = torch.tensor(val.targets())
    torch.manual_seed(0)
    model = SimpleNet(num_classes=train.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=1e-4)
    augment = train_transform()
    per_epoch = math.ceil(len(images) / BATCH)
    total = EPOCHS * per_epoch
    for step in range(total):
        if step % per_epoch == 0:
            order = torch.randperm(len(images))
        index = order[(step % per_epoch) * BATCH : (step % per_epoch + 1) * BATCH]
        x = torch.stack([augment(images[i]) for i in index])
        warm = per_epoch  # linear warmup for one epoch, then cosine to zero
        progress = (step - warm) / max(1, total - warm)
        lr = LR * (step + 1) / warm if step < warm else LR * 0.5 * (1 + math.cos(math.pi * progress))
        for group in opt.param_groups:
            group["lr"] = lr
        loss = F.cross_entropy(model(x), labels[index])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(val_x).argmax(dim=1) == val_y).float().mean().item()
    chance = 1 / train.num_classes
    assert accuracy >= 3 * chance, f"val top-1 {accuracy:.1%} after {EPOCHS} epochs (chance {chance:.0%})"
