"""The training loop: it learns, stops on a non-finite loss, writes its run folder, and takes the adversarial hooks."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from torch import nn

from impl.train import (
    BEST_NAME,
    CHECKPOINT_NAME,
    TrainingDiverged,
    evaluate,
    fit,
    load_checkpoint,
    make_eval_loader,
    make_train_loader,
)
from spec.train.conftest import NUM_CLASSES, NoisyDataset, quiet_config, tensor_dataset, tiny_net

CPU = torch.device("cpu")


def _fit(model, train_set, cfg, val_set=None, **kwargs):
    val = make_eval_loader(val_set or train_set, cfg.val_batch_size)
    return fit(model, make_train_loader(train_set, cfg), val, cfg, device=CPU, **kwargs)


class _Repeat(torch.utils.data.Dataset):
    """`times` copies of a small dataset: one epoch of it is `times` passes over the same images."""

    def __init__(self, base, times: int) -> None:
        self.base, self.times = base, times

    def __len__(self) -> int:
        return len(self.base) * self.times

    def __getitem__(self, i: int):
        return self.base[i % len(self.base)]


def test_overfitting_one_batch_drives_the_loss_near_zero():
    batch = tensor_dataset(16)
    cfg = quiet_config(epochs=1, warmup=0, batch_size=16, lr=0.03, optimizer="adamw", weight_decay=0.0)
    model = tiny_net()
    before = evaluate(model, make_eval_loader(batch, 16), device=CPU)
    _fit(model, _Repeat(batch, 150), cfg, val_set=batch)
    after = evaluate(model, make_eval_loader(batch, 16), device=CPU)
    assert before["loss"] > 1.0, f"initial loss {before['loss']} is suspiciously low for {NUM_CLASSES} random labels"
    assert after["loss"] < 0.05 and after["top1"] == 100.0, f"after 150 steps on one batch: {after}"


def test_training_stops_on_nan_loss_naming_epoch_and_iteration_and_keeps_the_last_checkpoint(tmp_path):
    base = tensor_dataset(64)
    cfg = quiet_config(epochs=3, batch_size=16)
    # reads 1..64 are epoch 1; epoch 2's third batch (iteration 2) starts at read 64 + 2*16 + 1 = 97
    data = NoisyDataset(base, nan_at=97)
    val = make_eval_loader(base, 32)
    with pytest.raises(TrainingDiverged, match=r"epoch 2, iteration 2/4") as info:
        fit(tiny_net(), make_train_loader(data, cfg), val, cfg, device=CPU, run_dir=tmp_path)
    assert str(tmp_path / "models" / CHECKPOINT_NAME) in str(info.value), "the message must name the kept checkpoint"
    ckpt = load_checkpoint(tmp_path / "models" / CHECKPOINT_NAME)
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values()), "the kept checkpoint has NaN weights"


def test_run_folder_holds_config_metrics_tensorboard_curves_and_checkpoints(tmp_path):
    cfg = quiet_config(epochs=2, tensorboard=True, plots=True)
    _fit(tiny_net(), tensor_dataset(64), cfg, run_dir=tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["epochs"] == 2
    with (tmp_path / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    expected = {
        "epoch",
        "lr",
        "train_loss",
        "train_top1",
        "train_top5",
        "val_loss",
        "val_top1",
        "val_top5",
        "seconds",
        "peak_mem_mib",
    }
    assert expected <= set(rows[0]), f"missing columns {expected - set(rows[0])}"
    assert float(rows[1]["lr"]) == pytest.approx(cfg.eta_min), "the last epoch must end at eta_min"
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(tmp_path.glob("events.out.tfevents.*")), "no TensorBoard event file"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert {"data/training_loss", "data/learning_rate"} <= set(acc.Tags()["scalars"])
    assert (tmp_path / "data_top1_accuracy_val").is_dir(), "course tag data/top1_accuracy (val) missing"
    assert (tmp_path / "models" / CHECKPOINT_NAME).is_file() and (tmp_path / "models" / BEST_NAME).is_file()


def test_perturb_hook_trains_on_the_images_it_returns():
    data = tensor_dataset(32)
    seen = []

    def perturb(model, images, labels):
        assert isinstance(model, nn.Module) and model.training
        seen.append(labels.clone())
        return torch.zeros_like(images)  # a constant input: the model can only learn the label prior

    cfg = quiet_config(epochs=1, batch_size=16)
    hooked, plain = tiny_net(), tiny_net()
    _fit(hooked, data, cfg, perturb=perturb)
    _fit(plain, data, cfg)
    assert len(seen) == 2 and sum(len(s) for s in seen) == 32
    first_conv_moved = (hooked[0].weight - tiny_net()[0].weight).abs().max()
    # with zero inputs, the first conv's weight gradient is exactly zero: only weight decay moves it
    plain_moved = (plain[0].weight - tiny_net()[0].weight).abs().max()
    assert first_conv_moved < 1e-5 < plain_moved, f"perturbed {first_conv_moved:.2e}, plain {plain_moved:.2e}"


def test_extra_evals_add_metrics_and_best_metric_selects_model_best(tmp_path):
    scores = iter([5.0, 9.0, 7.0])
    cfg = quiet_config(epochs=3, best_metric="robust_top1")
    result = _fit(
        tiny_net(), tensor_dataset(32), cfg, run_dir=tmp_path, extra_evals=[lambda model: {"robust_top1": next(scores)}]
    )
    assert [r["robust_top1"] for r in result.history] == [5.0, 9.0, 7.0]
    best = load_checkpoint(tmp_path / "models" / BEST_NAME)
    assert best["epoch"] == 2 and best["best_acc1"] == 9.0 and result.best_score == 9.0


def test_unknown_best_metric_names_the_available_ones():
    with pytest.raises(KeyError, match=r"'nope'.*val_top1"):
        _fit(tiny_net(), tensor_dataset(32), quiet_config(epochs=1, best_metric="nope"))


def test_flip_evaluation_averages_logits_of_image_and_mirror():
    data = tensor_dataset(20)
    model = tiny_net().eval()
    x, y = data.tensors
    with torch.no_grad():
        logits = 0.5 * (model(x) + model(x.flip(3)))
    expected_top1 = 100.0 * (logits.argmax(1) == y).float().mean().item()
    expected_loss = nn.functional.cross_entropy(logits, y).item()
    got = evaluate(model, make_eval_loader(data, 7), device=CPU, flip=True)
    plain = evaluate(model, make_eval_loader(data, 7), device=CPU, flip=False)
    # batches of 7, 7, 6: the per-batch mean losses must be weighted by batch size
    assert got["top1"] == pytest.approx(expected_top1) and got["loss"] == pytest.approx(expected_loss, rel=1e-5)
    with torch.no_grad():
        assert plain["loss"] == pytest.approx(nn.functional.cross_entropy(model(x), y).item(), rel=1e-5)
    assert not math.isclose(got["loss"], plain["loss"]), "flip averaging changed nothing"


def test_too_small_training_split_is_a_clear_error():
    with pytest.raises(ValueError, match=r"10 images.*batch of 16"):
        make_train_loader(tensor_dataset(10), quiet_config(batch_size=16))


def test_bf16_autocast_trains_on_cpu_and_fp16_is_refused_without_cuda():
    data = tensor_dataset(32)
    model = tiny_net()
    result = _fit(model, data, quiet_config(epochs=1, amp="bf16"))
    assert math.isfinite(result.history[0]["train_loss"])
    assert all(p.dtype == torch.float32 for p in model.parameters()), "autocast must leave the weights in float32"
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        _fit(tiny_net(), data, quiet_config(epochs=1, amp="fp16"))


@pytest.mark.gpu
@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
def test_training_on_cuda_with_autocast_saves_a_checkpoint_that_loads_on_cpu(amp, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    cuda = torch.device("cuda")
    data = tensor_dataset(64)
    cfg = quiet_config(epochs=2, amp=amp)
    model = tiny_net().to(cuda)
    result = fit(model, make_train_loader(data, cfg, pin_memory=True), make_eval_loader(data, 32), cfg,
                 device=cuda, run_dir=tmp_path)  # fmt: skip
    assert all(math.isfinite(r["train_loss"]) for r in result.history)
    assert result.history[-1]["peak_mem_mib"] > 0
    ckpt = load_checkpoint(tmp_path / "models" / CHECKPOINT_NAME)  # map_location cpu
    cpu_model = tiny_net()
    cpu_model.load_state_dict(ckpt["state_dict"])
    assert all(v.device.type == "cpu" for v in ckpt["state_dict"].values())
    assert ("scaler" in ckpt) == (amp == "fp16")


def test_channels_last_trains_the_model_the_default_layout_trains():
    """--channels-last changes memory order only: two epochs give the default layout's weights up to float rounding,
    and the weights stay channels_last."""
    data = tensor_dataset(64)
    nchw, nhwc = tiny_net(), tiny_net()
    _fit(nchw, data, quiet_config(epochs=2))
    _fit(nhwc, data, quiet_config(epochs=2, channels_last=True))
    err = max((nchw.state_dict()[k] - v).abs().max().item() for k, v in nhwc.state_dict().items())
    assert err < 1e-5, f"channels_last and NCHW training differ by {err:.3e}"
    assert nhwc[0].weight.is_contiguous(memory_format=torch.channels_last) and not nhwc[0].weight.is_contiguous()


@pytest.mark.parametrize("before", [False, True])
def test_cudnn_autotune_is_on_inside_the_block_on_cuda_only_and_restored_after(before, monkeypatch):
    from impl.train import cudnn_autotune

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", before)
    with cudnn_autotune(torch.device("cpu")):
        assert torch.backends.cudnn.benchmark is before, "CPU training must leave cuDNN's setting alone"
    with pytest.raises(RuntimeError, match="inside"), cudnn_autotune(torch.device("cuda")):  # the flag needs no GPU
        assert torch.backends.cudnn.benchmark is True
        raise RuntimeError("inside")
    assert torch.backends.cudnn.benchmark is before, "the setting before the block must come back, even on an error"
