"""Fixtures of the adversarial-training spec: natural, PGD-3 and FGSM-RS training of TinyNet through impl.train.fit.

The task is the quadrant toy of spec/attack/toys.py (in memory, seconds on CPU); ε = 6/255 against a class signal
of 15/255 leaves room for a robust classifier that natural training does not find.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from impl.adversarial import AdvTrainConfig, adversarial_training
from impl.train import FitResult, TrainConfig, fit
from spec.attack.toys import TinyNet, one_thread, quadrant_data

EPS = 6 / 255


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


def _run(method: str | None, run_dir: Path | None) -> FitResult:
    images, labels = quadrant_data(512, seed=0, contrast=0.06)
    val_images, val_labels = quadrant_data(128, seed=1, contrast=0.06)
    train_loader = DataLoader(TensorDataset(images, labels), 32, shuffle=True, drop_last=True)
    val_loader = DataLoader(TensorDataset(val_images, val_labels), 128)
    adv = AdvTrainConfig(method or "pgd", eps=EPS, steps=3, alpha=2.5 / 255 if method == "pgd" else None)
    hooks = adversarial_training(adv, val_loader, torch.device("cpu"), monitor_batch=(val_images[:64], val_labels[:64]))
    cfg = TrainConfig(
        epochs=6, warmup=1, batch_size=32, lr=0.05, workers=0, print_freq=1000, tensorboard=False, plots=False,
        best_metric=hooks.best_metric,
    )  # fmt: skip
    torch.manual_seed(0)
    model = TinyNet()
    with one_thread():
        return fit(
            model, train_loader, val_loader, cfg, device=torch.device("cpu"), run_dir=run_dir,
            perturb=hooks.perturb if method else None, extra_evals=hooks.extra_evals,
        )  # fmt: skip


@pytest.fixture(scope="session")
def natural_run() -> FitResult:
    return _run(None, None)


@pytest.fixture(scope="session")
def pgd_run(tmp_path_factory: pytest.TempPathFactory) -> FitResult:
    return _run("pgd", tmp_path_factory.mktemp("pgd-run"))


@pytest.fixture(scope="session")
def fgsm_rs_run() -> FitResult:
    return _run("fgsm-rs", None)
