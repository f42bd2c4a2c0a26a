"""The training and evaluation engine: course schedule, checkpoints, metrics, resume, DDP. Spec: spec/train/.

Promises:
- SGD with momentum for the CNNs, AdamW for the ViT; linear warmup then cosine to `eta_min`, stepped every iteration.
- Cross-entropy, top-1/top-5 in percent; evaluation may average the logits of the image and its horizontal flip (`-e`).
- Checkpoints in `<run>/models/` with the course keys (`epoch, model_arch, state_dict, best_acc1, optimizer,
  scheduler`), written atomically, loaded with `torch.load(weights_only=True)`; a checkpoint of the course loads too.
- Resume is exact: each epoch reseeds every random stream from (seed, epoch, rank), so on CPU two epochs straight and
  one + resume + one give bit-identical weights.
- The step loop never waits for the device: loss and accuracy sums stay on it and are read to the host in one transfer
  at the course's print points (every `print_freq` iterations) and at the end of the epoch, nowhere else.
- A non-finite loss stops training with `TrainingDiverged` naming the epoch and the first bad iteration, at the first
  of those reads after it; the checkpoint of the last complete epoch stays on disk.
- The loaders may be torch DataLoaders (the course path) or anything that yields (images, labels) batches, has a length
  and a `set_epoch(epoch)`, e.g. `impl.data.gpu.DeviceLoader` (the dataset resident on the device).
- Under `torch.distributed` (torchrun) the model is wrapped in DistributedDataParallel, every rank sees its shard of the
  same permutation, metrics are summed across ranks and only rank 0 writes files. BatchNorm uses the global batch's
  statistics (`sync_bn`), no sample is padded in, and each val image is evaluated once, so N ranks equal one process
  with the same global batch.

Adversarial training plugs in from a higher room without this one importing it: `fit(perturb=...)` replaces each
training batch by `perturb(model, images, labels)`, `extra_evals` add named metrics to each epoch's row, and
`TrainConfig.best_metric` chooses which of them selects `model_best.pth.tar`.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import math
import os
import random
import resource
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pth.tar"
BEST_NAME = "model_best.pth.tar"
COURSE_KEYS = ("epoch", "model_arch", "state_dict", "best_acc1", "optimizer", "scheduler")

# images, labels -> the images to train on (an adversarial example generator, for instance)
Perturb = Callable[[nn.Module, Tensor, Tensor], Tensor]
# the (unwrapped) model -> named metrics added to the epoch's row, e.g. {"val_robust_top1": 31.5}
ExtraEval = Callable[[nn.Module], Mapping[str, float]]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the epoch, the iteration and the last good checkpoint.

    The check runs where the step loop reads its meters (each print point and the epoch's end, so the loop never
    waits for the device): up to print_freq - 1 optimizer steps may follow the bad one, so the model in memory may
    hold non-finite weights when this is raised. Nothing is saved after the bad step: resume from the checkpoint."""


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be read or lacks what is needed; the message names the file."""


class WeightsMismatch(CheckpointError):
    """A checkpoint's tensors do not fit the model: another architecture, or another class count (`classes` holds
    the checkpoint's and the model's head sizes when only those differ)."""

    def __init__(self, message: str, *, arch: str, classes: tuple[int, int] | None) -> None:
        super().__init__(message)
        self.arch, self.classes = arch, classes


class RunFolderBusy(RuntimeError):
    """Another process is training into the same run folder (it holds the folder's lock file)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during `fit`; `checkpoint` is the last committed state to resume from (None: no epoch completed)."""

    def __init__(self, checkpoint: Path | None, reason: str = "") -> None:
        super().__init__(f"{reason or 'interrupted'} (last checkpoint: {checkpoint})")
        self.checkpoint = checkpoint


class ConfigError(ValueError):
    """A TrainConfig field out of range; `field` names it, so a command line can name the flag that set it."""

    def __init__(self, field: str, requirement: str, value: Any) -> None:
        super().__init__(f"TrainConfig.{field} must be {requirement}, got {value!r}")
        self.field, self.requirement, self.value = field, requirement, value


# the course main.py's flag for each TrainConfig field it sets (messages name the flag, not the field)
COURSE_FLAGS = {
    "epochs": "--epochs",
    "warmup": "--warmup",
    "batch_size": "-b",
    "lr": "--lr",
    "momentum": "--momentum",
    "weight_decay": "--wd",
    "clip_grad": "--clip-grad",
    "workers": "-j",
    "print_freq": "-p",
    "seed": "--seed",
    "amp": "--amp",
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run (saved as config.json and inside every checkpoint)."""

    model_arch: str = "simplenet"  # written to checkpoints under the course key `model_arch`
    epochs: int = 90  # total epochs, counting those before a resume
    warmup: int = 5  # epochs of linear warmup; >= epochs makes the whole run warmup, as in the course
    batch_size: int = 256  # global images per optimizer step (split evenly over ranks)
    val_batch_size: int = 100  # images per evaluation batch, per rank
    lr: float = 0.1  # peak learning rate, reached at the end of warmup
    eta_min: float = 1e-8  # learning rate at the start of warmup and at the end of the cosine
    momentum: float = 0.9  # SGD momentum (ignored by AdamW)
    weight_decay: float = 1e-4
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"  # adam: L2 weight decay; adamw: decoupled (the ViT's)
    clip_grad: float = 0.0  # max gradient norm; 0 disables (the course clips the ViT only, at 1.0)
    workers: int = 4  # data-loading processes per rank
    print_freq: int = 10  # iterations between course-format log lines and TensorBoard points
    seed: int = 2022  # the course's fixed seed
    amp: Literal["off", "bf16", "fp16"] = "off"  # autocast dtype; fp16 needs CUDA (it uses a GradScaler)
    compile: bool = False  # torch.compile the model
    channels_last: bool = False  # model weights and input batches in channels_last (NHWC) memory order
    sync_bn: bool = True  # under DDP, BatchNorm normalizes with the global batch's statistics (impl/sync_bn.py)
    val_flip: bool = False  # average logits with the horizontally flipped image during per-epoch validation
    best_metric: str = "val_top1"  # the epoch-row key (higher is better) that selects model_best.pth.tar
    tensorboard: bool = True  # write TensorBoard scalars with the course tags
    plots: bool = True  # redraw curves.png every epoch

    def __post_init__(self) -> None:
        rules: list[tuple[str, bool, str]] = [  # (field, holds, requirement)
            ("epochs", self.epochs >= 1, ">= 1"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("val_batch_size", self.val_batch_size >= 1, ">= 1"),
            ("warmup", self.warmup >= 0, ">= 0"),
            ("lr", self.lr > 0, "> 0"),
            ("eta_min", 0 <= self.eta_min < self.lr, f"in [0, lr={self.lr})"),
            ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("optimizer", self.optimizer in ("sgd", "adam", "adamw"), "'sgd', 'adam' or 'adamw'"),
            ("amp", self.amp in ("off", "bf16", "fp16"), "'off', 'bf16' or 'fp16'"),
            ("clip_grad", self.clip_grad >= 0, ">= 0 (0 disables clipping)"),
            ("workers", self.workers >= 0, ">= 0 (0 loads in the main process)"),
            ("print_freq", self.print_freq >= 1, ">= 1"),
        ]
        for name, holds, requirement in rules:
            if not holds:
                raise ConfigError(name, requirement, getattr(self, name))


# ---------------------------------------------------------------------------------------------------------------------
# optimizer and schedule


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> Optimizer:
    """SGD with momentum (CNNs, ResNet) or AdamW (ViT), as the course sets them up; Adam for the seed's CustomNet.
    With every parameter on CUDA the optimizer is the fused one: one kernel per step, its step counts on the device."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    fused = {"fused": True} if all(p.is_cuda and p.is_floating_point() for p in params) else {}
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **fused)


def warmup_cosine_lr(step: int, base_lr: float, warmup_steps: int, total_steps: int, eta_min: float) -> float:
    """Learning rate after `step` optimizer steps: eta_min -> base_lr linearly, then a cosine back to eta_min."""
    if step < warmup_steps:
        return eta_min + (base_lr - eta_min) * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return eta_min + 0.5 * (base_lr - eta_min) * (1.0 + math.cos(math.pi * progress))


class WarmupCosineLR(LRScheduler):
    """Per-iteration linear warmup then cosine annealing, in closed form (so a resume only needs the step count)."""

    def __init__(
        self, optimizer: Optimizer, warmup_steps: int, total_steps: int, eta_min: float = 1e-8, last_epoch: int = -1
    ) -> None:
        if warmup_steps < 0 or total_steps < 1:  # warmup past the end is the course's all-warmup run
            raise ValueError(f"need warmup_steps >= 0 and total_steps >= 1; got {warmup_steps}, {total_steps}")
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.eta_min = eta_min
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        return self._get_closed_form_lr()

    def _get_closed_form_lr(self) -> list[float]:
        return [
            warmup_cosine_lr(self.last_epoch, base, self.warmup_steps, self.total_steps, self.eta_min)
            for base in self.base_lrs
        ]

    def fast_forward(self, steps: int) -> None:
        """Jump to `steps` completed iterations (for a course checkpoint, which carries no scheduler state)."""
        self.last_epoch = steps
        self._last_lr = self._get_closed_form_lr()
        for group, lr in zip(self.optimizer.param_groups, self._last_lr, strict=True):
            group["lr"] = lr


def build_scheduler(optimizer: Optimizer, cfg: TrainConfig, iters_per_epoch: int) -> WarmupCosineLR:
    return WarmupCosineLR(optimizer, cfg.warmup * iters_per_epoch, cfg.epochs * iters_per_epoch, cfg.eta_min)


# ---------------------------------------------------------------------------------------------------------------------
# distribution, seeding, loaders


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info() -> DistInfo:
    """This process's rank and the world size (0 and 1 without an initialized process group)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size())
    return DistInfo()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


class EpochBatches(Protocol):
    """A loader that is not a DataLoader (`impl.data.gpu.DeviceLoader`): batches of (images, labels), a length, and
    the epoch whose order and augmentation the next pass replays."""

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...


Batches = DataLoader | EpochBatches


def _seed_epoch(cfg: TrainConfig, epoch: int, info: DistInfo, loader: Batches) -> None:
    """Make epoch `epoch` depend on (seed, epoch, rank) only, so a resumed run replays it exactly."""
    if not isinstance(loader, DataLoader):
        loader.set_epoch(epoch)
    else:
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)
        if isinstance(loader.dataset, SampleSeeded):  # workers are forked when the epoch's iterator starts: they see it
            loader.dataset.epoch = epoch
    # workers draw their base seed from the global generator when the iterator starts, so this fixes them too
    seed_everything(cfg.seed + 1009 * (epoch + 1) + info.rank)


class SampleSeeded(Dataset):
    """`dataset[i]` read under a torch seed that is a function of (seed, epoch, i), in a forked RNG state.

    So each sample's augmentation depends on those three numbers only: not on which process reads it, in what order,
    or what was drawn before. `-j 0` and `-j 4` give bit-identical batches, as do N ranks and one process, and the
    main process's own random stream (dropout, drop-path) is the same whatever the worker count.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        generator = torch.default_generator  # the CPU generator the transforms draw from; saved and restored by hand:
        state = generator.get_state()  # 2 µs, where fork_rng + torch.manual_seed (all devices) take ~150 µs
        generator.manual_seed(((self.seed * 1_000_003 + self.epoch) * 100_000_007 + index) % 2**63)
        try:
            return self.dataset[index]
        finally:
            generator.set_state(state)


class ShardSampler(Sampler[int]):
    """Indices rank, rank + world, ...: each sample evaluated exactly once over all ranks (no padding)."""

    def __init__(self, length: int, info: DistInfo) -> None:
        self.indices = range(info.rank, length, info.world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def make_train_loader(
    dataset: Dataset, cfg: TrainConfig, *, info: DistInfo | None = None, pin_memory: bool = False
) -> DataLoader:
    """Shuffled, drop-last batches of batch_size / world_size per rank, one permutation of (seed, epoch) shared by all
    ranks, so the ranks' batches together are the single-process batch. Augmentation is seeded per sample
    (`SampleSeeded`), so the batches do not depend on `cfg.workers`."""
    info = info or dist_info()
    if cfg.batch_size % info.world_size:
        raise ConfigError("batch_size", f"divisible by the {info.world_size} ranks", cfg.batch_size)
    per_rank = cfg.batch_size // info.world_size
    # drop_last: no padding; the ranks' tails are dropped exactly where one process's incomplete last batch is
    sampler = DistributedSampler(
        dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=cfg.seed, drop_last=True
    )
    loader = DataLoader(
        SampleSeeded(dataset, cfg.seed),
        per_rank,
        sampler=sampler,
        num_workers=cfg.workers,
        pin_memory=pin_memory,
        drop_last=True,
    )
    from impl.data.miniplaces import MiniPlaces  # only to name the split file in require_a_batch's message

    split_file = dataset.root / f"{dataset.split}.txt" if isinstance(dataset, MiniPlaces) else None
    require_a_batch(loader, cfg.batch_size, len(dataset), split_file)  # type: ignore[arg-type]
    return loader


def require_a_batch(loader: Sized, batch_size: int, images: int, split_file: Path | None = None) -> None:
    """Refuse a drop-last training loader without one full batch, naming the split file where one is known: the one
    check and message of both training data paths (this DataLoader and impl.cli's --data-on-device loader). Under
    DDP too, batch_size <= images is the whole condition: batch_size is a multiple of the ranks, so each rank's share
    of it fits in each rank's floor(images / ranks) samples exactly when the whole batch fits in the split."""
    if len(loader) == 0:
        where = f" ({split_file})" if split_file is not None else ""
        requirement = (
            f"at most the training split's {images} images{where}: a batch of {batch_size} is more than it holds"
        )
        raise ConfigError("batch_size", requirement, batch_size)


def make_eval_loader(
    dataset: Dataset, batch_size: int = 100, *, workers: int = 0, info: DistInfo | None = None, pin_memory: bool = False
) -> DataLoader:
    """In-order batches of this rank's shard; every image counted once across ranks."""
    info = info or dist_info()
    sampler = ShardSampler(len(dataset), info)  # type: ignore[arg-type]
    return DataLoader(dataset, batch_size, sampler=sampler, num_workers=workers, pin_memory=pin_memory)


# ---------------------------------------------------------------------------------------------------------------------
# one epoch, one evaluation


def topk_hits(logits: Tensor, target: Tensor, topk: Sequence[int] = (1, 5)) -> Tensor:
    """How many rows have their target among the k highest logits, for each k (capped at the class count): an int64
    tensor (len(topk),) on the logits' device, so counting reads nothing back to the host."""
    if logits.ndim != 2 or target.shape != logits.shape[:1]:
        raise ValueError(f"logits must be (N, C) and target (N,); got {tuple(logits.shape)} and {tuple(target.shape)}")
    if min(topk) < 1:
        raise ValueError(f"each k of topk must be >= 1, got {tuple(topk)}")
    maxk = min(max(topk), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices  # (N, maxk), distinct classes: a row's target is in it at most once
    within = pred.eq(target[:, None]).sum(dim=0).cumsum(dim=0)  # (maxk,): rows whose target is among the first j+1
    return torch.stack([within[min(k, maxk) - 1] for k in topk])


def topk_correct(logits: Tensor, target: Tensor, topk: Sequence[int] = (1, 5)) -> list[int]:
    """`topk_hits` read back to the host as ints."""
    return [int(c) for c in topk_hits(logits, target, topk).tolist()]


def _host(values: Tensor) -> list[float]:
    """The step loop's only read of the device: one small vector copied to the host (a sync on CUDA)."""
    return values.tolist()


@dataclass(frozen=True)
class _Reading:
    """A `_Meter` read back to the host."""

    loss: float  # the last batch's mean loss
    top1: float  # the last batch's accuracies (%)
    top5: float
    avg_loss: float  # since the epoch began, weighted by batch size
    avg_top1: float
    avg_top5: float
    first_bad: int  # the first iteration whose loss was not finite, -1 if none
    bad_loss: float  # that loss (nan or ±inf)


class _Meter:
    """An epoch's sums kept on the device: loss·n, top-1 hits, top-5 hits (n itself is counted on the host), and the
    first iteration whose loss was not finite. `update` only queues device work; `read` copies what a log line and
    the divergence check need to the host in one transfer; `reduced` sums across ranks once, at the end."""

    def __init__(self, device: torch.device) -> None:
        self.dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        self.sums = torch.zeros(3, dtype=self.dtype, device=device)
        self.last = torch.zeros(3, dtype=self.dtype, device=device)  # the latest batch: loss, top-1 hits, top-5 hits
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        self.bad_loss = torch.zeros((), dtype=self.dtype, device=device)
        self.count = self.last_n = self.iterations = 0

    def update(self, loss: Tensor, output: Tensor, target: Tensor) -> None:
        """Add one batch (its mean loss, its logits); queues device work only."""
        loss = loss.detach().to(self.dtype)
        n = target.shape[0]
        self.last = torch.cat([loss.view(1), topk_hits(output.detach(), target).to(self.dtype)])
        self.sums[:1].add_(loss * n)  # summed in float64 in batch order: the same numbers as host floats would give
        self.sums[1:].add_(self.last[1:])
        newly = ~torch.isfinite(loss) & (self.first_bad < 0)
        self.first_bad = torch.where(newly, self.iterations, self.first_bad)
        self.bad_loss = torch.where(newly, loss, self.bad_loss)
        self.count, self.last_n, self.iterations = self.count + n, n, self.iterations + 1

    def read(self) -> _Reading:
        values = torch.cat([self.last, self.sums, self.first_bad.to(self.dtype).view(1), self.bad_loss.view(1)])
        v = _host(values)
        n, count = max(self.last_n, 1), max(self.count, 1)
        return _Reading(v[0], 100.0 * v[1] / n, 100.0 * v[2] / n, v[3] / count, 100.0 * v[4] / count,
                        100.0 * v[5] / count, int(v[6]), v[7])  # fmt: skip

    def reduced(self, info: DistInfo) -> dict[str, float]:
        total = torch.cat([self.sums, self.sums.new_full((1,), float(self.count))])  # filled on the device: no copy
        if info.world_size > 1:
            dist.all_reduce(total)
        loss_sum, c1, c5, n = _host(total)
        n = max(n, 1.0)
        return {"loss": loss_sum / n, "top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n}


def autocast(device: torch.device, amp: str) -> AbstractContextManager:
    """The `--amp` setting as a context: nothing for "off", else torch.autocast in bf16 or fp16 on `device`."""
    if amp == "off":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def _progress(iterable: Iterable, total: int, desc: str, enabled: bool) -> Iterable:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True)


def prepare_model(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """The module the step loop calls: `model` moved to channels_last in place (`cfg.channels_last`), then wrapped by
    torch.compile (`cfg.compile`). Its state_dict keeps the plain keys (`clean_state_dict` drops `_orig_mod.`)."""
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    return torch.compile(model) if cfg.compile else model


@contextmanager
def cudnn_autotune(device: torch.device) -> Iterator[None]:
    """cuDNN's benchmark mode inside the block on CUDA, as the course's main.py sets it for training (batch shapes
    repeat, so the fastest algorithm is timed once per shape); the previous setting comes back after."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def _state_like_params(optimizer: Optimizer) -> None:
    """Give each optimizer buffer shaped like its parameter the parameter's memory layout: an NCHW run's checkpoint
    resumed with channels_last holds NCHW buffers, and the fused kernels and foreach's fast path want them alike."""
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if isinstance(value, Tensor) and value.shape == param.shape and value.stride() != param.stride():
                state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def train_step(
    model: nn.Module,
    images: Tensor,
    target: Tensor,
    optimizer: Optimizer,
    scheduler: LRScheduler,
    *,
    cfg: TrainConfig,
    device: torch.device,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[Tensor, Tensor]:
    """One optimizer step: forward under the `cfg.amp` autocast, cross-entropy, backward, optional clipping, step,
    schedule. Returns the loss and the logits, detached and still on the device: nothing is read back (except by
    fp16's GradScaler, whose step reads its inf check on the host, as torch's does)."""
    with autocast(device, cfg.amp):
        output = model(images)
        loss = F.cross_entropy(output, target)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if cfg.clip_grad > 0:
        nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    scheduler.step()
    return loss.detach(), output.detach()


def train_one_epoch(
    model: nn.Module,
    loader: Batches,
    optimizer: Optimizer,
    scheduler: LRScheduler,
    *,
    epoch: int,
    cfg: TrainConfig,
    device: torch.device,
    perturb: Perturb | None = None,
    perturb_model: nn.Module | None = None,
    scaler: torch.amp.GradScaler | None = None,
    on_log: Callable[[int, float, float], None] | None = None,
    progress: bool = False,
    last_good: Path | None = None,
) -> dict[str, float]:
    """One pass over `loader` (epoch is 0-based); returns train loss/top1/top5 reduced over ranks.

    `model` may be the DDP/compiled wrapper; `perturb` gets `perturb_model` (the plain module) so that generating
    adversarial examples never triggers DDP's gradient synchronisation. The device is read only every print_freq
    iterations (the course's log line, `on_log(step, loss, lr)` for TensorBoard, and the non-finite-loss check) and
    once at the end; the line's Time is the mean seconds per iteration since the previous read.
    """
    info = dist_info()
    model.train()
    meter = _Meter(device)
    n_iters = len(loader)
    end, since = time.perf_counter(), 0
    batches = _progress(loader, n_iters, f"epoch {epoch + 1}/{cfg.epochs}", progress and info.is_main)
    for i, (images, target) in enumerate(batches):
        images = images.to(device, non_blocking=True)
        target = target.to(device, non_blocking=True)
        if cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if perturb is not None:
            images = perturb(perturb_model or model, images, target).detach()
        loss, output = train_step(model, images, target, optimizer, scheduler, cfg=cfg, device=device, scaler=scaler)
        meter.update(loss, output.float(), target)
        since += 1
        if i % cfg.print_freq == 0:
            seen = meter.read()
            _stop_if_diverged(seen, epoch, i, n_iters, info, device, last_good)
            now = time.perf_counter()
            batch_time, end, since = (now - end) / since, now, 0
            log.info(
                "Epoch: [%d][%d/%d]\tTime %.3f\tLoss %.2f (%.2f)\tAcc@1 %.2f (%.2f)\tAcc@5 %.2f (%.2f)",
                epoch + 1, i, n_iters, batch_time, seen.loss, seen.avg_loss, seen.top1, seen.avg_top1, seen.top5,
                seen.avg_top5,
            )  # fmt: skip
            if on_log is not None:
                on_log(epoch * n_iters + i, seen.loss, scheduler.get_last_lr()[0])
    if since:  # iterations after the last print point are not checked yet
        _stop_if_diverged(meter.read(), epoch, n_iters - 1, n_iters, info, device, last_good)
    log.info("[Training]: Epoch %d finished with lr=%f", epoch + 1, scheduler.get_last_lr()[0])
    return meter.reduced(info)


def _stop_if_diverged(
    seen: _Reading, epoch: int, upto: int, n_iters: int, info: DistInfo, device: torch.device, last_good: Path | None
) -> None:
    """Raise `TrainingDiverged` if a loss of iterations 0..`upto` was not finite, here or (DDP) on another rank."""
    bad = seen.first_bad >= 0
    elsewhere = False
    if info.world_size > 1:  # every rank must stop together, or the others wait forever in all-reduce
        flag = torch.full((1,), float(bad), device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        elsewhere = _host(flag)[0] > 0 and not bad
    if not (bad or elsewhere):
        return
    kept = f"the last good checkpoint is {last_good}" if last_good else "no epoch completed, so no checkpoint"
    where = (
        f"loss is {seen.bad_loss} at epoch {epoch + 1}, iteration {seen.first_bad}/{n_iters}"
        if bad
        else f"another rank's loss is not finite by epoch {epoch + 1}, iteration {upto}/{n_iters}"
    )
    raise TrainingDiverged(f"{where} (rank {info.rank}); stopped, {kept}")


@torch.no_grad()
def _forward_eval(model: nn.Module, images: Tensor, flip: bool, device: torch.device, amp: str) -> Tensor:
    with autocast(device, amp):
        output = model(images).float()
        if flip:  # the course's test-time augmentation: average with the mirrored image
            output = 0.5 * (output + model(torch.flip(images, dims=(3,))).float())
    return output


def evaluate(
    model: nn.Module,
    loader: Batches,
    *,
    device: torch.device,
    flip: bool = False,
    amp: Literal["off", "bf16", "fp16"] = "off",
    perturb: Perturb | None = None,
    print_freq: int = 10,
    progress: bool = False,
) -> dict[str, float]:
    """Loss, top-1 and top-5 (percent) over every image of `loader`, summed across ranks.

    `flip` averages the logits of each image and its horizontal flip (the course's `-e`); `perturb(model, x, y)`
    evaluates on the images it returns instead (e.g. PGD adversarial examples), with gradients enabled for it only.
    Like training, it reads the device only every `print_freq` batches (the course's Test line) and at the end.
    """
    info = dist_info()
    model.eval()
    meter = _Meter(device)
    n_iters = len(loader)
    end, since = time.perf_counter(), 0
    for i, (images, target) in enumerate(_progress(loader, n_iters, "eval", progress and info.is_main)):
        images = images.to(device, non_blocking=True)
        target = target.to(device, non_blocking=True)
        if perturb is not None:
            with torch.enable_grad():
                images = perturb(model, images, target).detach()
        output = _forward_eval(model, images, flip, device, amp)
        meter.update(F.cross_entropy(output, target), output, target)
        since += 1
        if i % print_freq == 0:
            seen = meter.read()
            now = time.perf_counter()
            batch_time, end, since = (now - end) / since, now, 0
            log.info("Test: [%d/%d]\tTime %.3f\tAcc@1 %.2f (%.2f)\tAcc@5 %.2f (%.2f)",
                     i, n_iters, batch_time, seen.top1, seen.avg_top1, seen.top5, seen.avg_top5)  # fmt: skip
    result = meter.reduced(info)
    log.info("******Acc@1 %.3f Acc@5 %.3f", result["top1"], result["top5"])
    return result


# ---------------------------------------------------------------------------------------------------------------------
# checkpoints


TMP_GLOB = ".*.tmp"  # the temporary files of atomic writes; one a kill left behind is removed by the next fit


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """`write(fh)` into a hidden temporary file beside `path`, fsync, rename: a crash never leaves a half-written
    file under `path`. An OSError (a full disk, a read-only folder) names `path`, not the temporary file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)  # torch.save into an open file raises the OSError of a failed write itself, not an enforce
            fh.flush()
            os.fsync(fh.fileno())  # on disk before the rename, or a power cut can leave an empty file under `path`
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno is None or exc.filename == str(path):
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    finally:
        tmp.unlink(missing_ok=True)


def _atomic_save(obj: Any, path: Path) -> None:
    _atomic_write(path, lambda fh: torch.save(obj, fh))


def save_checkpoint(state: Mapping[str, Any], models_dir: Path, *, is_best: bool) -> Path:
    """Write `checkpoint.pth.tar` (and `model_best.pth.tar` without the optimizer when `is_best`) atomically."""
    missing = [k for k in COURSE_KEYS if k not in state]
    if missing:
        raise ValueError(f"checkpoint state lacks the course keys {missing}")
    models_dir.mkdir(parents=True, exist_ok=True)
    if is_best:
        _save_best(state, models_dir)
    path = models_dir / CHECKPOINT_NAME
    _atomic_save(dict(state), path)  # last: the checkpoint is the commit point
    return path


def _save_best(state: Mapping[str, Any], models_dir: Path) -> Path:
    path = models_dir / BEST_NAME
    models_dir.mkdir(parents=True, exist_ok=True)
    _atomic_save({k: v for k, v in state.items() if k != "optimizer"}, path)
    return path


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with `weights_only=True` (ours or the course's); the state_dict loses DDP/compile prefixes."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # unpickling errors have many types; the file is the culprit either way
        raise CheckpointError(f"{path} is not a readable checkpoint: {_load_failure(exc)}") from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        keys = sorted(map(str, ckpt)) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path} has no 'state_dict' (found {keys})")
    if not isinstance(ckpt["state_dict"], Mapping):
        raise CheckpointError(f"{path}: 'state_dict' is a {type(ckpt['state_dict']).__name__}, not a dict of tensors")
    ckpt["state_dict"] = clean_state_dict(ckpt["state_dict"])
    _check_finite(path, ckpt["state_dict"])
    return ckpt


def _load_failure(exc: Exception) -> str:
    """torch.load's error in a few words (its own text can run to a page and ends in a documentation URL)."""
    if "Unsupported global" in str(exc):  # the weights-only unpickler met a class or a function
        return "it holds Python objects other than tensors, which are not loaded (they could run code)"
    return f"not a file written by torch.save, or a truncated or corrupt one ({type(exc).__name__})"


def _check_finite(path: Path, state_dict: Mapping[str, Any]) -> None:
    """A NaN or inf weight makes every number computed from it meaningless: refuse the file, naming the tensor."""
    for key, value in state_dict.items():
        if isinstance(value, Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(
                f"{path}: tensor {key!r} holds {bad} NaN/inf value(s) of {value.numel()} (did the run diverge?)"
            )


def clean_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Drop the `module.` (DDP) and `_orig_mod.` (torch.compile) prefixes."""
    out = {}
    for key, value in state_dict.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def load_weights(model: nn.Module, ckpt: Mapping[str, Any], path: Path | str = "checkpoint") -> None:
    """Load `ckpt["state_dict"]` strictly; a mismatch is a one-line `WeightsMismatch` saying what the file holds
    (architecture, class count) and what the model is."""
    state, want = ckpt["state_dict"], model.state_dict()
    arch = str(ckpt.get("model_arch", "?"))
    held = f"{path} holds model_arch={arch!r} weights ({_head_size(state)} classes)"
    missing, unexpected = [k for k in want if k not in state], [k for k in state if k not in want]
    if missing or unexpected:
        raise WeightsMismatch(
            f"{held}, not {type(model).__name__} weights: {len(missing)} of its tensors missing (first "
            f"{missing[:2]}), {len(unexpected)} unexpected (first {unexpected[:2]})",
            arch=arch,
            classes=None,
        )
    shapes = {k: (tuple(state[k].shape), tuple(want[k].shape)) for k in want if state[k].shape != want[k].shape}
    heads = {(a[0], b[0]) for a, b in shapes.values() if a[1:] == b[1:]}
    if shapes:
        classes = heads.pop() if len(heads) == 1 and all(a[1:] == b[1:] for a, b in shapes.values()) else None
        detail = (
            f"a {classes[0]}-way head, the {type(model).__name__} here has {classes[1]} classes"
            if classes
            else "shapes differ: " + ", ".join(f"{k} {a} vs {b}" for k, (a, b) in list(shapes.items())[:3])
        )
        raise WeightsMismatch(f"{held} that do not fit: {detail}", arch=arch, classes=classes)
    model.load_state_dict(state)


def _head_size(state: Mapping[str, Any]) -> int | str:
    """The class count of a classifier's state dict: the rows of its last 2-D weight (the linear head), or '?'."""
    weights = [v for k, v in state.items() if k.endswith("weight") and isinstance(v, Tensor) and v.ndim == 2]
    return int(weights[-1].shape[0]) if weights else "?"


# ---------------------------------------------------------------------------------------------------------------------
# run folder: config.json, metrics.csv, TensorBoard, curves.png


def peak_memory_mib(device: torch.device) -> float:
    """Peak CUDA memory allocated since the last reset on CUDA, else this process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


class RunLog:
    """What rank 0 writes into the run folder each epoch."""

    def __init__(self, run_dir: Path, cfg: TrainConfig, *, start_epoch: int = 0) -> None:
        self.run_dir = run_dir
        self.cfg = cfg
        run_dir.mkdir(parents=True, exist_ok=True)
        config = (json.dumps(asdict(cfg), indent=2) + "\n").encode()
        _atomic_write(run_dir / "config.json", lambda fh: fh.write(config))
        self.metrics_path = run_dir / "metrics.csv"
        self.rows = self._read_rows(start_epoch)
        self.writer = None
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir))

    def _read_rows(self, start_epoch: int) -> list[dict[str, float]]:
        """Rows of earlier epochs (a resumed run). Rows past the checkpoint (a killed run's, or a finished run's when
        an older snapshot is resumed) are left in the file until the first new row replaces them: the file is never
        cut before the epoch that supersedes them is written."""
        if not self.metrics_path.is_file():
            return []
        with self.metrics_path.open(newline="") as fh:
            rows = [{k: _number(k, v) for k, v in row.items() if v != ""} for row in csv.DictReader(fh)]
        kept = [r for r in rows if r.get("epoch", 0) <= start_epoch]
        if len(kept) < len(rows):
            log.info("%s: the rows of epochs %d-%d will be replaced as this run redoes them", self.metrics_path,
                     start_epoch + 1, max(r.get("epoch", 0) for r in rows))  # fmt: skip
        return kept

    def _write_csv(self, rows: list[dict[str, float]]) -> None:
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
        _atomic_write(self.metrics_path, lambda fh: fh.write(text.getvalue().encode()))

    def step(self, step: int, loss: float, lr: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar("data/training_loss", loss, step)
            self.writer.add_scalar("data/learning_rate", lr, step)

    def epoch(self, row: dict[str, float]) -> None:
        self.rows.append(row)
        self._write_csv(self.rows)
        if self.writer is not None:
            e = int(row["epoch"])
            self.writer.add_scalars("data/top1_accuracy", {"train": row["train_top1"], "val": row["val_top1"]}, e)
            self.writer.add_scalars("data/top5_accuracy", {"train": row["train_top5"], "val": row["val_top5"]}, e)
            self.writer.flush()
        if self.cfg.plots:
            plot_curves(self.rows, self.run_dir / "curves.png")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _number(key: str, text: str) -> float:
    return int(float(text)) if key == "epoch" else float(text)


def plot_curves(rows: Sequence[Mapping[str, float]], path: Path) -> Path:
    """Loss, learning rate, and top-1/top-5 train vs val per epoch, as one PNG (no pyplot global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in rows]
    fig = Figure(figsize=(13, 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_lr, ax_acc = fig.subplots(1, 3)
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], "o-", label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in rows], "o-", label="val")
    ax_loss.set(title="cross-entropy loss", xlabel="epoch")
    ax_lr.plot(epochs, [r["lr"] for r in rows], "o-")
    ax_lr.set(title="learning rate (end of epoch)", xlabel="epoch")
    for k, style in (("top1", "-"), ("top5", "--")):
        for split, color in (("train", "C0"), ("val", "C1")):
            ax_acc.plot(epochs, [r[f"{split}_{k}"] for r in rows], "o" + style, color=color, label=f"{split} {k}")
    ax_acc.set(title="accuracy (%)", xlabel="epoch", ylim=(0, 100))
    for ax in (ax_loss, ax_acc):
        ax.legend(fontsize="small")
    for ax in (ax_loss, ax_lr, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.savefig(path, dpi=90)
    return path


LOCK_NAME = ".lock"


@contextmanager
def lock_run_folder(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the folder `run_dir` (`hold_lock`), so two trainings never write one run folder: the
    second raises `RunFolderBusy` at once instead of mixing its epochs with the first's."""
    with hold_lock(run_dir, f"run folder {run_dir} is in use by another training"):
        yield


@contextmanager
def hold_lock(folder: Path, busy: str) -> Iterator[None]:
    """Hold an exclusive `flock` on the directory `folder` itself (made if missing; the OS drops it if the process
    dies), writing the holder's pid into `<folder>/.lock` for the message; raise `RunFolderBusy` (`busy`, the pid,
    what to do) when another process holds it. The lock is on the folder, not on a file in it, so unlinking `.lock`
    does not hand it to a second process."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid_file = folder / LOCK_NAME
            holder = pid_file.read_text().strip() if pid_file.is_file() else ""
            raise RunFolderBusy(f"{busy} (pid {holder or '?'}): wait for it to end, or use another folder") from None
        (folder / LOCK_NAME).write_text(f"{os.getpid()}\n")
        yield
    finally:
        os.close(fd)


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete the hidden `.*.tmp` files an interrupted atomic write left in `run_dir` and its models/ (call it while
    holding the folder's lock: then no live writer owns them). Returns what was removed."""
    stale = [p for folder in (run_dir, run_dir / "models") for p in sorted(folder.glob(TMP_GLOB)) if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
        log.info("removed %s, left by an interrupted write", path)
    return stale


def new_run_dir(out: Path, model_arch: str, *, create: bool = False) -> Path:
    """`<out>/<YYYYmmdd-HHMMSS>-<arch>` (no spaces or colons), with a numeric suffix if that name is taken. With
    `create` the folder is made here, exclusively: two runs started in the same second get different folders."""
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{model_arch}".replace(" ", "_").replace(":", "-")
    for n in itertools.count(1):
        path = out / (stem if n == 1 else f"{stem}-{n}")
        if path.exists():
            continue
        if not create:
            return path
        try:
            path.mkdir(parents=True)
        except FileExistsError:
            continue
        return path
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------------------------------
# the loop


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch, as in metrics.csv
    best_score: float = -math.inf  # best value of cfg.best_metric
    start_epoch: int = 0  # epochs already done when fit began (a resume)
    checkpoint: Path | None = None
    best: Path | None = None


def fit(
    model: nn.Module,
    train_loader: Batches,
    val_loader: Batches,
    cfg: TrainConfig,
    *,
    device: torch.device,
    run_dir: Path | None = None,
    resume: str | os.PathLike[str] | None = None,
    start_epoch: int = 0,
    perturb: Perturb | None = None,
    extra_evals: Sequence[ExtraEval] = (),
    progress: bool = False,
) -> FitResult:
    """Train `model` for epochs [start, cfg.epochs), validating and checkpointing after each one.

    `run_dir` receives config.json, metrics.csv, TensorBoard events, curves.png and models/ (rank 0 only; None writes
    nothing); rank 0 holds its lock (`lock_run_folder`) throughout and first removes temporaries a kill left there.
    `resume` continues from a checkpoint (its epoch count, weights, optimizer, scheduler and best score); without
    it, `start_epoch` epochs count as done (the course's `--start-epoch`: numbering and schedule start there). A
    resumed run that is already complete trains nothing and writes nothing. On CUDA cuDNN autotunes its convolutions
    meanwhile (`cudnn_autotune`, as the course does). The model must already be on `device`;
    under an initialized process group it is wrapped in DDP here. Ctrl-C raises `TrainingInterrupted` naming the
    last committed checkpoint.
    """
    if not 0 <= start_epoch <= cfg.epochs:
        raise ValueError(f"start_epoch must be in [0, epochs={cfg.epochs}], got {start_epoch}")
    result = FitResult(start_epoch=start_epoch)
    with ExitStack() as stack:
        stack.enter_context(cudnn_autotune(device))
        if run_dir is not None and dist_info().is_main:
            stack.enter_context(lock_run_folder(run_dir))
            remove_stale_temporaries(run_dir)
        try:
            return _fit(model, train_loader, val_loader, cfg, result, device=device, run_dir=run_dir, resume=resume,
                        perturb=perturb, extra_evals=extra_evals, progress=progress)  # fmt: skip
        except KeyboardInterrupt as exc:
            if isinstance(exc, TrainingInterrupted):
                raise
            last = result.checkpoint or (Path(resume) if resume is not None else None)
            raise TrainingInterrupted(last, str(exc)) from exc


def _fit(
    model: nn.Module,
    train_loader: Batches,
    val_loader: Batches,
    cfg: TrainConfig,
    result: FitResult,
    *,
    device: torch.device,
    run_dir: Path | None,
    resume: str | os.PathLike[str] | None,
    perturb: Perturb | None,
    extra_evals: Sequence[ExtraEval],
    progress: bool,
) -> FitResult:
    """`fit`'s body; fills `result` as it goes, so an interrupt still knows the last checkpoint."""
    info = dist_info()
    optimizer = build_optimizer(model, cfg)
    iters = len(train_loader)
    scheduler = build_scheduler(optimizer, cfg, iters)
    if cfg.amp == "fp16" and device.type != "cuda":
        raise ConfigError("amp", f"'bf16' or 'off' on {device}: fp16 needs a CUDA device", cfg.amp)
    scaler = torch.amp.GradScaler(device.type) if cfg.amp == "fp16" else None

    if resume is not None:
        result.start_epoch, result.best_score = _restore(Path(resume), model, optimizer, scheduler, scaler, iters, cfg)
    elif result.start_epoch > 0:
        scheduler.fast_forward(result.start_epoch * iters)
    if result.start_epoch >= cfg.epochs:
        log.info("nothing to train: %d of %d epochs are done", result.start_epoch, cfg.epochs)
        return result
    models_dir = run_dir / "models" if run_dir is not None else None
    if models_dir is not None and resume is not None and info.is_main:
        _refuse_rewinding(models_dir / CHECKPOINT_NAME, Path(resume), result.start_epoch)
    runlog = RunLog(run_dir, cfg, start_epoch=result.start_epoch) if run_dir is not None and info.is_main else None
    if runlog is not None:
        result.history = list(runlog.rows)
    if models_dir is not None and (models_dir / CHECKPOINT_NAME).exists() and result.start_epoch > 0:
        result.checkpoint = models_dir / CHECKPOINT_NAME
    resumed_from = Path(resume) if resume is not None else None  # the last good state until an epoch here completes

    net = prepare_model(model, cfg)
    _state_like_params(optimizer)  # a resumed optimizer's buffers follow the weights' layout
    if info.world_size > 1:
        if cfg.sync_bn:
            from impl.sync_bn import convert_sync_batchnorm

            convert_sync_batchnorm(model, device)
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    try:
        for epoch in range(result.start_epoch, cfg.epochs):
            _seed_epoch(cfg, epoch, info, train_loader)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            train = train_one_epoch(
                net,
                train_loader,
                optimizer,
                scheduler,
                epoch=epoch,
                cfg=cfg,
                device=device,
                perturb=perturb,
                perturb_model=model,
                scaler=scaler,
                on_log=runlog.step if runlog is not None else None,
                progress=progress,
                last_good=result.checkpoint or resumed_from,
            )
            val = evaluate(model, val_loader, device=device, flip=cfg.val_flip, amp=cfg.amp, print_freq=cfg.print_freq)
            row: dict[str, float] = {"epoch": epoch + 1, "lr": scheduler.get_last_lr()[0]}
            row |= {f"train_{k}": v for k, v in train.items()} | {f"val_{k}": v for k, v in val.items()}
            for extra in extra_evals:
                row |= {k: float(v) for k, v in extra(model).items()}
            row |= {"seconds": time.perf_counter() - start, "peak_mem_mib": peak_memory_mib(device)}
            if cfg.best_metric not in row:
                raise KeyError(f"TrainConfig.best_metric={cfg.best_metric!r} is not an epoch metric; have {list(row)}")
            is_best = row[cfg.best_metric] > result.best_score
            result.best_score = max(row[cfg.best_metric], result.best_score)
            result.history.append(row)
            state: dict[str, Any] | None = None
            if models_dir is not None and info.is_main:
                state = {
                    "epoch": epoch + 1,
                    "model_arch": cfg.model_arch,
                    "state_dict": model.state_dict(),
                    "best_acc1": result.best_score,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "best_metric": cfg.best_metric,
                    "config": asdict(cfg),
                }
                if scaler is not None:
                    state["scaler"] = scaler.state_dict()
                # checkpoint.pth.tar goes last: it commits the epoch, so whatever a crash interrupts before it is
                # redone on resume (which drops metrics rows past the checkpoint) instead of being missing forever
                if is_best:
                    result.best = _save_best(state, models_dir)
            if runlog is not None:
                runlog.epoch(row)
            if state is not None and models_dir is not None:
                result.checkpoint = save_checkpoint(state, models_dir, is_best=False)
    finally:
        if runlog is not None:
            runlog.close()
    if result.best is None and models_dir is not None and (models_dir / BEST_NAME).exists():
        result.best = models_dir / BEST_NAME
    return result


def _refuse_rewinding(folder_checkpoint: Path, resume: Path, epoch: int) -> None:
    """A resume into a folder whose checkpoint is past the resumed one's epoch would overwrite that later checkpoint,
    the folder's better model_best and its metrics: refuse before writing anything."""
    if not folder_checkpoint.is_file() or folder_checkpoint.resolve() == resume.resolve():
        return
    later = int(load_checkpoint(folder_checkpoint).get("epoch", 0))
    if later > epoch:
        raise CheckpointError(
            f"{folder_checkpoint} is at epoch {later}, past {resume} (epoch {epoch}): resuming into its run folder "
            "would overwrite that run's later checkpoint and model_best; pass --out DIR to branch into a new folder"
        )


def _restore(
    path: Path,
    model: nn.Module,
    optimizer: Optimizer,
    scheduler: WarmupCosineLR,
    scaler: torch.amp.GradScaler | None,
    iters_per_epoch: int,
    cfg: TrainConfig,
) -> tuple[int, float]:
    """Load a checkpoint into the training state; returns (completed epochs, best score)."""
    ckpt = load_checkpoint(path)
    load_weights(model, ckpt, path)
    if "optimizer" not in ckpt:
        raise CheckpointError(f"{path} has no optimizer state (a model_best file?); resume from {CHECKPOINT_NAME}")
    _check_schedule_matches(path, ckpt, cfg)
    optimizer.load_state_dict(ckpt["optimizer"])
    epoch = int(ckpt.get("epoch", 0))
    # the schedule is closed-form, so the step count is all it needs; a course checkpoint has no scheduler state (nor
    # a saved config, so its schedule settings cannot be checked)
    sched_state = ckpt.get("scheduler") or {}
    scheduler.fast_forward(int(sched_state.get("last_epoch", epoch * iters_per_epoch)))
    if scaler is not None and "scaler" in ckpt:
        scaler.load_state_dict(ckpt["scaler"])
    best = float(ckpt.get("best_acc1", -math.inf))
    saved_metric = ckpt.get("best_metric", "val_top1")  # a course checkpoint's best_acc1 is val top-1
    if saved_metric != cfg.best_metric:
        log.info("%s kept the best %s; this run selects by %s, so its best starts afresh", path, saved_metric,
                 cfg.best_metric)  # fmt: skip
        best = -math.inf
    log.info("=> loaded checkpoint '%s' (epoch %d, best %.3f)", path, epoch, best)
    return epoch, best


# what a resume restores and must not silently change: the step count per epoch and the schedule's shape (the
# scheduler's step count only means the same thing under the same schedule), and the hyperparameters the restored
# optimizer carries in its param groups (a new value would be written to config.json but not used)
RESUME_FIXED = ("batch_size", "epochs", "warmup", "lr", "weight_decay", "momentum")


def _check_schedule_matches(path: Path, ckpt: Mapping[str, Any], cfg: TrainConfig) -> None:
    """Refuse a resume whose RESUME_FIXED settings differ from the checkpoint's (its saved config, or for a course
    checkpoint the optimizer's param group), naming the flag and the value that resumes it."""
    saved = dict(ckpt.get("config") or {})
    if not saved:  # a course checkpoint: its optimizer state still knows the decay and momentum it ran with
        groups = (ckpt.get("optimizer") or {}).get("param_groups") or [{}]
        saved = {k: groups[0][k] for k in ("weight_decay", "momentum") if k in groups[0]}
    if cfg.optimizer != "sgd":
        saved.pop("momentum", None)  # Adam and AdamW have no momentum setting: the flag is unused
    for name in RESUME_FIXED:
        if name in saved and saved[name] != getattr(cfg, name):
            flag = COURSE_FLAGS[name]
            raise CheckpointError(
                f"checkpoint {path} was trained with {name}={saved[name]}; this run has {flag} {getattr(cfg, name)}: "
                f"pass {flag} {saved[name]} to resume it"
            )
