"""An empty batch (a loader's last, filtered batch) goes through every attack and comes back empty (issue 11)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from impl.attack import PGDAttack, fgsm, pgd, random_noise
from spec.attack.toys import TinyNet, random_images

EMPTY = random_images(1, seed=0)[:0]  # (0, 3, 12, 12) float32
NO_LABELS = torch.zeros(0, dtype=torch.long)


@pytest.mark.parametrize(
    "attack",
    [
        pytest.param(lambda m: PGDAttack(nn.CrossEntropyLoss(), num_steps=3).perturb(m, EMPTY), id="course-pgd"),
        pytest.param(lambda m: pgd(m, EMPTY, NO_LABELS, steps=3), id="pgd"),
        pytest.param(lambda m: pgd(m, EMPTY, NO_LABELS, steps=3, restarts=2), id="pgd-restarts"),
        pytest.param(lambda m: pgd(m, EMPTY, NO_LABELS, steps=3, early_stop=True), id="pgd-early-stop"),
        pytest.param(lambda m: fgsm(m, EMPTY, NO_LABELS, random_start=True), id="fgsm-rs"),
        pytest.param(lambda m: random_noise(EMPTY, 8 / 255), id="noise"),
    ],
)
def test_an_empty_batch_comes_back_empty(attack):
    adv = attack(TinyNet().eval())
    assert adv.shape == EMPTY.shape and adv.dtype == EMPTY.dtype, f"got {tuple(adv.shape)} {adv.dtype}"


def test_a_wrong_shape_is_still_named_when_the_batch_is_empty():
    with pytest.raises(ValueError, match=r"images must be \(B, C, H, W\), got shape \(0, 12, 12\)"):
        PGDAttack(nn.CrossEntropyLoss()).perturb(TinyNet(), EMPTY[:, 0])
