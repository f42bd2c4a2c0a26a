"""The `miniplaces` command line end to end on a tiny synthetic set: train, -e, -a, resume, synth, demo, errors."""

from __future__ import annotations

import csv
import dataclasses
import re
import runpy
import shutil
import sys
from pathlib import Path

import pytest
import torch

from impl.cli import MODELS, build_model, main
from impl.data import MiniPlaces, val_transform
from impl.models import SimpleNet
from impl.train import BEST_NAME, CHECKPOINT_NAME, COURSE_KEYS, TrainConfig, save_checkpoint

FAST = ["-j", "0", "-b", "8", "--warmup", "0", "--no-progress", "-p", "1"]


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("flag", ["-e", "-a"])
def test_evaluate_or_attack_without_resume_is_an_error_not_silent_training(flag, tiny_data, tmp_path, capsys):
    status, out, err = _run(capsys, "train", tiny_data, flag, "--out", tmp_path, *FAST)
    assert status == 2 and "needs --resume" in err and flag in err, err
    assert not list(tmp_path.iterdir()), "nothing may be trained or written"


def test_evaluate_together_with_attack_is_an_error(tiny_data, tmp_path, capsys):
    status, _, err = _run(capsys, "train", tiny_data, "-e", "-a", "--resume", tmp_path / "x.pth.tar")
    assert status == 2 and "exclusive" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--use-vit", "--model", "resnet18"], "conflicting model flags"),
        (["--use-custom-conv", "--use-vit"], "SimpleNet only"),
        (["--device", "cpu", "--gpu", "0"], "not both"),
        (["--resume", "no/such/checkpoint.pth.tar"], "no checkpoint at no/such/checkpoint.pth.tar"),
        (["-b", "0"], "-b must be >= 1, got 0"),
    ],
)
def test_bad_command_lines_exit_2_naming_the_culprit(argv, message, tiny_data, tmp_path, capsys):
    status, _, err = _run(capsys, "train", tiny_data, "--out", tmp_path, *FAST, *argv)
    assert status == 2 and message in err, err


def test_missing_dataset_folder_is_named(tmp_path, capsys):
    status, _, err = _run(capsys, "train", tmp_path / "nowhere", "--out", tmp_path)
    assert status == 2 and "nowhere" in err and "miniplaces synth" in err


def _flip_top1(model: torch.nn.Module, root: Path) -> float:
    """Independent recomputation of the course's `-e`: every val image and its mirror, logits averaged."""
    val = MiniPlaces(root, "val", transform=val_transform())
    x = torch.stack([val[i][0] for i in range(len(val))])
    y = torch.tensor([val[i][1] for i in range(len(val))])
    model.eval()
    with torch.no_grad():
        logits = model(x) + model(x.flip(3))
    return 100.0 * (logits.argmax(1) == y).float().mean().item()


@pytest.mark.slow
def test_train_one_epoch_then_evaluate_attack_and_resume(tiny_data, tmp_path, capsys):
    status, out, _ = _run(capsys, "train", tiny_data, "--epochs", "1", "--out", tmp_path, "--lr", "0.01", *FAST)
    assert status == 0
    (run_dir,) = tmp_path.iterdir()
    assert re.fullmatch(r"\d{8}-\d{6}-simplenet", run_dir.name), f"run folder {run_dir.name!r}"
    assert "Epoch: [1][0/3]" in out and "******Acc@1" in out, "course-format lines missing from the output"
    ckpt_path = run_dir / "models" / CHECKPOINT_NAME
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert set(COURSE_KEYS) <= set(ckpt) and ckpt["epoch"] == 1 and ckpt["model_arch"] == "simplenet"
    assert (run_dir / "models" / BEST_NAME).is_file() and (run_dir / "curves.png").is_file()

    status, out, _ = _run(capsys, "train", tiny_data, "-e", "--resume", ckpt_path, "-j", "0")
    assert status == 0
    reported = float(re.search(r"val top-1 ([\d.]+)%", out).group(1))
    model = SimpleNet(num_classes=3)
    model.load_state_dict(ckpt["state_dict"])
    expected = _flip_top1(model, tiny_data)
    assert reported == pytest.approx(expected, abs=0.01), f"-e printed {reported}, recomputed {expected}"

    status, out, _ = _run(capsys, "train", tiny_data, "-a", "--resume", ckpt_path, "-j", "0")
    adversarial = float(re.search(r"adversarial val top-1 ([\d.]+)%", out).group(1))
    assert status == 0 and 0.0 <= adversarial <= 100.0

    status, out, _ = _run(capsys, "train", tiny_data, "--resume", ckpt_path, "--epochs", "2", "--lr", "0.01", *FAST)
    assert status == 0 and "is complete (1 of 1 epochs)" in out and "cannot be extended" in out, out
    torch.save(ckpt | {"config": ckpt["config"] | {"epochs": 2}}, ckpt_path)  # as if a 2-epoch run stopped after 1
    status, _, _ = _run(capsys, "train", tiny_data, "--resume", ckpt_path, "--epochs", "2", "--lr", "0.01", *FAST)
    assert status == 0
    assert [p.name for p in tmp_path.iterdir()] == [run_dir.name], "a resume continues in the checkpoint's run folder"
    assert torch.load(ckpt_path, weights_only=True)["epoch"] == 2
    with (run_dir / "metrics.csv").open() as fh:
        assert [row["epoch"] for row in csv.DictReader(fh)] == ["1", "2"]


def test_synth_writes_the_miniplaces_layout(tmp_path, capsys):
    status, out, _ = _run(capsys, "synth", tmp_path / "s", "--num-classes", "2", "--train-per-class", "3",
                          "--val-per-class", "2")  # fmt: skip
    assert status == 0 and "synthetic" in out.lower()
    assert len((tmp_path / "s" / "train.txt").read_text().splitlines()) == 6
    assert len((tmp_path / "s" / "val.txt").read_text().splitlines()) == 4
    assert len(MiniPlaces(tmp_path / "s", "train")) == 6


def test_download_failure_is_one_clear_message(tmp_path, capsys, monkeypatch):
    import impl.data

    def offline(root):
        raise impl.data.DownloadError(f"cannot reach the MiniPlaces server; put data.tar.gz in {root}")

    monkeypatch.setattr(impl.data, "download", offline)
    status, _, err = _run(capsys, "download", tmp_path)
    assert status == 2 and "cannot reach" in err and str(tmp_path) in err and "Traceback" not in err


@pytest.mark.slow
def test_demo_trains_evaluates_and_writes_a_report_with_curves(tiny_data, tmp_path, capsys):
    status, out, _ = _run(capsys, "demo", "--synth-root", tiny_data, "--epochs", "1", "-b", "8", "-j", "0",
                          "--out", tmp_path, "--no-progress")  # fmt: skip
    assert status == 0
    (run_dir,) = tmp_path.iterdir()
    report = (run_dir / "report.md").read_text()
    assert "SYNTHETIC" in report and "](curves.png)" in report and (run_dir / "curves.png").is_file()
    assert re.search(r"\| 1 \| [\d.e-]+ \| [\d.]+ \|", report), "the per-epoch table lacks epoch 1"
    top1 = float(re.search(r"top-1 ([\d.]+)%\*\*", report).group(1))
    model = SimpleNet(num_classes=3)
    model.load_state_dict(torch.load(run_dir / "models" / BEST_NAME, weights_only=True)["state_dict"])
    assert top1 == pytest.approx(_flip_top1(model, tiny_data), abs=0.01), "the report's flip top-1 is not the model's"
    assert f"report: {run_dir / 'report.md'}" in out


@pytest.mark.parametrize("name", MODELS)
def test_every_model_choice_builds_with_the_requested_class_count(name):
    model = build_model(name, 7).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 128, 128)).shape == (1, 7)


def test_python_dash_m_impl_is_the_command_line(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["python -m impl", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("impl", run_name="__main__")
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and all(cmd in out for cmd in ("train", "synth", "download", "demo"))


def test_resume_with_another_batch_size_is_a_one_line_error_naming_the_flag(tiny_data, tmp_path, capsys):
    model = SimpleNet(num_classes=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    config = dataclasses.asdict(TrainConfig(model_arch="simplenet", epochs=2, warmup=0, batch_size=32, lr=0.01))
    state = {"epoch": 1, "model_arch": "simplenet", "state_dict": model.state_dict(), "best_acc1": 10.0,
             "optimizer": opt.state_dict(), "scheduler": {}, "best_metric": "val_top1", "config": config}  # fmt: skip
    save_checkpoint(state, tmp_path, is_best=False)
    status, _, err = _run(capsys, "train", tiny_data, "--resume", tmp_path / CHECKPOINT_NAME, "--epochs", "2",
                          "--lr", "0.01", *FAST)  # fmt: skip
    assert status == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "batch_size=32" in err and "pass -b 32" in err and str(tmp_path / CHECKPOINT_NAME) in err, err


def test_a_corrupt_jpeg_met_in_a_loader_worker_is_one_line_naming_the_file_and_line(tiny_data, tmp_path, capsys):
    root = shutil.copytree(tiny_data, tmp_path / "data")
    listed = [line.split()[0] for line in (root / "train.txt").read_text().splitlines()]
    for name in listed:  # every train batch fails, so the first one does, inside the worker process
        (root / "images" / name).write_bytes(b"\xff\xd8\xff\xe0 cut short")
    status, _, err = _run(capsys, "train", root, "--epochs", "1", "--out", tmp_path / "runs", *FAST, "-j", "1")
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and "Traceback" not in err, err
    named = re.search(r"images/(\S+\.jpg): corrupt JPEG .*\(listed at (\S+) line (\d+)\)", lines[0])
    assert named is not None, lines[0]
    assert named.group(2) == str(root / "train.txt") and listed[int(named.group(3)) - 1] == named.group(1), lines[0]


@pytest.mark.parametrize("culprit", ["--synth-root", "--out"])
def test_demo_data_and_output_errors_are_one_line_naming_the_folder(culprit, tiny_data, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("not a dataset")
    out = tmp_path / "out.txt"
    out.write_text("a file, not a folder")
    argv = {"--synth-root": ["--synth-root", mine, "--out", tmp_path / "runs"],
            "--out": ["--synth-root", tiny_data, "--out", out]}[culprit]  # fmt: skip
    status, _, err = _run(capsys, "demo", *argv, "--epochs", "1", "-j", "0", "--no-progress")
    culprit_path = mine if culprit == "--synth-root" else out
    assert status == 2 and len(err.strip().splitlines()) == 1 and str(culprit_path) in err, err
    assert (mine / "thesis.tex").read_text() == "not a dataset", "the demo wrote over a folder it does not own"


def test_train_command_returns_the_run_folder_it_wrote(tiny_data, tmp_path):
    """What the demo (and a notebook) uses instead of guessing the new folder from a directory listing."""
    from impl.cli import build_parser, train_command

    (tmp_path / "earlier-run").mkdir()
    args = build_parser().parse_args(["train", str(tiny_data), "--epochs", "1", "--out", str(tmp_path), *FAST])
    status, run_dir = train_command(args)
    assert status == 0 and run_dir is not None and run_dir.parent == tmp_path and run_dir.name != "earlier-run"
    assert (run_dir / "models" / "checkpoint.pth.tar").is_file(), sorted(run_dir.rglob("*"))
