"""`miniplaces train --data-on-device` (the GPU data path: uint8 caches held on the device, batch augmentation there)
and `--channels-last`, on CPU: the same run folder as the course path, and one-line errors for what does not combine."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from impl.cli import main
from impl.train import CHECKPOINT_NAME, COURSE_KEYS
from spec.cli.test_cli import FAST, _run

TRAIN = ["--epochs", "1", "--lr", "0.01", *FAST]


@pytest.fixture(scope="module")
def course_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of a 1-epoch run through the course's DataLoader path."""
    out = tmp_path_factory.mktemp("course")
    assert main(["train", str(tiny_data), "--out", str(out), *TRAIN]) == 0
    (run_dir,) = out.iterdir()
    return run_dir


def _files(run_dir: Path) -> set[str]:
    """The run folder's contents, with TensorBoard's per-process event file names reduced to their kind."""
    names = set()
    for p in run_dir.rglob("*"):
        name = str(p.relative_to(run_dir))
        names.add(name.split("events.out.tfevents")[0] + "events.out.tfevents" if "tfevents" in name else name)
    return names


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_data_on_device_writes_the_course_paths_run_folder_and_its_checkpoint_evaluates(
    tiny_data, course_run, tmp_path, capsys
):
    status, out, err = _run(capsys, "train", tiny_data, "--out", tmp_path / "runs", "--data-on-device",
                            "--cache-dir", tmp_path / "cache", "--channels-last", *TRAIN)  # fmt: skip
    assert status == 0, err
    (run_dir,) = (tmp_path / "runs").iterdir()
    for line in ("Epoch: [1][0/3]", "Epoch: [1][2/3]", "[Training]: Epoch 1 finished", "Test: [0/1]", "******Acc@1"):
        assert line in out, f"{line!r} missing from the output:\n{out}"
    assert "in batches: AugmentConfig(" in out, out
    assert _files(run_dir) == _files(course_run), _files(run_dir) ^ _files(course_run)
    rows, course_rows = _csv(run_dir / "metrics.csv"), _csv(course_run / "metrics.csv")
    assert list(rows[0]) == list(course_rows[0]) and [r["epoch"] for r in rows] == ["1"], (rows, course_rows)
    assert rows[0]["lr"] == course_rows[0]["lr"], "the schedule must not depend on the data path"
    assert all(0 <= float(rows[0][k]) <= 100 for k in ("train_top1", "val_top1", "val_top5")), rows
    config = json.loads((run_dir / "config.json").read_text())
    assert config == json.loads((course_run / "config.json").read_text()) | {"channels_last": True}, config

    ckpt = torch.load(run_dir / "models" / CHECKPOINT_NAME, weights_only=True)
    course = torch.load(course_run / "models" / CHECKPOINT_NAME, weights_only=True)
    assert set(COURSE_KEYS) <= set(ckpt) and set(ckpt) == set(course), set(ckpt) ^ set(course)
    shapes = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()}
    assert shapes == {k: tuple(v.shape) for k, v in course["state_dict"].items()}
    cached = sorted(p.name.split("-")[0] + p.name[p.name.index(".") :] for p in (tmp_path / "cache").iterdir())
    assert cached == ["train.images.npy", "train.labels.npy", "val.images.npy", "val.labels.npy"], cached

    status, out, err = _run(capsys, "train", tiny_data, "-e", "--resume", run_dir / "models" / CHECKPOINT_NAME,
                            "-j", "0", "--no-progress")  # fmt: skip
    assert status == 0 and "val top-1" in out, err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--cache-dir", "CACHE"], "--cache-dir applies to --data-on-device only"),
        (["--data-on-device", "-e", "--resume", "x.pth.tar"], "--data-on-device trains; -e and -a evaluate"),
        (["--data-on-device", "-a", "--resume", "x.pth.tar"], "--data-on-device trains; -e and -a evaluate"),
        (["--channels-last", "-e", "--resume", "x.pth.tar"], "--channels-last applies to training"),
        (["--channels-last", "-a", "--resume", "x.pth.tar"], "--channels-last applies to training"),
        (
            ["--data-on-device", "--cache-dir", "CACHE", "-b", "100"],
            "-b must be at most the training split's 24 images",
        ),
    ],
)
def test_what_does_not_combine_with_data_on_device_is_one_line_naming_the_flag(
    argv, message, tiny_data, tmp_path, capsys
):
    argv = [str(tmp_path / "cache") if a == "CACHE" else a for a in argv]
    status, _, err = _run(capsys, "train", tiny_data, "--out", tmp_path / "runs", *FAST, *argv)
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and message in lines[0], err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir()), "nothing may be trained"


def test_data_on_device_under_torchrun_is_refused_before_joining_a_process_group(tiny_data, tmp_path, capsys,
                                                                                 monkeypatch):  # fmt: skip
    monkeypatch.setenv("WORLD_SIZE", "2")
    status, _, err = _run(capsys, "train", tiny_data, "--out", tmp_path, "--data-on-device", *FAST)
    assert status == 2 and "--data-on-device runs in one process" in err and "torchrun" in err, err
