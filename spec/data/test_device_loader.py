"""The device-resident loader (impl/data/gpu.py) and the GPU throughput run's core (bench/gpu/throughput.py), at toy
size on CPU; the `gpu` tests repeat the parts that differ on CUDA (device generator, no host sync in the step loop).

Images here are constant per example (channel 0 = index mod 256, channel 1 = index div 256), so a batch's pixels say
which examples it holds, whatever crop or resize the loader applied.
"""

from __future__ import annotations

import math
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
from impl.data.gpu import DeviceLoader, cached_loader
from impl.train import fit
from spec.train.conftest import cuda_sync_errors

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


def test_a_throughput_epoch_is_an_epoch_of_fit_on_the_device_loader(one_thread):
    """The benchmark times the training path itself: one of its epochs and one epoch of `impl.train.fit` on the same
    DeviceLoader, from the same initial weights, end with bit-identical weights and the same metrics."""
    cfg = ThroughputConfig(n=32, size=16, crop=16, batch=16, epochs=1, warmup_epochs=0, amp="off", print_freq=1)
    cpu = torch.device("cpu")
    bench = setup(cfg, cpu)
    initial = {k: v.clone() for k, v in bench.net.state_dict().items()}
    bench.loader.set_epoch(0)
    metrics, seen = train_epoch(bench, 0, cpu)
    engine = setup(cfg, cpu)  # same seed: same weights, same data
    assert all(torch.equal(initial[k], v) for k, v in engine.net.state_dict().items())
    result = fit(engine.net, engine.loader, engine.loader, engine.train_cfg, device=cpu)
    moved = sum(not torch.equal(initial[k], v) for k, v in bench.net.state_dict().items())
    assert seen == 32 and moved == len(initial), f"{seen} images; {moved} of {len(initial)} tensors changed"
    diff = max((a - b).abs().max().item() for a, b in zip(bench.net.state_dict().values(),
                                                          engine.net.state_dict().values(), strict=True))  # fmt: skip
    assert diff == 0.0, f"the benchmark's epoch and fit's differ by max abs {diff:.3e}"
    row = result.history[0]
    assert (row["train_loss"], row["train_top1"]) == (metrics["loss"], metrics["top1"]), (row, metrics)


def test_cached_loader_serves_a_split_from_its_uint8_cache(synthetic_root, tmp_path):
    train = cached_loader(synthetic_root, "train", 8, device="cpu", cache_dir=tmp_path, size=32)
    val = cached_loader(synthetic_root, "val", 5, device="cpu", cache_dir=tmp_path, size=32)
    assert (train.train, val.train) == (True, False) and (len(train), len(val)) == (24 // 8, -(-12 // 5))
    x, y = next(iter(val))
    assert x.shape == (5, 3, 128, 128) and x.dtype == torch.float32 and y.dtype == torch.long
    assert len(list(tmp_path.glob("*.images.npy"))) == 2, "one cache file per split"


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
def test_cuda_throughput_epoch_syncs_only_at_the_print_point_reads(amp, monkeypatch):
    """torch's sync debug mode raises on any device-to-host synchronization in the benchmark's (= fit's) epoch except
    the step loop's own reads: every -p 10 iterations and at the end."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    cuda = torch.device("cuda")
    cfg = ThroughputConfig(n=4096, batch=256, epochs=1, amp=amp)  # 16 iterations
    state = setup(cfg, cuda)
    train_epoch(state, 0, cuda)  # warm-up: lazy init (cuDNN, cuBLAS handles) may sync once
    with cuda_sync_errors(monkeypatch) as reads:
        metrics, seen = train_epoch(state, 1, cuda)
    assert seen == 4096 and len(reads) <= 2 + 2 and math.isfinite(metrics["loss"]), (seen, reads, metrics)


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


def test_the_gpu_script_on_cpu_runs_the_throughput_stage_at_toy_size_by_default(tmp_path):
    """BENCH_DEVICE=cpu alone selects the toy sizes (no GPU_SH_SMALL needed) and the benchmark suites only collect;
    the throughput stage then writes its raw file, whose config is what the script's variables asked for."""
    import json

    env = {"BENCH_DEVICE": "cpu", "GPU_SH_STAGES": "throughput", "GPU_TP_N": "32", "GPU_TP_SIZE": "16",
           "GPU_TP_CROP": "16", "GPU_TP_BATCH": "16", "GPU_TP_WARMUP": "0", "GPU_TP_PRINT_FREQ": "1"}  # fmt: skip
    done = _gpu_sh(tmp_path / "cpu", PYTHON=sys.executable, **env)
    log = (tmp_path / "cpu" / "gpu.log").read_text()
    assert done.returncode == 0 and "=== throughput: exit 0" in log, log
    raw = json.loads((tmp_path / "cpu" / "cpu-throughput.json").read_text())
    config, epochs = raw["machine_info"]["config"], raw["machine_info"]["epochs"]
    assert (config["n"], config["batch"], config["amp"], config["print_freq"]) == (32, 16, "off", 1), config
    assert [e["warmup"] for e in epochs] == [False], epochs


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
