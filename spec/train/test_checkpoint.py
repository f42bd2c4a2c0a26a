"""Checkpoints: course keys, atomic writes, weights_only loading, course compatibility, and exact resume."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import pickle
from pathlib import Path

import pytest
import torch

from impl.train import (
    BEST_NAME,
    CHECKPOINT_NAME,
    COURSE_KEYS,
    CheckpointError,
    TrainingDiverged,
    fit,
    load_checkpoint,
    make_eval_loader,
    make_train_loader,
    save_checkpoint,
    warmup_cosine_lr,
)
from spec.train.conftest import NoisyDataset, quiet_config, tensor_dataset, tiny_net

CPU = torch.device("cpu")


def _run(cfg, run_dir=None, resume=None, train_set=None, model=None):
    train_set = train_set if train_set is not None else NoisyDataset(tensor_dataset(64))
    model = model or tiny_net()
    val = make_eval_loader(tensor_dataset(64), 32)
    result = fit(model, make_train_loader(train_set, cfg), val, cfg, device=CPU, run_dir=run_dir, resume=resume)
    return model, result


def _stopped_after_one_epoch(cfg, run_dir, **ckpt_changes):
    """checkpoint.pth.tar of a `cfg` run (2 epochs or more) stopped after its first epoch, with `ckpt_changes`."""
    _run(dataclasses.replace(cfg, epochs=1), run_dir=run_dir)
    path = run_dir / "models" / CHECKPOINT_NAME
    ckpt = torch.load(path, weights_only=True)
    torch.save(ckpt | {"config": dataclasses.asdict(cfg)} | ckpt_changes, path)
    return path


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_checkpoints_carry_the_course_keys_and_best_has_no_optimizer(tmp_path):
    model, _ = _run(quiet_config(epochs=1), run_dir=tmp_path)
    ckpt = torch.load(tmp_path / "models" / CHECKPOINT_NAME, weights_only=True)
    assert set(COURSE_KEYS) <= set(ckpt), f"missing {set(COURSE_KEYS) - set(ckpt)}"
    assert (ckpt["epoch"], ckpt["model_arch"]) == (1, "tiny")
    assert _max_diff(ckpt["state_dict"], model.state_dict()) == 0.0
    best = torch.load(tmp_path / "models" / BEST_NAME, weights_only=True)
    assert "optimizer" not in best and best["best_acc1"] == ckpt["best_acc1"]
    assert not list((tmp_path / "models").glob("*.tmp")) and not list((tmp_path / "models").glob(".*")), "temp left"


def test_a_crash_while_saving_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    state = {k: 0 for k in COURSE_KEYS} | {"state_dict": {"w": torch.ones(3)}, "epoch": 1}
    save_checkpoint(state, tmp_path, is_best=False)
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")  # the engine saves into the open temporary file
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(state | {"epoch": 2}, tmp_path, is_best=True)
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME], "temporary file left behind"


def test_loading_refuses_pickled_code_naming_the_file(tmp_path):
    path = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {}, "payload": pickle.loads}, path)  # a callable: not allowed by weights_only
    with pytest.raises(CheckpointError, match="evil.pth.tar"):
        load_checkpoint(path)
    (tmp_path / "junk.pth.tar").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth.tar"):
        load_checkpoint(tmp_path / "junk.pth.tar")
    with pytest.raises(CheckpointError, match="missing.pth.tar"):
        load_checkpoint(tmp_path / "missing.pth.tar")


def test_a_course_checkpoint_resumes_with_its_weights_and_the_schedule_position(tmp_path):
    """The course saves epoch/model_arch/state_dict/best_acc1/optimizer (no scheduler), from a DDP-free model."""
    cfg = quiet_config(epochs=3)
    trained = tiny_net(seed=7)
    opt = torch.optim.SGD(trained.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    trained(torch.randn(4, 3, 8, 8)).sum().backward()
    opt.step()
    course = {"epoch": 1, "model_arch": "simplenet", "state_dict": trained.state_dict(), "best_acc1": 12.5,
              "optimizer": opt.state_dict()}  # fmt: skip
    torch.save(course, tmp_path / "course.pth.tar")
    ddp_style = course | {"state_dict": {f"module.{k}": v for k, v in trained.state_dict().items()}}
    torch.save(ddp_style, tmp_path / "ddp.pth.tar")
    assert _max_diff(load_checkpoint(tmp_path / "ddp.pth.tar")["state_dict"], trained.state_dict()) == 0.0

    model = tiny_net(seed=0)
    optimizer_seen = []
    from impl import train as engine

    real_epoch = engine.train_one_epoch

    def spy(net, loader, optimizer, scheduler, **kw):
        optimizer_seen.append((kw["epoch"], optimizer.param_groups[0]["lr"]))
        return real_epoch(net, loader, optimizer, scheduler, **kw)

    import unittest.mock as mock

    with mock.patch.object(engine, "train_one_epoch", spy):
        _, result = _run(cfg, resume=tmp_path / "course.pth.tar", model=model)
    iters = 64 // cfg.batch_size
    expected_lr = warmup_cosine_lr(1 * iters, cfg.lr, cfg.warmup * iters, cfg.epochs * iters, cfg.eta_min)
    assert optimizer_seen[0] == (1, pytest.approx(expected_lr)), "resume must start epoch 2 at step 1*iters"
    assert [r["epoch"] for r in result.history] == [2, 3] and result.start_epoch == 1


def test_killed_mid_epoch_resumes_from_the_last_complete_checkpoint_bit_exactly(tmp_path):
    """Two epochs straight vs. a run killed in the middle of epoch 2, resumed from checkpoint.pth.tar of epoch 1.

    The training set adds random noise on every read (an augmentation) so the RNG streams must be restored too.
    """
    cfg = quiet_config(epochs=2)
    straight, _ = _run(cfg, run_dir=tmp_path / "straight")

    crashed_dir = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt, match="injected"):
        _run(cfg, run_dir=crashed_dir, train_set=NoisyDataset(tensor_dataset(64), fail_at=64 + 40))
    ckpt_path = crashed_dir / "models" / CHECKPOINT_NAME
    assert load_checkpoint(ckpt_path)["epoch"] == 1, "the last complete epoch is 1"
    resumed, result = _run(cfg, run_dir=crashed_dir, resume=ckpt_path, model=tiny_net(seed=123))
    diff = _max_diff(straight.state_dict(), resumed.state_dict())
    assert diff == 0.0, f"1 + crash + resume differs from 2 straight epochs by max abs {diff:.3e}"
    assert [r["epoch"] for r in result.history] == [1, 2], "metrics.csv must hold each epoch once"
    lines = (crashed_dir / "metrics.csv").read_text().splitlines()
    assert len(lines) == 3, f"metrics.csv: {lines}"


def test_resume_from_model_best_is_refused_with_a_pointer_to_checkpoint(tmp_path):
    _run(quiet_config(epochs=1), run_dir=tmp_path)
    with pytest.raises(CheckpointError, match=f"no optimizer.*{CHECKPOINT_NAME}"):
        _run(quiet_config(epochs=2), resume=tmp_path / "models" / BEST_NAME)


def test_a_checkpoint_of_another_architecture_is_refused_naming_the_file(tmp_path):
    _run(quiet_config(epochs=1), run_dir=tmp_path)
    other = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 5))
    with pytest.raises(CheckpointError, match=r"checkpoint.pth.tar holds model_arch='tiny' weights \(5 classes\), not"):
        _run(quiet_config(epochs=2), resume=tmp_path / "models" / CHECKPOINT_NAME, model=other)


def test_resume_is_bit_exact_with_augmenting_worker_processes(tmp_path):
    """Workers draw their seeds from the epoch's RNG state, so a resumed epoch augments exactly as the straight one."""
    cfg = quiet_config(epochs=2, workers=1)
    straight, _ = _run(cfg)

    calls = []

    def stop_at_the_end_of_epoch_2(model):
        calls.append(1)
        if len(calls) == 2:  # after epoch 2 trained, before its checkpoint: as if killed there
            raise KeyboardInterrupt("injected stop")
        return {}

    train, val = NoisyDataset(tensor_dataset(64)), make_eval_loader(tensor_dataset(64), 32)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_net(), make_train_loader(train, cfg), val, cfg, device=CPU, run_dir=tmp_path,
            extra_evals=[stop_at_the_end_of_epoch_2])  # fmt: skip
    resumed, _ = _run(cfg, resume=tmp_path / "models" / CHECKPOINT_NAME, model=tiny_net(seed=5))
    diff = _max_diff(straight.state_dict(), resumed.state_dict())
    assert diff == 0.0, f"1 + resume + 1 with a worker process differs from 2 straight epochs by {diff:.3e}"


@pytest.mark.parametrize(
    ("field", "value", "flag"), [("batch_size", 32, "-b"), ("epochs", 3, "--epochs"), ("warmup", 0, "--warmup"),
                                 ("lr", 0.01, "--lr")]
)  # fmt: skip
def test_resume_with_another_schedule_setting_is_refused_naming_file_field_values_and_flag(
    tmp_path, field, value, flag
):
    saved = quiet_config(epochs=2)
    path = _stopped_after_one_epoch(saved, tmp_path)
    now = dataclasses.replace(saved, **{field: value})
    with pytest.raises(CheckpointError) as info:
        _run(now, resume=path)
    msg = str(info.value)
    want = [str(path), f"{field}={getattr(saved, field)}", f"{flag} {value}", f"pass {flag} {getattr(saved, field)}"]
    assert all(w in msg for w in want), f"{msg!r} lacks one of {want}"
    _, result = _run(saved, resume=path)  # the same settings resume
    assert [r["epoch"] for r in result.history] == [2]


def test_a_resume_selecting_best_by_another_metric_starts_the_best_afresh(tmp_path):
    """A clean run's best (val top-1) says nothing about the PGD top-1 that --adv-train selects by, and vice versa."""
    cfg = quiet_config(epochs=2)
    path = _stopped_after_one_epoch(cfg, tmp_path, best_metric="val_pgd_top1", best_acc1=100.0)
    _, result = _run(cfg, run_dir=tmp_path, resume=path)
    assert result.best_score == result.history[-1]["val_top1"], f"best {result.best_score} kept from the old metric"
    best = torch.load(tmp_path / "models" / BEST_NAME, weights_only=True)
    assert best["epoch"] == 2 and best["best_metric"] == "val_top1", "model_best was not replaced by epoch 2"


@pytest.mark.parametrize("failing", [BEST_NAME, "metrics.csv", CHECKPOINT_NAME])
def test_a_crash_in_any_epoch_save_leaves_best_and_metrics_covering_the_checkpoint(tmp_path, monkeypatch, failing):
    """checkpoint.pth.tar commits an epoch: every epoch it counts is in metrics.csv and model_best; the resume redoes
    whatever a crash cut short. Every epoch is a new best here (the metric is the epoch number)."""
    from impl.train import RunLog

    cfg = quiet_config(epochs=2, best_metric="order")
    real_save, real_csv = torch.save, RunLog._write_csv

    def save(obj, f, *args, **kwargs):
        if failing in str(f) and obj.get("epoch") == 2:
            raise OSError(f"disk full writing {f}")
        return real_save(obj, f, *args, **kwargs)

    def write_csv(self, rows):
        if failing == "metrics.csv" and any(r["epoch"] == 2 for r in rows):
            raise OSError("disk full writing metrics.csv")
        return real_csv(self, rows)

    def run(resume=None):
        val = make_eval_loader(tensor_dataset(64), 32)
        train = make_train_loader(NoisyDataset(tensor_dataset(64)), cfg)
        evals = [lambda model: {"order": float(next(calls))}]  # grows with every evaluation: always a new best
        return fit(tiny_net(), train, val, cfg, device=CPU, run_dir=tmp_path, resume=resume, extra_evals=evals)

    calls = itertools.count(1)
    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", save)
        patch.setattr(RunLog, "_write_csv", write_csv)
        with pytest.raises(OSError, match="disk full"):
            run()
    committed = load_checkpoint(tmp_path / "models" / CHECKPOINT_NAME)["epoch"]
    best = load_checkpoint(tmp_path / "models" / BEST_NAME)["epoch"]
    with (tmp_path / "metrics.csv").open() as fh:
        logged = [int(row["epoch"]) for row in csv.DictReader(fh)]
    assert best >= committed and logged[:committed] == list(range(1, committed + 1)), (
        f"after a crash writing {failing}: checkpoint at epoch {committed}, model_best {best}, metrics rows {logged}"
    )
    result = run(resume=tmp_path / "models" / CHECKPOINT_NAME)
    with (tmp_path / "metrics.csv").open() as fh:
        assert [int(row["epoch"]) for row in csv.DictReader(fh)] == [1, 2]
    assert load_checkpoint(result.best)["epoch"] == 2


def test_a_checkpoint_is_fsynced_before_it_replaces_the_old_one(tmp_path, monkeypatch):
    import os

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(f"replace {Path(b).name}") or real_replace(a, b))
    state = {k: 0 for k in COURSE_KEYS} | {"state_dict": {"w": torch.ones(3)}, "epoch": 1}
    save_checkpoint(state, tmp_path, is_best=True)
    assert events == ["fsync", f"replace {BEST_NAME}", "fsync", f"replace {CHECKPOINT_NAME}"], events


def test_divergence_right_after_a_resume_from_elsewhere_names_the_resumed_file(tmp_path):
    cfg = quiet_config(epochs=2)
    path = _stopped_after_one_epoch(cfg, tmp_path / "old")
    data = NoisyDataset(tensor_dataset(64), nan_at=1)
    with pytest.raises(TrainingDiverged) as info:
        _run(cfg, run_dir=tmp_path / "new", resume=path, train_set=data)
    assert f"the last good checkpoint is {path}" in str(info.value), str(info.value)


def test_a_channels_last_resume_is_bit_identical_to_the_straight_run(tmp_path):
    cfg = quiet_config(epochs=2, channels_last=True)
    straight, _ = _run(cfg, run_dir=tmp_path / "straight")
    path = _stopped_after_one_epoch(cfg, tmp_path / "stopped")
    resumed, result = _run(cfg, run_dir=tmp_path / "stopped", resume=path, model=tiny_net(seed=5))
    diff = _max_diff(straight.state_dict(), resumed.state_dict())
    assert diff == 0.0 and [r["epoch"] for r in result.history] == [1, 2], f"max abs {diff:.3e}"
    assert resumed[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_resuming_an_nchw_checkpoint_with_channels_last_lays_the_momentum_out_like_the_weights(tmp_path, monkeypatch):
    """An NCHW run's checkpoint holds NCHW momentum buffers; resumed with --channels-last they take the weights'
    layout (what the fused and foreach fast paths expect), and training goes on as the NCHW run would."""
    from impl import train as engine

    nchw = quiet_config(epochs=2)
    straight, _ = _run(nchw, run_dir=tmp_path / "straight")
    path = _stopped_after_one_epoch(nchw, tmp_path / "stopped")
    layouts, real = [], engine.train_one_epoch

    def spy(net, loader, optimizer, scheduler, **kw):
        layouts.extend((p.stride(), s["momentum_buffer"].stride()) for p, s in optimizer.state.items() if p.ndim == 4)
        return real(net, loader, optimizer, scheduler, **kw)

    monkeypatch.setattr(engine, "train_one_epoch", spy)
    resumed, _ = _run(dataclasses.replace(nchw, channels_last=True), run_dir=tmp_path / "stopped", resume=path)
    assert len(layouts) == 2 and all(a == b for a, b in layouts), f"(weight, momentum) strides: {layouts}"
    assert resumed[0].weight.is_contiguous(memory_format=torch.channels_last)
    diff = _max_diff(straight.state_dict(), resumed.state_dict())
    assert diff < 1e-5, f"the channels_last second epoch differs from the NCHW one by {diff:.3e}"
