"""What a resume must not do to a run folder: cut its record early, change settings behind the optimizer's back, share
the folder with another training, keep a kill's debris, or lie about what it loaded; and what fit promises instead."""

from __future__ import annotations

import csv
import dataclasses
import errno
import os

import pytest
import torch

from impl.train import (
    CHECKPOINT_NAME,
    LOCK_NAME,
    CheckpointError,
    RunFolderBusy,
    SampleSeeded,
    TrainingInterrupted,
    WeightsMismatch,
    fit,
    load_checkpoint,
    load_weights,
    lock_run_folder,
    make_eval_loader,
    make_train_loader,
    warmup_cosine_lr,
)
from spec.train.conftest import NoisyDataset, quiet_config, tensor_dataset, tiny_net
from spec.train.test_checkpoint import _max_diff, _run, _stopped_after_one_epoch

CPU = torch.device("cpu")


def _epochs(run_dir) -> list[int]:
    with (run_dir / "metrics.csv").open() as fh:
        return [int(row["epoch"]) for row in csv.DictReader(fh)]


def test_resuming_an_older_snapshot_into_a_later_run_folder_is_refused_and_destroys_nothing(tmp_path):
    """A finished 3-epoch run, resumed from a copy of its epoch-1 checkpoint into its own folder, would overwrite the
    later checkpoint and the better model_best (the snapshot's best score is lower): refused before any write, and the
    message says how to branch instead."""
    cfg = quiet_config(epochs=3)
    snapshot = tmp_path / "epoch1.pth.tar"
    _run(dataclasses.replace(cfg, epochs=1), run_dir=tmp_path / "first")
    ckpt = torch.load(tmp_path / "first" / "models" / CHECKPOINT_NAME, weights_only=True)
    torch.save(ckpt | {"config": dataclasses.asdict(cfg), "best_acc1": -1.0}, snapshot)
    run_dir = tmp_path / "run"
    _run(cfg, run_dir=run_dir)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != LOCK_NAME}
    assert (run_dir / "models" / "model_best.pth.tar") in before

    with pytest.raises(CheckpointError, match=r"epoch 3, past .*epoch 1.*pass --out DIR to branch") as info:
        _run(cfg, run_dir=run_dir, resume=snapshot)
    after = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != LOCK_NAME}
    changed = sorted(str(p.relative_to(run_dir)) for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    assert not changed, f"the refused resume changed {changed} ({info.value})"
    assert _epochs(run_dir) == [1, 2, 3]


def test_resuming_an_older_snapshot_into_a_new_folder_branches(tmp_path):
    """The refusal's advice works: the same snapshot resumes into another folder and trains the remaining epochs."""
    cfg = quiet_config(epochs=2)
    path = _stopped_after_one_epoch(cfg, tmp_path)
    _, result = _run(cfg, run_dir=tmp_path / "branch", resume=path)
    assert [int(r["epoch"]) for r in result.history] == [2], result.history


@pytest.mark.parametrize(("field", "value", "flag"), [("weight_decay", 0.0, "--wd"), ("momentum", 0.5, "--momentum")])
def test_resume_with_another_decay_or_momentum_is_refused_naming_the_flag(tmp_path, field, value, flag):
    """The restored optimizer keeps its param groups' values, so a new value would be recorded but never used."""
    saved = quiet_config(epochs=2)
    path = _stopped_after_one_epoch(saved, tmp_path)
    with pytest.raises(CheckpointError) as info:
        _run(dataclasses.replace(saved, **{field: value}), resume=path)
    assert f"pass {flag} {getattr(saved, field)}" in str(info.value) and str(path) in str(info.value), info.value


def test_a_course_checkpoint_without_config_is_checked_against_its_optimizer_groups(tmp_path):
    model = tiny_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.5, weight_decay=1e-4)
    path = tmp_path / "course.pth.tar"
    torch.save({"epoch": 1, "model_arch": "CNN", "state_dict": model.state_dict(), "best_acc1": 1.0,
                "optimizer": opt.state_dict()}, path)  # fmt: skip
    with pytest.raises(CheckpointError, match="momentum=0.5.*pass --momentum 0.5"):
        _run(quiet_config(epochs=2), resume=path)


def test_a_second_training_into_a_locked_run_folder_is_refused_before_writing(tmp_path):
    with lock_run_folder(tmp_path):
        with pytest.raises(RunFolderBusy, match=rf"{tmp_path}.*in use.*pid {os.getpid()}"):
            _run(quiet_config(epochs=1), run_dir=tmp_path)
        assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME], "the refused run wrote into the folder"
    _run(quiet_config(epochs=1), run_dir=tmp_path)  # released: the folder is usable again
    assert _epochs(tmp_path) == [1]


def test_stale_temporaries_of_a_killed_write_are_removed_and_live_files_kept(tmp_path):
    resume = _stopped_after_one_epoch(quiet_config(epochs=2), tmp_path)
    stale = [tmp_path / "models" / f".{CHECKPOINT_NAME}.99999.tmp", tmp_path / ".metrics.csv.99999.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    keep = tmp_path / "notes.tmp"  # not hidden: not ours
    keep.write_text("mine")
    _run(quiet_config(epochs=2), run_dir=tmp_path, resume=resume)
    assert not any(p.exists() for p in stale) and keep.read_text() == "mine"


def test_an_interrupt_names_the_last_committed_checkpoint(tmp_path):
    cfg = quiet_config(epochs=3)
    with pytest.raises(TrainingInterrupted) as info:
        _run(cfg, run_dir=tmp_path, train_set=NoisyDataset(tensor_dataset(64), fail_at=64 + 10))
    assert info.value.checkpoint == tmp_path / "models" / CHECKPOINT_NAME, info.value
    assert load_checkpoint(info.value.checkpoint)["epoch"] == 1
    with pytest.raises(TrainingInterrupted) as info:
        _run(cfg, run_dir=tmp_path / "none", train_set=NoisyDataset(tensor_dataset(64), fail_at=3))
    assert info.value.checkpoint is None, "nothing was committed, so there is nothing to resume from"


def test_a_complete_checkpoint_trains_nothing_and_leaves_the_folder_alone(tmp_path):
    cfg = quiet_config(epochs=1)
    _run(cfg, run_dir=tmp_path)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    model, result = _run(cfg, run_dir=tmp_path, resume=tmp_path / "models" / CHECKPOINT_NAME)
    assert result.history == [] and result.start_epoch == 1
    after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file() and p.name != LOCK_NAME}
    assert after == {p: t for p, t in before.items() if p.name != LOCK_NAME}, "a finished resume rewrote files"


def test_start_epoch_without_resume_numbers_epochs_and_positions_the_schedule_there(tmp_path, monkeypatch):
    from impl import train as engine

    cfg = quiet_config(epochs=3, warmup=1)
    seen = []
    real = engine.train_one_epoch

    def spy(net, loader, optimizer, scheduler, **kw):
        seen.append((kw["epoch"], optimizer.param_groups[0]["lr"]))
        return real(net, loader, optimizer, scheduler, **kw)

    monkeypatch.setattr(engine, "train_one_epoch", spy)
    val = make_eval_loader(tensor_dataset(64), 32)
    train = make_train_loader(NoisyDataset(tensor_dataset(64)), cfg)
    result = fit(tiny_net(), train, val, cfg, device=CPU, start_epoch=2)
    iters = 64 // cfg.batch_size
    assert [r["epoch"] for r in result.history] == [3]
    assert seen == [(2, pytest.approx(warmup_cosine_lr(2 * iters, cfg.lr, iters, 3 * iters, cfg.eta_min)))], seen


def test_warmup_longer_than_the_run_is_all_warmup_as_in_the_course():
    """The course's scheduler with warmup >= epochs never leaves its linear ramp; ours does the same."""
    cfg = quiet_config(epochs=1, warmup=5)
    opt = torch.optim.SGD(tiny_net().parameters(), lr=cfg.lr)
    from impl.train import build_scheduler

    sched = build_scheduler(opt, cfg, iters_per_epoch=4)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [cfg.eta_min + (cfg.lr - cfg.eta_min) * t / 20 for t in range(4)]
    assert lrs == pytest.approx(expected, rel=1e-12), f"{lrs} vs the linear ramp {expected}"


def test_nan_weights_are_refused_naming_the_tensor(tmp_path):
    model = tiny_net()
    state = model.state_dict()
    state["2.bias"][3] = float("inf")
    torch.save({"state_dict": state, "epoch": 1}, tmp_path / "bad.pth.tar")
    with pytest.raises(CheckpointError, match=r"bad.pth.tar: tensor '2.bias' holds 1 NaN/inf value\(s\) of 8"):
        load_checkpoint(tmp_path / "bad.pth.tar")


def test_a_class_count_mismatch_says_what_the_checkpoint_holds_and_what_the_model_has(tmp_path):
    ckpt = {"state_dict": tiny_net().state_dict(), "model_arch": "tiny"}  # a 5-way head
    other = torch.nn.Sequential(*list(tiny_net().children())[:-1], torch.nn.Linear(8, 3))
    with pytest.raises(WeightsMismatch) as info:
        load_weights(other, ckpt, "ck.pth.tar")
    assert info.value.classes == (5, 3) and "\n" not in str(info.value), str(info.value)
    assert "ck.pth.tar holds model_arch='tiny' weights (5 classes)" in str(info.value), str(info.value)


def test_samples_are_augmented_by_seed_epoch_and_index_alone():
    """The same (seed, epoch, index) reads the same noise whatever was read before; another epoch reads other noise;
    the caller's random stream is untouched."""
    data = SampleSeeded(NoisyDataset(tensor_dataset(8)), seed=3)
    first = data[5][0]
    data[2], data[7]  # other reads in between
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    again = data[5][0]
    assert torch.equal(first, again) and torch.equal(torch.rand(1), before)
    data.epoch = 1
    assert not torch.equal(data[5][0], first)


def test_training_is_bit_identical_with_zero_or_two_workers(tmp_path):
    """Through fit on an augmenting dataset: -j 0 and -j 2 give the same weights."""
    weights = []
    for workers in (0, 2):
        model, _ = _run(quiet_config(epochs=1, workers=workers))
        weights.append(model.state_dict())
    diff = _max_diff(*weights)
    assert diff == 0.0, f"-j 0 and -j 2 differ by max abs {diff:.3e}"


def test_an_enospc_while_saving_names_the_checkpoint_not_the_temporary(tmp_path, monkeypatch):
    resume = _stopped_after_one_epoch(quiet_config(epochs=2), tmp_path)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as info:
        _run(quiet_config(epochs=2), run_dir=tmp_path, resume=resume)
    assert info.value.errno == errno.ENOSPC and not info.value.filename.endswith(".tmp"), info.value
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "models" / CHECKPOINT_NAME)["epoch"] == 1, "the last checkpoint was damaged"
    assert not list(tmp_path.rglob(".*.tmp")), "temporaries left behind"


def test_run_folders_claimed_in_the_same_second_are_distinct(tmp_path):
    from impl.train import new_run_dir

    first, second = new_run_dir(tmp_path, "tiny", create=True), new_run_dir(tmp_path, "tiny", create=True)
    assert first != second and first.is_dir() and second.is_dir(), (first, second)
    assert not new_run_dir(tmp_path / "x", "tiny").exists(), "without create nothing is made"


def test_a_resume_with_another_worker_count_is_still_bit_exact(tmp_path):
    """-j is not part of what a resume fixes: 2 epochs with -j 0 equal 1 epoch with -j 0, a kill, and -j 2."""
    cfg = quiet_config(epochs=2)
    straight, _ = _run(cfg)
    with pytest.raises(KeyboardInterrupt):
        _run(cfg, run_dir=tmp_path, train_set=NoisyDataset(tensor_dataset(64), fail_at=64 + 20))
    resumed, _ = _run(
        dataclasses.replace(cfg, workers=2), run_dir=tmp_path, resume=tmp_path / "models" / CHECKPOINT_NAME
    )
    diff = _max_diff(straight.state_dict(), resumed.state_dict())
    assert diff == 0.0, f"resuming with -j 2 differs from the straight -j 0 run by max abs {diff:.3e}"


def test_unlinking_the_lock_file_does_not_hand_the_folder_to_a_second_training(tmp_path):
    """The lock is on the folder itself: deleting `.lock` (by hand, or a cleanup) leaves it held."""
    with lock_run_folder(tmp_path):
        (tmp_path / LOCK_NAME).unlink()
        with pytest.raises(RunFolderBusy, match="in use by another training"), lock_run_folder(tmp_path):
            pass
