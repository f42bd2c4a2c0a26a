"""A training split smaller than one batch: both training data paths (the course's DataLoader, `impl.train.
make_train_loader`, and the device loader of `--data-on-device`) refuse it with the same one-line error naming the
split file (impl.train.require_a_batch), before anything is trained."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from impl.cli import main
from impl.train import ConfigError, TrainConfig, make_train_loader

ARGS = ["--epochs", "1", "-j", "0", "--warmup", "0", "--no-progress", "-b", "64"]


def _error(capsys: pytest.CaptureFixture[str], root: Path, out: Path, *extra: str) -> str:
    status = main(["train", str(root), "--out", str(out), *ARGS, *extra])
    err = capsys.readouterr().err
    assert status == 2, f"exit status {status}, stderr:\n{err}"
    assert not out.exists() or not any(out.iterdir()), "nothing may be trained"
    return err


def test_both_data_paths_give_the_same_one_line_error_naming_the_split_file(synthetic_root, tmp_path, capsys):
    course = _error(capsys, synthetic_root, tmp_path / "course")
    device = _error(capsys, synthetic_root, tmp_path / "device", "--data-on-device", "--cache-dir", str(tmp_path / "c"))
    assert course == device, f"the two paths disagree:\ncourse: {course}device: {device}"
    lines = course.strip().splitlines()
    assert len(lines) == 1, course
    expected = f"-b must be at most the training split's 24 images ({synthetic_root / 'train.txt'}): a batch of 64 is"
    assert expected in lines[0], lines[0]


def test_a_dataset_without_a_split_file_gets_the_message_without_one():
    data = TensorDataset(torch.zeros(5, 1), torch.zeros(5, dtype=torch.long))
    expected = r"^TrainConfig\.batch_size must be at most the training split's 5 images: a batch of 8 is more than it "
    expected += "holds, got 8$"
    with pytest.raises(ConfigError, match=expected):
        make_train_loader(data, TrainConfig(batch_size=8, workers=0))
