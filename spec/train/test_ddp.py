"""Two CPU processes (gloo, DistributedDataParallel) train exactly like one process with the same global batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from impl.train import CHECKPOINT_NAME, fit, make_eval_loader, make_train_loader
from spec.train.conftest import quiet_config, tensor_dataset, tiny_net

WORLD = 2
# 48 training images, global batch 12 (6 per rank): 4 steps per epoch; 2 epochs with momentum and weight decay
CONFIG = dict(epochs=2, warmup=1, batch_size=12, val_batch_size=5, lr=0.1)


def _rank_main(rank: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        cfg = quiet_config(**CONFIG)
        model = tiny_net(seed=1)
        train, val = tensor_dataset(48, seed=3), tensor_dataset(23, seed=4)  # 23: an uneven split over ranks
        run_dir = Path(out) / f"run-rank{rank}"
        result = fit(model, make_train_loader(train, cfg), make_eval_loader(val, cfg.val_batch_size), cfg,
                     device=torch.device("cpu"), run_dir=run_dir)  # fmt: skip
        if rank == 0:
            torch.save(model.state_dict(), Path(out) / "ddp_weights.pt")
            (Path(out) / "ddp_history.json").write_text(json.dumps(result.history))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    # the single-process reference first: the forked ranks then inherit everything it imported
    cfg = quiet_config(**CONFIG)
    single = tiny_net(seed=1)
    train, val = tensor_dataset(48, seed=3), tensor_dataset(23, seed=4)
    result = fit(single, make_train_loader(train, cfg), make_eval_loader(val, cfg.val_batch_size), cfg,
                 device=torch.device("cpu"))  # fmt: skip

    # fork: the children inherit the imported torch (a spawn re-imports it, ~10 s on a loaded 2-core machine); each
    # child runs one intra-op thread, the same precaution DataLoader workers take after a fork
    mp.start_processes(
        _rank_main, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True, start_method="fork"
    )

    ddp = torch.load(tmp_path / "ddp_weights.pt", weights_only=True)
    ref = single.state_dict()
    err = max((ddp[k] - ref[k]).abs().max().item() for k in ref)
    moved = max((ref[k] - tiny_net(seed=1).state_dict()[k]).abs().max().item() for k in ref)
    assert moved > 1e-3, "training did not move the weights; the comparison would be vacuous"
    assert err < 1e-5, f"DDP weights differ from single-process weights by max abs {err:.3e}"

    history = json.loads((tmp_path / "ddp_history.json").read_text())
    for ddp_row, row in zip(history, result.history, strict=True):
        for key in ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr"):
            assert ddp_row[key] == pytest.approx(row[key], rel=1e-5, abs=1e-6), f"epoch {row['epoch']} {key}"
    assert (tmp_path / "run-rank0" / "models" / CHECKPOINT_NAME).is_file()
    assert not (tmp_path / "run-rank1").exists(), "rank 1 wrote files; only rank 0 may"
