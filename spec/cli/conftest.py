"""A tiny synthetic MiniPlaces set (3 classes, 8 train and 4 val images each), made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from impl.data import make_synthetic
from spec.train.conftest import _one_thread  # noqa: F401  (autouse: one intra-op thread here too)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("data") / "tiny", num_classes=3, train_per_class=8, val_per_class=4)
