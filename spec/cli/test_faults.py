"""What a new user trips over, each found by trying the command line with faults and bad input: one line naming the
culprit (never a traceback, never torch's own page of text), resumes that tell the truth, outputs never overwritten,
log lines printed once, and results that do not depend on -j."""

from __future__ import annotations

import dataclasses
import errno
import os
import pty
import sys
import threading
from pathlib import Path

import pytest
import torch

from impl.cli import main
from impl.models import SimpleNet
from impl.train import CHECKPOINT_NAME, TrainConfig, lock_run_folder, save_checkpoint
from spec.cli.test_cli import FAST, _run


def _one_line(status: int, err: str, *needles: object) -> None:
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and "Traceback" not in err and "pytorch.org/docs" not in err, (
        f"status {status}: {err}"
    )
    for needle in needles:
        assert str(needle) in lines[0], f"{needle!r} not in {lines[0]!r}"


@pytest.fixture(scope="module")
def finished(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """checkpoint.pth.tar of a finished 1-epoch run."""
    out = tmp_path_factory.mktemp("finished")
    assert main(["train", str(tiny_data), "--epochs", "1", "--lr", "0.01", "--out", str(out), *FAST]) == 0
    (run_dir,) = out.iterdir()
    return run_dir / "models" / CHECKPOINT_NAME


def _half_done(tmp_path: Path, epochs: int = 2, num_classes: int = 3, **state_changes) -> Path:
    """A SimpleNet checkpoint of an `epochs`-epoch run (-b 8, --lr 0.01, --warmup 0) stopped after epoch 1."""
    model = SimpleNet(num_classes=num_classes)
    config = TrainConfig(model_arch="simplenet", epochs=epochs, warmup=0, batch_size=8, lr=0.01)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=config.momentum, weight_decay=config.weight_decay)
    state = {"epoch": 1, "model_arch": "simplenet", "state_dict": model.state_dict(), "best_acc1": 10.0,
             "optimizer": opt.state_dict(), "scheduler": {}, "best_metric": "val_top1",
             "config": dataclasses.asdict(config)} | state_changes  # fmt: skip
    save_checkpoint(state, tmp_path, is_best=False)
    return tmp_path / CHECKPOINT_NAME


# ---------------------------------------------------------------------------------------------------------------------
# log lines


def _drain(fd: int, chunks: list[bytes]) -> None:
    """Read a pty's primary side until the secondary side closes (so writers never block on a full buffer)."""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: every secondary descriptor closed
            return
        if not chunk:
            return
        chunks.append(chunk)


def test_each_log_line_is_printed_once_under_a_pseudo_terminal(tiny_data, tmp_path, monkeypatch):
    """stdout and stderr on one terminal, progress bars on: tqdm's logging redirect used to add a handler to the
    root logger, which printed every line a second time on stderr."""
    primary, secondary = pty.openpty()
    chunks: list[bytes] = []
    reader = threading.Thread(target=_drain, args=(primary, chunks), daemon=True)
    reader.start()
    with open(secondary, "w", buffering=1, closefd=False) as terminal:
        assert terminal.isatty()
        monkeypatch.setattr(sys, "stdout", terminal)
        monkeypatch.setattr(sys, "stderr", terminal)
        status = main(["train", str(tiny_data), "--epochs", "1", "--out", str(tmp_path), "-j", "0", "-b", "8",
                       "--warmup", "0", "-p", "1"])  # fmt: skip
        terminal.flush()
        monkeypatch.undo()
    os.close(secondary)
    reader.join(30)
    os.close(primary)
    text = b"".join(chunks).decode(errors="replace").replace("\r", "\n")
    assert status == 0, text
    for line in ("Epoch: [1][0/3]", "Epoch: [1][2/3]", "[Training]: Epoch 1 finished", "******Acc@1"):
        count = sum(1 for row in text.splitlines() if row.lstrip().startswith(line))
        assert count == 1, f"{line!r} printed {count} times under a terminal:\n{text}"


# ---------------------------------------------------------------------------------------------------------------------
# resumes that tell the truth


def test_resuming_a_finished_run_says_it_is_complete_and_changes_nothing(tiny_data, finished, capsys):
    run_dir = finished.parent.parent
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    status, out, err = _run(capsys, "train", tiny_data, "--resume", finished, *FAST)  # default --epochs 90
    assert status == 0 and f"{finished} is complete (1 of 1 epochs)" in out and "-e --resume" in out, (out, err)
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize(("flag", "value", "saved"), [("--wd", "0.0", "0.0001"), ("--momentum", "0.5", "0.9")])
def test_resume_with_another_decay_or_momentum_is_refused_naming_the_flag(tiny_data, tmp_path, capsys, flag, value,
                                                                           saved):  # fmt: skip
    ckpt = _half_done(tmp_path)
    status, _, err = _run(capsys, "train", tiny_data, "--resume", ckpt, "--epochs", "2", "--lr", "0.01", *FAST,
                          flag, value)  # fmt: skip
    _one_line(status, err, ckpt, f"pass {flag} {saved}")


def test_a_second_training_into_a_busy_run_folder_is_one_line(tiny_data, tmp_path, capsys):
    ckpt = _half_done(tmp_path / "run" / "models")
    with lock_run_folder(tmp_path / "run"):
        status, _, err = _run(capsys, "train", tiny_data, "--resume", ckpt, "--epochs", "2", "--lr", "0.01", *FAST)
    _one_line(status, err, tmp_path / "run", "in use by another training")


@pytest.mark.slow
def test_ctrl_c_names_the_checkpoint_to_resume_from(tiny_data, tmp_path, capsys, monkeypatch):
    from impl import train as engine

    real, calls = engine.train_one_epoch, []

    def ctrl_c_in_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "train_one_epoch", ctrl_c_in_epoch_2)
    status, _, err = _run(capsys, "train", tiny_data, "--epochs", "2", "--out", tmp_path, *FAST)
    (run_dir,) = tmp_path.iterdir()
    assert status == 130 and f"--resume {run_dir / 'models' / CHECKPOINT_NAME}" in err, err


# ---------------------------------------------------------------------------------------------------------------------
# disk full, unwritable or misnamed --out


@pytest.mark.slow
def test_a_full_disk_is_one_line_naming_the_file_and_keeps_the_last_checkpoint(tiny_data, tmp_path, capsys,
                                                                                monkeypatch):  # fmt: skip
    ckpt = _half_done(tmp_path / "run" / "models")

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    status, _, err = _run(capsys, "train", tiny_data, "--resume", ckpt, "--epochs", "2", "--lr", "0.01", *FAST)
    _one_line(status, err, "no space left on the device for", tmp_path / "run")
    monkeypatch.undo()
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1


def test_an_out_that_is_a_file_or_not_writable_is_one_line(tiny_data, tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "out.txt"
    a_file.write_text("not a folder")
    status, _, err = _run(capsys, "train", tiny_data, "--epochs", "1", "--out", a_file, *FAST)
    _one_line(status, err, f"--out {a_file} is a file")

    read_only = tmp_path / "ro"
    real_mkdir = os.mkdir

    def refuse(path, *args, **kwargs):  # root ignores permission bits, so the refusal is injected
        if str(path).startswith(str(read_only)):
            raise PermissionError(errno.EROFS, "Read-only file system", str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", refuse)
    status, _, err = _run(capsys, "train", tiny_data, "--epochs", "1", "--out", read_only, *FAST)
    _one_line(status, err, read_only, "is not writable")


# ---------------------------------------------------------------------------------------------------------------------
# tracebacks and torch's text turned into one line


def test_resnet18_without_its_weights_file_names_the_flag_and_the_place(tiny_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    status, _, err = _run(capsys, "train", tiny_data, "--use-resnet18", "--out", tmp_path, *FAST)
    _one_line(status, err, "--use-resnet18", tmp_path / "torch-home")


@pytest.mark.parametrize("content", [None, b"\x00garbage\xff" * 40])
def test_missing_or_garbage_weights_file_is_one_line(tiny_data, tmp_path, capsys, content):
    weights = tmp_path / "w.pth"
    if content is not None:
        weights.write_bytes(content)
    status, _, err = _run(capsys, "train", tiny_data, "--model", "resnet18", "--weights", weights, *FAST)
    _one_line(status, err, f"--weights {weights}")


def test_weights_for_another_model_than_resnet18_is_refused(tiny_data, tmp_path, capsys):
    status, _, err = _run(capsys, "train", tiny_data, "--model", "vit", "--weights", tmp_path / "w.pth", *FAST)
    _one_line(status, err, "--weights applies to resnet18")


@pytest.mark.parametrize("kind", ["random bytes", "a pickle of Python objects"])
def test_resume_of_something_that_is_not_a_checkpoint_is_one_line_without_torchs_url(tiny_data, tmp_path, capsys,
                                                                                        kind):  # fmt: skip
    path = tmp_path / "x.pth.tar"
    if kind == "random bytes":
        path.write_bytes(os.urandom(4096))
    else:
        torch.save({"state_dict": {}, "helper": dataclasses.asdict}, path)
    status, _, err = _run(capsys, "train", tiny_data, "-e", "--resume", path, *FAST)
    _one_line(status, err, path, "not a readable checkpoint")


def test_checkpoint_with_another_class_count_says_both_counts(tiny_data, tmp_path, capsys):
    ckpt = _half_done(tmp_path, num_classes=100)
    status, _, err = _run(capsys, "train", tiny_data, "-e", "--resume", ckpt, *FAST)
    _one_line(status, err, ckpt, "100 classes", "the data in", "has 3 classes (categories.txt)")


def test_checkpoint_of_another_architecture_says_what_it_holds_and_what_the_flags_ask(tiny_data, tmp_path, capsys):
    ckpt = _half_done(tmp_path)
    status, _, err = _run(capsys, "train", tiny_data, "-e", "--resume", ckpt, "--model", "vit", *FAST)
    _one_line(status, err, ckpt, "model_arch='simplenet'", "the flags ask for vit")


def test_nan_weights_are_refused_naming_the_tensor_not_evaluated(tiny_data, tmp_path, capsys):
    model = SimpleNet(num_classes=3)
    state = model.state_dict()
    state["fc.weight"][1, 2] = float("nan")
    ckpt = _half_done(tmp_path, state_dict=state)
    status, out, err = _run(capsys, "train", tiny_data, "-e", "--resume", ckpt, *FAST)
    _one_line(status, err, ckpt, "'fc.weight' holds 1 NaN/inf")
    assert "val top-1" not in out


# ---------------------------------------------------------------------------------------------------------------------
# messages name the flag the user typed


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["-j", "-1"], "-j must be >= 0"),
        (["--workers", "-1"], "--workers must be >= 0"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--momentum", "1.5"], "--momentum must be in [0, 1)"),
        (["--wd", "-1"], "--wd must be >= 0"),
        (["-p", "0"], "-p must be >= 1"),
        (["-a", "--resume", "CKPT", "--attack-eps", "-0.1"], "--attack-eps must be"),
        (["-a", "--resume", "CKPT", "--attack-figures", "-1"], "--attack-figures must be >= 0"),
        (["--adv-train", "pgd", "--adv-alpha", "-1"], "--adv-alpha must be > 0"),
        (["--start-epoch", "5", "--epochs", "3"], "--start-epoch must be in [0, --epochs 3]"),
    ],
)
def test_bad_values_are_reported_with_the_flag_not_the_config_field(tiny_data, finished, tmp_path, capsys, argv, flag):
    argv = [str(finished) if a == "CKPT" else a for a in argv]
    status, _, err = _run(capsys, "train", tiny_data, "--out", tmp_path, *FAST, *argv)
    _one_line(status, err, flag)
    assert "Config" not in err and "AttackSpec" not in err, err


# ---------------------------------------------------------------------------------------------------------------------
# outputs never overwritten


@pytest.mark.slow
def test_a_second_attack_of_one_checkpoint_writes_beside_the_first(tiny_data, finished, capsys):
    run_dir = finished.parent.parent
    flags = ["-a", "--resume", finished, "--attack-steps", "1", "--attack-figures", "1", *FAST]
    status, out, _ = _run(capsys, "train", tiny_data, *flags)
    assert status == 0 and f"report: {run_dir / 'attack.md'}" in out
    first = (run_dir / "attack.md").read_text(), (run_dir / "attack" / "attack_0.png").read_bytes()
    status, out, _ = _run(capsys, "train", tiny_data, *flags)
    assert status == 0 and f"report: {run_dir / 'attack-2.md'}" in out, out
    assert ((run_dir / "attack.md").read_text(), (run_dir / "attack" / "attack_0.png").read_bytes()) == first
    assert "](attack-2/attack_0.png)" in (run_dir / "attack-2.md").read_text()
    assert (run_dir / "attack-2" / "attack_0.png").is_file()


# ---------------------------------------------------------------------------------------------------------------------
# results independent of -j; course compatibility


@pytest.mark.slow
def test_the_same_seed_gives_bit_identical_runs_with_zero_or_two_workers(tiny_data, tmp_path, capsys):
    """The real augmentation (flip, colour, rotation, crop) seeded per (seed, epoch, sample): -j cannot change it."""
    states = []
    for workers in ("0", "2"):
        out = tmp_path / f"j{workers}"
        status, _, err = _run(capsys, "train", tiny_data, "--epochs", "1", "--out", out, *FAST, "-j", workers)
        assert status == 0, err
        (run_dir,) = out.iterdir()
        states.append(torch.load(run_dir / "models" / CHECKPOINT_NAME, weights_only=True)["state_dict"])
    diff = max((states[0][k].float() - states[1][k].float()).abs().max().item() for k in states[0])
    assert diff == 0.0, f"-j 0 and -j 2 differ by max abs {diff:.3e}"


def test_a_course_checkpoint_naming_its_architecture_vit_evaluates_as_the_vit(tiny_data, tmp_path, capsys):
    from impl.models import SimpleViT

    vit = SimpleViT(num_classes=3)
    path = tmp_path / "course.pth.tar"
    torch.save({"epoch": 5, "model_arch": "ViT", "state_dict": vit.state_dict(), "best_acc1": 1.0}, path)
    status, out, err = _run(capsys, "train", tiny_data, "-e", "--resume", path, *FAST)
    assert status == 0 and "val top-1" in out, err


def test_patch_size_zero_is_a_clear_error():
    from impl.models import SimpleViT

    with pytest.raises(ValueError, match="patch_size must be >= 1, got 0"):
        SimpleViT(patch_size=0)


def test_the_robustness_report_is_callable_and_never_overwrites_an_earlier_one(tiny_data, tmp_path):
    """impl.robustness is what `-a` runs; called twice on one run folder it writes attack.md, then attack-2.md."""
    from impl.data import MiniPlaces, val_transform
    from impl.robustness import robustness_report
    from impl.train import make_eval_loader

    torch.manual_seed(0)
    loader = make_eval_loader(MiniPlaces(tiny_data, "val", transform=val_transform()), 6)
    written = []
    for _ in range(2):
        report, main, markdown = robustness_report(
            SimpleNet(num_classes=3).eval(), loader, torch.device("cpu"), tmp_path, steps=1, max_batches=1, figures=1
        )
        written.append(markdown)
        assert report.n == 6 and main == "pgd-1 eps=0.1" and f"]({markdown.stem}/attack_0.png)" in markdown.read_text()
    assert [p.name for p in written] == ["attack.md", "attack-2.md"]
    assert (tmp_path / "attack" / "attack_0.png").is_file() and (tmp_path / "attack-2" / "attack_0.png").is_file()


def test_a_failed_attack_leaves_no_empty_report_behind(tiny_data, tmp_path, monkeypatch):
    """The report's name is claimed before the attack runs; an attack that fails gives the name back."""
    from impl import attack
    from impl.data import MiniPlaces, val_transform
    from impl.robustness import robustness_report
    from impl.train import make_eval_loader

    def broken(*args, **kwargs):
        raise RuntimeError("the attack failed")

    monkeypatch.setattr(attack, "evaluate_robustness", broken)
    loader = make_eval_loader(MiniPlaces(tiny_data, "val", transform=val_transform()), 6)
    with pytest.raises(RuntimeError, match="the attack failed"):
        robustness_report(SimpleNet(num_classes=3).eval(), loader, torch.device("cpu"), tmp_path, steps=1)
    assert list(tmp_path.iterdir()) == [], f"left {list(tmp_path.iterdir())}"


# ---------------------------------------------------------------------------------------------------------------------
# review fixes: records never destroyed, only our own errors become one-liners, flags that would be ignored


def test_resuming_an_older_snapshot_into_its_run_folder_is_refused_and_keeps_model_best(tiny_data, tmp_path, capsys):
    """`--resume run/models/epoch1.pth.tar` continues in `run/`, whose checkpoint is at epoch 2: it would overwrite
    that checkpoint and the better model_best with the snapshot's lower best score."""
    models = tmp_path / "run" / "models"
    later = _half_done(models, epochs=3, epoch=2, best_acc1=90.0)
    (models / "model_best.pth.tar").write_bytes(later.read_bytes())
    snapshot = models / "epoch1.pth.tar"
    snapshot.write_bytes(_half_done(tmp_path / "snap", epochs=3).read_bytes())
    before = {p: p.read_bytes() for p in models.iterdir()}
    status, _, err = _run(capsys, "train", tiny_data, "--resume", snapshot, "--epochs", "3", "--lr", "0.01", *FAST)
    _one_line(status, err, "epoch 2, past", "pass --out DIR to branch into a new folder")
    assert {p: p.read_bytes() for p in models.iterdir()} == before, "the refused resume changed the run's models"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock", "models"], "it wrote into the run folder"


def test_a_bug_inside_training_keeps_its_traceback(tiny_data, tmp_path, monkeypatch):
    """Only our own error types become one-line usage errors: a ValueError from a bug is not dressed up as one."""
    from impl import train

    def buggy(*args, **kwargs):
        raise ValueError("a bug in the loop")

    monkeypatch.setattr(train, "fit", buggy)
    with pytest.raises(ValueError, match="a bug in the loop"):
        main(["train", str(tiny_data), "--epochs", "1", "--out", str(tmp_path), *FAST])


def test_a_batch_larger_than_the_training_split_names_the_flag(tiny_data, tmp_path, capsys):
    status, _, err = _run(capsys, "train", tiny_data, "--epochs", "1", "--out", tmp_path, *FAST, "-b", "64")
    _one_line(status, err, "-b must be at most the training split's 24 images", "got 64")


def test_attack_steps_zero_is_refused(tiny_data, finished, capsys):
    status, _, err = _run(capsys, "train", tiny_data, "-a", "--resume", finished, "--attack-steps", "0", *FAST)
    _one_line(status, err, "--attack-steps and --attack-batches must be >= 1, got 0")


def test_more_workers_than_cpus_are_capped_with_one_log_line(tiny_data, monkeypatch, caplog):
    from impl import cli

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    args = cli.build_parser().parse_args(["train", str(tiny_data), "-j", "8"])
    with caplog.at_level("INFO", logger="impl.cli"):
        cfg = cli._train_config(args, "simplenet")
    assert cfg.workers == 2, cfg.workers
    assert [r.getMessage() for r in caplog.records] == ["-j 8 capped at the 2 CPUs this process may use"]


@pytest.mark.parametrize(("flags", "sync_bn"), [((), True), (("--no-sync-bn",), False)])
def test_sync_batchnorm_is_on_by_default_and_no_sync_bn_turns_it_off(tiny_data, flags, sync_bn):
    from impl import cli

    args = cli.build_parser().parse_args(["train", str(tiny_data), *flags])
    assert cli._train_config(args, "resnet18").sync_bn is sync_bn


def test_resuming_a_complete_run_with_another_lr_says_the_flag_is_ignored(tiny_data, finished, capsys):
    status, out, err = _run(capsys, "train", tiny_data, "--resume", finished, *FAST)  # default --lr 0.1; the run's 0.01
    assert status == 0 and "is complete" in out and "Ignored, as nothing trains: --lr 0.1 (the run's: 0.01)" in out, (
        out,
        err,
    )
