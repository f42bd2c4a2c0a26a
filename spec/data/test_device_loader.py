"""The device-resident loader (impl/data/gpu.py) and the GPU throughput run's core (bench/gpu/throughput.py), at toy
size on CPU; the `gpu` tests repeat the parts that differ on CUDA (device generator, no host sync in the step loop).

Images here are constant per example (channel 0 = index mod 256, channel 1 = index div 256), so a batch's pixels say
which examples it holds, whatever crop or resize the loader applied.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor

from bench.gpu.throughput import ThroughputConfig, run, setup, to_raw, train_epoch
from impl.data import IMAGENET_MEAN, IMAGENET_STD
from impl.data.batch_transforms import AugmentConfig, apply, sample_params, train_batch
from impl.data.gpu import DeviceLoader

MEAN, STD = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
STILL = AugmentConfig(size=16, resize=18, color_strength=0.0, degrees=0.0)  # crops and flips only: colours survive


def indexed_images(n: int, size: int = 16) -> tuple[Tensor, Tensor]:
    idx = torch.arange(n)
    values = torch.stack([idx % 256, idx // 256, torch.full_like(idx, 7)], dim=1).to(torch.uint8)  # (n, 3)
    return values.view(n, 3, 1, 1).expand(n, 3, size, size).contiguous(), idx % 10


def which(x: Tensor) -> Tensor:
    """The example index of each image of a normalized batch, read from its centre pixel."""
    pixels = (x[:, :, x.shape[2] // 2, x.shape[3] // 2] * STD.view(1, 3) + MEAN.view(1, 3)) * 255
    return pixels[:, 0].round().long() + 256 * pixels[:, 1].round().long()


@pytest.fixture
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_a_train_epoch_is_a_permutation_with_labels_aligned():
    images, labels = indexed_images(300)
    loader = DeviceLoader(images, labels, 64, augment=STILL, drop_last=False)
    seen = []
    for x, y in loader:
        ids = which(x)
        assert torch.equal(y, labels[ids]), f"labels not aligned with images: {y[:8]} vs {labels[ids][:8]}"
        seen.append(ids)
    order = torch.cat(seen)
    assert sorted(order.tolist()) == list(range(300)), "an epoch must visit every example exactly once"
    assert not torch.equal(order, torch.arange(300)), "a train epoch is shuffled"
    assert len(loader) == 5 and len(DeviceLoader(images, labels, 64)) == 4, "drop_last defaults to True in train mode"


def test_epochs_replay_by_seed_and_differ_from_each_other():
    images, labels = indexed_images(128)

    def epoch(seed: int, e: int) -> Tensor:
        loader = DeviceLoader(images, labels, 32, augment=STILL, seed=seed)
        loader.set_epoch(e)
        return torch.cat([x for x, _ in loader])

    assert torch.equal(epoch(0, 3), epoch(0, 3)), "the same (seed, epoch) gave different batches"
    assert not torch.equal(epoch(0, 3), epoch(0, 4)) and not torch.equal(epoch(0, 3), epoch(1, 3))


def test_val_batches_are_in_order_channels_last_and_deterministic():
    images, labels = indexed_images(70)
    loader = DeviceLoader(images, labels, 32, train=False, augment=STILL)
    batches = list(loader)
    assert [x.shape[0] for x, _ in batches] == [32, 32, 6], "val keeps the last, partial batch"
    x = torch.cat([b for b, _ in batches])
    assert torch.equal(which(x), torch.arange(70)), "val batches must keep the dataset order"
    assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x, torch.cat([b for b, _ in loader])), "val batches must not depend on the pass"


def test_the_loader_reads_nothing_back_to_the_host(monkeypatch):
    """No .item(), bool(), int(), float() or .tolist() on a tensor while batches are made: on CUDA each one would
    stall the step loop until the GPU caught up."""
    images, labels = indexed_images(96)
    loader = DeviceLoader(images, labels, 32)
    calls: list[str] = []
    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
        original = getattr(Tensor, name)
        monkeypatch.setattr(Tensor, name, lambda self, *a, _n=name, _o=original: (calls.append(_n), _o(self, *a))[1])
    batches = list(loader)
    monkeypatch.undo()
    assert len(batches) == 3 and not calls, f"host reads while batching: {sorted(set(calls))}"


def test_bad_inputs_are_named():
    images, labels = indexed_images(8)
    with pytest.raises(ValueError, match=r"uint8 images \(N, 3, H, W\), got torch.float32"):
        DeviceLoader(images.float(), labels, 4)
    with pytest.raises(ValueError, match=r"8 images but labels of shape \(7,\)"):
        DeviceLoader(images, labels[:7], 4)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        DeviceLoader(images, labels, 0)


def test_the_throughput_run_trains_and_reports_at_toy_size(one_thread):
    cfg = ThroughputConfig(n=48, size=16, crop=16, batch=16, epochs=2, warmup_epochs=1, amp="off")
    summary = run(cfg, torch.device("cpu"))
    rows = summary["epochs"]
    assert [r["warmup"] for r in rows] == [True, False, False], rows
    assert all(r["images_per_s"] > 0 and 0 < r["loss"] < 10 for r in rows), rows
    assert summary["images_per_s"] > 0 and summary["loader_images_per_s"] > 0
    assert summary["projected_60_epochs_of_100k_s"] == pytest.approx(6e6 / summary["images_per_s"])
    raw = to_raw(summary, torch.device("cpu"))
    record = raw["benchmarks"][0]
    assert record["extra_info"]["table"] == "gpu-throughput" and record["stats"]["rounds"] == 2, record
    assert raw["machine_info"]["torch"] == torch.__version__


def test_a_throughput_epoch_updates_the_model_and_counts_on_the_device(one_thread):
    cfg = ThroughputConfig(n=32, size=16, crop=16, batch=16, epochs=1, amp="off")
    net, opt, loader = setup(cfg, torch.device("cpu"))
    before = [p.detach().clone() for p in net.parameters()]
    loss_sum, correct, seen = train_epoch(net, opt, loader, cfg, torch.device("cpu"))
    assert seen == 32 and loss_sum.dim() == 0 and correct.dtype == torch.long, (seen, loss_sum, correct)
    moved = sum(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    assert moved == len(before), f"only {moved} of {len(before)} parameter tensors changed in an epoch"


@pytest.mark.gpu
def test_cuda_batches_match_the_same_parameters_applied_on_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    images = torch.randint(0, 256, (64, 3, 128, 128), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    cfg, cuda = AugmentConfig(), torch.device("cuda")
    params = sample_params(64, (144, 144), cfg, torch.Generator(cuda).manual_seed(1), cuda)
    on_gpu = apply(images.to(cuda), params, cfg).cpu()
    cpu_params = type(params)(**{k: v.cpu() for k, v in vars(params).items()})
    err = (on_gpu - apply(images, cpu_params, cfg)).abs().max().item()
    assert err < 1e-3, f"CUDA and CPU batch transforms differ by {err:.3g} with the same parameters"
    assert train_batch(images.to(cuda), torch.Generator(cuda).manual_seed(2)).is_cuda


@pytest.mark.gpu
@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_cuda_training_epoch_makes_no_host_sync(amp):
    """torch's sync debug mode raises on any implicit device-to-host synchronization inside the step loop."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    cuda = torch.device("cuda")
    cfg = ThroughputConfig(n=1024, batch=256, epochs=1, amp=amp)
    net, opt, loader = setup(cfg, cuda)
    train_epoch(net, opt, loader, cfg, cuda)  # warm-up: lazy init may sync once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss_sum, _, seen = train_epoch(net, opt, loader, cfg, cuda)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert seen == 1024 and torch.isfinite(loss_sum).item()


def _gpu_sh(out: Path, **env: str) -> subprocess.CompletedProcess:
    script = Path(__file__).resolve().parents[2] / "bench" / "gpu.sh"
    return subprocess.run(
        ["bash", str(script), str(out)], env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )


def test_the_gpu_script_runs_the_chosen_stages_and_logs_them(tmp_path):
    done = _gpu_sh(tmp_path / "ok", PYTHON=sys.executable, BENCH_DEVICE="cpu", GPU_SH_STAGES="env")
    log = (tmp_path / "ok" / "gpu.log").read_text()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "=== env: exit 0" in log and "torch" in log and "=== spec" not in log, log


def test_the_gpu_script_runs_every_stage_and_fails_if_one_failed(tmp_path):
    done = _gpu_sh(tmp_path / "bad", PYTHON="false", GPU_SH_STAGES="env floor")  # every stage's command fails
    log = (tmp_path / "bad" / "gpu.log").read_text()
    assert done.returncode == 1 and "=== failed stages: env floor" in log, log


def test_the_gpu_script_keeps_its_budget_even_when_a_stage_ignores_sigterm(tmp_path):
    """A stage that ignores SIGTERM and would run 60 s is killed inside the budget, and the stages after it are not
    started: the script's 8-minute bound (here 6 s) holds with the kill grace and every stage counted."""
    stubborn = tmp_path / "stubborn-python"
    stubborn.write_text("#!/usr/bin/env bash\ntrap '' TERM\nsleep 60\n")
    stubborn.chmod(0o755)
    t0 = time.monotonic()
    done = _gpu_sh(
        tmp_path / "slow", PYTHON=str(stubborn), GPU_SH_STAGES="env floor early", GPU_SH_BUDGET="6", GPU_SH_GRACE="2"
    )
    wall = time.monotonic() - t0
    log = (tmp_path / "slow" / "gpu.log").read_text()
    assert wall < 6 + 2, f"the script ran {wall:.1f} s against a 6 s budget\n{log}"
    assert done.returncode == 1 and "=== failed stages: env floor early" in log, log
    assert "=== floor: not started" in log and "=== early: not started" in log, log
