"""The step loop never waits for the device: loss and accuracy stay on it and are read back only at the course's print
points and at the end of an epoch, where the non-finite-loss check happens too. On CPU the reads are counted by
wrapping every Tensor method that copies a value to the host; on CUDA torch's sync debug mode raises on any
synchronization outside those reads."""

from __future__ import annotations

import logging
import math
import sys

import pytest
import torch
from torch import Tensor

from impl import train as engine
from impl.train import (
    CHECKPOINT_NAME,
    TrainingDiverged,
    build_optimizer,
    build_scheduler,
    evaluate,
    fit,
    load_checkpoint,
    make_eval_loader,
    make_train_loader,
    train_one_epoch,
)
from spec.train.conftest import NoisyDataset, cuda_sync_errors, quiet_config, tensor_dataset, tiny_net

CPU = torch.device("cpu")
# every way a tensor's value reaches Python: each one is a device-to-host copy, and a sync, on CUDA
HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__", "__format__")


def _count_host_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Wrap the HOST_READS methods of Tensor; returns the list each call outside torch.utils.data appends its name to
    (the DataLoader's sampler turns its CPU index permutation into a list once per epoch: that never touches a
    device)."""
    calls: list[str] = []

    def counting(name: str, original):
        def wrapper(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if "torch/utils/data" not in caller.replace("\\", "/"):
                calls.append(name)
            return original(self, *args, **kwargs)

        return wrapper

    for name in HOST_READS:
        monkeypatch.setattr(Tensor, name, counting(name, getattr(Tensor, name)))
    return calls


def _epoch(cfg, train_set, monkeypatch, **kwargs) -> tuple[dict[str, float], list[str]]:
    model = tiny_net()
    optimizer = build_optimizer(model, cfg)
    loader = make_train_loader(train_set, cfg)
    scheduler = build_scheduler(optimizer, cfg, len(loader))
    calls = _count_host_reads(monkeypatch)
    try:
        metrics = train_one_epoch(model, loader, optimizer, scheduler, epoch=0, cfg=cfg, device=CPU, **kwargs)
    finally:
        monkeypatch.undo()
    return metrics, calls


@pytest.mark.parametrize(("iters", "print_freq"), [(16, 5), (16, 4), (16, 1000), (9, 1)])
def test_an_epoch_reads_the_device_only_at_print_points_and_at_the_end(iters, print_freq, monkeypatch):
    cfg = quiet_config(batch_size=4, print_freq=print_freq)
    metrics, calls = _epoch(cfg, NoisyDataset(tensor_dataset(4 * iters)), monkeypatch)
    bound = math.ceil(iters / print_freq) + 2
    assert 1 <= len(calls) <= bound, f"{len(calls)} host reads in {iters} iterations at -p {print_freq} (bound {bound})"
    assert math.isfinite(metrics["loss"]) and 0 <= metrics["top1"] <= 100, metrics
    if print_freq == 1:  # the instrument sees every read: one per print point, one for the epoch's sums
        assert len(calls) == iters + 1, calls


def test_on_log_and_tensorboard_steps_come_only_from_the_print_points(monkeypatch):
    cfg = quiet_config(batch_size=4, print_freq=3)
    logged: list[tuple[int, float, float]] = []
    _, calls = _epoch(cfg, tensor_dataset(40), monkeypatch, on_log=lambda *a: logged.append(a))
    assert [s for s, _, _ in logged] == [0, 3, 6, 9], logged
    assert all(math.isfinite(loss) and loss > 0 for _, loss, _ in logged), logged
    assert len(calls) <= math.ceil(10 / 3) + 2, calls


def test_evaluation_reads_the_device_only_at_print_points_and_at_the_end(monkeypatch):
    loader = make_eval_loader(tensor_dataset(50), 4)  # 13 batches
    calls = _count_host_reads(monkeypatch)
    result = evaluate(tiny_net(), loader, device=CPU, print_freq=5)
    monkeypatch.undo()
    assert len(calls) <= math.ceil(13 / 5) + 2, calls
    assert 0 <= result["top1"] <= 100


def test_the_course_lines_carry_the_batch_and_running_values_the_epoch_returns(caplog):
    """Every print point's running averages are those of all batches so far: each batch's values, weighted by its
    size, reproduce them, and the last line's averages are the epoch's returned metrics."""
    cfg = quiet_config(batch_size=4, print_freq=1)
    model = tiny_net()
    optimizer = build_optimizer(model, cfg)
    loader = make_train_loader(tensor_dataset(24), cfg)
    scheduler = build_scheduler(optimizer, cfg, len(loader))
    with caplog.at_level(logging.INFO, logger="impl.train"):
        metrics = train_one_epoch(model, loader, optimizer, scheduler, epoch=0, cfg=cfg, device=CPU)
    rows = [r.args for r in caplog.records if r.msg.startswith("Epoch:")]
    assert [r[1] for r in rows] == list(range(6)), rows
    for k, (value, running) in enumerate(((4, 5), (6, 7), (8, 9))):  # (loss, avg), (top1, avg), (top5, avg)
        batch = [r[value] for r in rows]
        for i, r in enumerate(rows):
            mean = sum(batch[: i + 1]) / (i + 1)  # equal batch sizes
            assert r[running] == pytest.approx(mean, abs=1e-9), f"line {i}, column {k}: {r[running]} vs {mean}"
    last = rows[-1]
    assert (last[5], last[7], last[9]) == pytest.approx((metrics["loss"], metrics["top1"], metrics["top5"]))


def test_a_nan_between_print_points_stops_at_the_next_read_naming_its_own_iteration(tmp_path, caplog):
    """-p 3 over 8 iterations reads at 0, 3, 6 and the end. A NaN from iteration 4 on (epoch 2) is seen at the read
    after iteration 6: the message names iteration 4, no line prints the NaN, and epoch 1's checkpoint stays."""
    cfg = quiet_config(epochs=3, batch_size=8, print_freq=3)
    data = NoisyDataset(tensor_dataset(64), nan_at=64 + 4 * 8 + 1)  # epoch 2, iteration 4's first read
    with caplog.at_level(logging.INFO, logger="impl.train"), pytest.raises(TrainingDiverged) as info:
        fit(tiny_net(), make_train_loader(data, cfg), make_eval_loader(tensor_dataset(64), 32), cfg, device=CPU,
            run_dir=tmp_path)  # fmt: skip
    message = str(info.value)
    assert "loss is nan at epoch 2, iteration 4/8 (rank 0)" in message, message
    assert str(tmp_path / "models" / CHECKPOINT_NAME) in message, message
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Epoch: [2]")]
    assert [line.split("\t")[0] for line in lines] == ["Epoch: [2][0/8]", "Epoch: [2][3/8]"], lines
    assert not any("nan" in line for line in lines), lines
    ckpt = load_checkpoint(tmp_path / "models" / CHECKPOINT_NAME)
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    assert (tmp_path / "metrics.csv").read_text().count("\n") == 2, "only epoch 1's row may be written"


def test_a_nan_after_the_last_print_point_is_caught_before_the_epoch_ends(tmp_path):
    cfg = quiet_config(epochs=2, batch_size=8, print_freq=1000)
    data = NoisyDataset(tensor_dataset(64), nan_at=7 * 8 + 1)  # epoch 1, iteration 7 of 0..7
    with pytest.raises(TrainingDiverged, match=r"loss is nan at epoch 1, iteration 7/8 .*no epoch completed"):
        fit(tiny_net(), make_train_loader(data, cfg), make_eval_loader(tensor_dataset(64), 32), cfg, device=CPU,
            run_dir=tmp_path)  # fmt: skip
    assert not (tmp_path / "models" / CHECKPOINT_NAME).exists() and not (tmp_path / "metrics.csv").exists()


# ---------------------------------------------------------------------------------------------------------------------
# CUDA: torch's sync debug mode turns any synchronization into an error


def _cuda_loaders(kind: str, cfg, n: int):
    from impl.data.gpu import DeviceLoader

    g = torch.Generator().manual_seed(0)
    images, labels = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g), torch.arange(n) % 5
    if kind == "device":
        from impl.data.batch_transforms import AugmentConfig

        augment = AugmentConfig(size=8, resize=9)
        train = DeviceLoader(images, labels, cfg.batch_size, device="cuda", augment=augment, channels_last=True)
        return train, DeviceLoader(images, labels, 32, device="cuda", train=False, augment=augment)
    data = tensor_dataset(n)
    return make_train_loader(data, cfg, pin_memory=True), make_eval_loader(data, 32, pin_memory=True)


@pytest.mark.gpu
@pytest.mark.parametrize("loader_kind", ["device", "pinned"])
@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_cuda_epoch_and_evaluation_sync_only_at_the_reads(amp, loader_kind, monkeypatch):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    cuda = torch.device("cuda")
    cfg = quiet_config(batch_size=16, print_freq=5, amp=amp, channels_last=True)
    train, val = _cuda_loaders(loader_kind, cfg, 256)  # 16 iterations
    model = tiny_net().to(cuda)
    net = engine.prepare_model(model, cfg)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, len(train))
    train_one_epoch(net, train, optimizer, scheduler, epoch=0, cfg=cfg, device=cuda)  # warm-up: lazy init may sync
    evaluate(model, val, device=cuda, amp=amp)
    with cuda_sync_errors(monkeypatch) as reads:
        metrics = train_one_epoch(net, train, optimizer, scheduler, epoch=1, cfg=cfg, device=cuda)
        epoch_reads = len(reads)
        evaluate(model, val, device=cuda, amp=amp, print_freq=5)
    assert epoch_reads <= math.ceil(16 / 5) + 2, f"{epoch_reads} reads in 16 iterations at -p 5"
    assert math.isfinite(metrics["loss"]), metrics


@pytest.mark.gpu
def test_cuda_fit_with_the_device_loader_autotunes_cudnn_and_writes_a_loadable_checkpoint(tmp_path, monkeypatch):
    """fit on the GPU path (DeviceLoader, channels_last, bf16): cuDNN's benchmark mode is on while it trains, as the
    course sets it, and off again after; the checkpoint loads into a CPU model."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    cuda = torch.device("cuda")
    cfg = quiet_config(epochs=2, batch_size=16, amp="bf16", channels_last=True)
    train, val = _cuda_loaders("device", cfg, 128)
    modes, real = [], engine.train_one_epoch
    monkeypatch.setattr(
        engine, "train_one_epoch", lambda *a, **k: modes.append(torch.backends.cudnn.benchmark) or real(*a, **k)
    )
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    result = fit(tiny_net().to(cuda), train, val, cfg, device=cuda, run_dir=tmp_path)
    assert modes == [True, True] and torch.backends.cudnn.benchmark is False, modes
    losses = [r["train_loss"] for r in result.history]
    assert len(losses) == 2 and all(map(math.isfinite, losses)), result.history
    ckpt = load_checkpoint(tmp_path / "models" / CHECKPOINT_NAME)
    tiny_net().load_state_dict(ckpt["state_dict"])
