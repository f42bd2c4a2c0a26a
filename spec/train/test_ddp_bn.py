"""Two CPU processes (gloo, DDP) train a BatchNorm model exactly like one process, on sets not divisible by the world
size: BatchNorm normalizes with the global batch (`TrainConfig.sync_bn`), training pads nothing in, and evaluation
counts each val image once. With `sync_bn=False` the same run differs (per-rank statistics), so the check has teeth."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from impl.sync_bn import GlobalBatchNorm2d, convert_sync_batchnorm
from impl.train import fit, make_eval_loader, make_train_loader
from spec.train.conftest import NUM_CLASSES, quiet_config, tensor_dataset

WORLD = 2
# 59 training images, global batch 12 (6 per rank): 4 full batches, and DistributedSampler's padding would make a
# fifth on each rank; 23 val images: an uneven shard
CONFIG = dict(epochs=2, warmup=1, batch_size=12, val_batch_size=5, lr=0.1)
N_TRAIN, N_VAL = 59, 23


def bn_net(seed: int = 1) -> nn.Module:
    """Conv -> BatchNorm -> ReLU -> conv -> BatchNorm -> ReLU -> pool -> linear on (3, 8, 8) images."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, stride=2),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, NUM_CLASSES),
    )


def _train(sync_bn: bool) -> tuple[nn.Module, list[dict[str, float]]]:
    cfg = quiet_config(**CONFIG, sync_bn=sync_bn)
    model = bn_net(seed=1)
    train, val = tensor_dataset(N_TRAIN, seed=3), tensor_dataset(N_VAL, seed=4)
    loaders = make_train_loader(train, cfg), make_eval_loader(val, cfg.val_batch_size)
    result = fit(model, *loaders, cfg, device=torch.device("cpu"))
    return model, result.history


def _rank_main(rank: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        for sync_bn in (True, False):
            model, history = _train(sync_bn)
            if rank == 0:
                torch.save(model.state_dict(), Path(out) / f"ddp_weights_{sync_bn}.pt")
                (Path(out) / f"ddp_history_{sync_bn}.json").write_text(json.dumps(history))
    finally:
        dist.destroy_process_group()


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, str]:
    return max(((a[k].double() - b[k].double()).abs().max().item(), k) for k in b)


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process_for_a_batchnorm_model(tmp_path):
    single, history = _train(sync_bn=True)  # alone, sync_bn changes nothing: the plain reference
    mp.start_processes(
        _rank_main, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True, start_method="fork"
    )
    ref = single.state_dict()
    moved, _ = _max_diff(ref, bn_net(seed=1).state_dict())
    assert moved > 1e-3, "training did not move the weights or BN statistics; the comparison would be vacuous"

    synced = torch.load(tmp_path / "ddp_weights_True.pt", weights_only=True)
    err, key = _max_diff(synced, ref)
    assert err < 1e-4, f"DDP with sync_bn differs from one process by max abs {err:.3e} (at {key})"
    for ddp_row, row in zip(json.loads((tmp_path / "ddp_history_True.json").read_text()), history, strict=True):
        for k in ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr"):
            assert ddp_row[k] == pytest.approx(row[k], rel=1e-4, abs=1e-5), f"epoch {row['epoch']} {k}"

    unsynced = torch.load(tmp_path / "ddp_weights_False.pt", weights_only=True)
    err_off, key_off = _max_diff(unsynced, ref)
    assert err_off > 100 * max(err, 1e-7), (
        f"with per-rank BatchNorm statistics DDP should differ from one process, but differs by only {err_off:.3e} "
        f"(at {key_off}); with sync_bn by {err:.3e}"
    )


def test_conversion_keeps_parameters_buffers_and_keys():
    model = bn_net(seed=2)
    before = model.state_dict()
    params = [id(p) for p in model.parameters()]
    assert convert_sync_batchnorm(model, torch.device("cpu")) == 2
    assert sum(isinstance(m, GlobalBatchNorm2d) for m in model.modules()) == 2
    assert [id(p) for p in model.parameters()] == params, "an optimizer built before the conversion would go stale"
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(after[k] is before[k] or torch.equal(after[k], before[k]) for k in before)


def test_global_batchnorm_math_matches_batchnorm_in_float64(monkeypatch):
    """The distributed path with a one-rank all-reduce (the identity) is nn.BatchNorm2d: output, input and parameter
    gradients, and running statistics (unbiased variance, momentum), in float64."""
    import torch.distributed.nn.functional as dist_fn

    import impl.sync_bn

    monkeypatch.setattr(impl.sync_bn, "_distributed", lambda: True)
    monkeypatch.setattr(dist_fn, "all_reduce", lambda t: t)
    torch.manual_seed(0)
    x = (3 * torch.randn(7, 4, 5, 3, dtype=torch.float64) + 1).requires_grad_()
    plain = nn.BatchNorm2d(4).double()
    ours = GlobalBatchNorm2d(4).double()
    with torch.no_grad():
        for m in (plain, ours):
            m.weight.copy_(torch.tensor([0.5, 1.0, 2.0, -1.0]))
            m.bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
    grad_out = torch.randn(7, 4, 5, 3, dtype=torch.float64)
    grads = []
    for m in (plain, ours):
        for _ in range(2):  # two steps: the running averages compound
            y = m(x)
        grads.append((y, *torch.autograd.grad(y, (x, m.weight, m.bias), grad_out)))
    for name, a, b in zip(("output", "grad_input", "grad_weight", "grad_bias"), *grads, strict=True):
        err = (a - b).abs().max().item()
        assert err < 1e-10, f"{name} differs from nn.BatchNorm2d by max abs {err:.3e}"
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        a, b = getattr(plain, name), getattr(ours, name)
        assert torch.allclose(a.double(), b.double(), atol=1e-12), f"{name}: {a.tolist()} vs {b.tolist()}"


def _one_rank_global_bn(monkeypatch, channels: int) -> GlobalBatchNorm2d:
    """A GlobalBatchNorm2d on its distributed path, the all-reduce being the identity (one rank)."""
    import torch.distributed.nn.functional as dist_fn

    import impl.sync_bn

    monkeypatch.setattr(impl.sync_bn, "_distributed", lambda: True)
    monkeypatch.setattr(dist_fn, "all_reduce", lambda t: t)
    return GlobalBatchNorm2d(channels)


def test_global_batchnorm_is_stable_in_float32_for_a_large_offset(monkeypatch):
    """Mean 30, std 0.05: E[x²] − E[x]² in float32 loses the variance to cancellation (output off by ~0.3); the
    two-pass statistics match nn.BatchNorm2d and a float64 reference to float32 rounding."""
    torch.manual_seed(0)
    x = 30 + 0.05 * torch.randn(8, 3, 16, 16)
    ours, plain = _one_rank_global_bn(monkeypatch, 3), nn.BatchNorm2d(3)
    y, ref = ours(x), plain(x)
    exact = nn.BatchNorm2d(3).double()(x.double())
    err, err_plain = (y - ref).abs().max().item(), (ref.double() - exact).abs().max().item()
    assert err < 1e-3, (
        f"output differs from nn.BatchNorm2d by max abs {err:.3e} (BatchNorm2d vs float64: {err_plain:.3e})"
    )
    var_err = (ours.running_var - plain.running_var).abs().max().item()
    assert var_err < 1e-3 * plain.running_var.max().item(), (
        f"running_var {ours.running_var.tolist()} vs nn.BatchNorm2d {plain.running_var.tolist()}"
    )


def test_global_batchnorm_keeps_bfloat16_statistics_in_float32(monkeypatch):
    """bf16 input (as under autocast): the output is bf16, but mean and variance are computed in float32, so they match
    float32 BatchNorm on the same (bf16-rounded) values; in bf16 the mean alone would be off by far more."""
    torch.manual_seed(1)
    x = (4 + torch.randn(16, 2, 12, 12)).bfloat16()
    ours, plain = _one_rank_global_bn(monkeypatch, 2), nn.BatchNorm2d(2)
    y = ours(x)
    ref = plain(x.float())
    assert y.dtype == torch.bfloat16, y.dtype
    assert ours.running_mean.dtype == torch.float32, ours.running_mean.dtype
    err_mean = (ours.running_mean - plain.running_mean).abs().max().item()
    err_var = (ours.running_var - plain.running_var).abs().max().item()
    assert err_mean < 1e-5 and err_var < 1e-5, f"running stats off by mean {err_mean:.3e}, var {err_var:.3e}"
    err = (y.float() - ref).abs().max().item()
    assert err < 0.05, f"bf16 output differs from float32 BatchNorm by max abs {err:.3e}"
