"""§3.3.2 adversarial training: batch perturbations for the training engine and a guard. Spec: spec/adversarial/.

`impl.train.fit(perturb=..., extra_evals=..., cfg.best_metric=...)` takes what `adversarial_training` builds:

* **Madry PGD-k** (`method="pgd"`; the seed: k = 3, ε = 8/255, α = 0.01) or **FGSM-RS** (`method="fgsm-rs"`, Wong et
  al. 2020: uniform start in the ε-ball, one step of α = 1.25·ε), in pixel units on normalized batches.
* per-epoch robust validation: PGD top-1/top-5 (`val_pgd_top1`, `val_pgd_top5`) beside the clean numbers, and
  `model_best` selected by `val_pgd_top1` (robust overfitting, Rice et al. 2020, makes the last epoch a poor choice);
* with FGSM-RS, `CatastrophicOverfittingMonitor`: PGD accuracy on one fixed batch, checked each epoch; a drop of more
  than `co_drop` points below its best raises `CatastrophicOverfitting` (Wong et al.'s symptom: FGSM accuracy soars
  while PGD accuracy collapses to ~0 within an epoch).

Choices, stated: adversarial examples are generated with the model in **eval mode** (the `impl.attack` contract):
BatchNorm uses its running statistics and is not updated by the k attack forwards, dropout is off, so the only
statistics update per batch comes from the training forward on the adversarial batch. Madry's and Wong's code generate
in train mode; eval mode attacks the function that evaluation attacks. The attack never computes parameter gradients
(`torch.autograd.grad` with respect to the input only), so `.grad` is exactly as the training step left it — stronger
than zeroing it afterwards. Random starts draw from torch's global generator, which the engine reseeds every epoch, so
a resumed run replays the same perturbations.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from impl.attack import eval_mode, pgd
from impl.data import IMAGENET_MEAN, IMAGENET_STD
from impl.train import DistInfo, ExtraEval, Perturb, autocast, evaluate, make_eval_loader

log = logging.getLogger(__name__)

Method = Literal["pgd", "fgsm-rs"]
METHODS: tuple[Method, ...] = ("pgd", "fgsm-rs")


class CatastrophicOverfitting(RuntimeError):
    """PGD accuracy on the monitor's fixed batch fell far below its best: single-step training has broken down."""


@dataclass(frozen=True)
class AdvTrainConfig:
    """Adversarial training, in [0, 1] pixel units (the CLI's `--adv-train --adv-eps --adv-alpha --adv-steps`)."""

    method: Method = "pgd"
    eps: float = 8 / 255  # L∞ radius of the training perturbation
    alpha: float | None = None  # step size; None: 0.01 for PGD (the seed), 1.25·eps for FGSM-RS (Wong et al.)
    steps: int = 3  # PGD iterations during training (FGSM-RS takes 1)
    eval_steps: int = 10  # PGD iterations of the per-epoch robust validation and of the monitor
    co_drop: float = 20.0  # FGSM-RS: percentage points below its best that count as catastrophic overfitting
    amp: Literal["off", "bf16", "fp16"] = "off"  # generate under autocast (the engine's --amp)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"AdvTrainConfig.method must be one of {METHODS}, got {self.method!r}")
        if not 0 < self.eps <= 1:
            raise ValueError(f"AdvTrainConfig.eps is in pixel units and must be in (0, 1], got {self.eps}")
        if self.alpha is not None and not self.alpha > 0:
            raise ValueError(f"AdvTrainConfig.alpha must be > 0, got {self.alpha}")
        if self.steps < 1 or self.eval_steps < 1:
            raise ValueError(
                f"AdvTrainConfig needs steps >= 1 and eval_steps >= 1, got {self.steps}, {self.eval_steps}"
            )
        if not self.co_drop > 0:
            raise ValueError(f"AdvTrainConfig.co_drop must be > 0 points, got {self.co_drop}")

    @property
    def step_size(self) -> float:
        if self.alpha is not None:
            return self.alpha
        return 0.01 if self.method == "pgd" else 1.25 * self.eps

    @property
    def eval_alpha(self) -> float:
        """Step of the evaluation PGD: 2.5·ε/steps (Madry et al.), so it can cross the ball from a random start."""
        return 2.5 * self.eps / self.eval_steps


def make_perturb(
    cfg: AdvTrainConfig, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> Perturb:
    """The training perturbation of `cfg`: `perturb(model, images, labels) -> adversarial images` (normalized)."""
    steps = cfg.steps if cfg.method == "pgd" else 1

    def perturb(model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
        with autocast(images.device, cfg.amp):
            # the engine's own normalized batches: no range check, so no host sync in the training step
            adv = pgd(
                model, images, labels, eps=cfg.eps, alpha=cfg.step_size, steps=steps, random_start=True,
                mean=mean, std=std, check_range=False,
            )  # fmt: skip
        return adv

    perturb.__name__ = f"{cfg.method}_perturb"
    return perturb


def pgd_eval_perturb(
    cfg: AdvTrainConfig, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> Perturb:
    """The evaluation attack: PGD-`eval_steps` with a random start at the training ε."""

    def perturb(model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
        return pgd(model, images, labels, eps=cfg.eps, alpha=cfg.eval_alpha, steps=cfg.eval_steps, mean=mean, std=std)

    return perturb


def robust_validation(
    loader: DataLoader,
    cfg: AdvTrainConfig,
    device: torch.device,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> ExtraEval:
    """An `extra_evals` entry: PGD top-1/top-5 over `loader` as `val_pgd_top1` / `val_pgd_top5`."""
    attack = pgd_eval_perturb(cfg, mean, std)

    def run(model: nn.Module) -> Mapping[str, float]:
        result = evaluate(model, loader, device=device, perturb=attack)
        return {"val_pgd_top1": result["top1"], "val_pgd_top5": result["top5"]}

    return run


class CatastrophicOverfittingMonitor:
    """PGD accuracy on one fixed batch after each epoch; raises `CatastrophicOverfitting` on a drop of > co_drop points.

    Used as an `extra_evals` entry, it adds `fixed_pgd_top1` to the epoch's row before it judges.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        cfg: AdvTrainConfig,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        seed: int = 0,
    ) -> None:
        if images.shape[0] != labels.shape[0] or images.shape[0] == 0:
            raise ValueError(
                f"the monitor needs a non-empty batch, got {tuple(images.shape)} images, {tuple(labels.shape)} labels"
            )
        self.images, self.labels, self.cfg, self.mean, self.std = images, labels, cfg, tuple(mean), tuple(std)
        self.seed = seed
        self.best = float("-inf")
        self.history: list[float] = []

    def measure(self, model: nn.Module) -> float:
        """PGD top-1 (%) on the fixed batch; its random start is seeded, so equal models give equal numbers."""
        images, labels = self.images.to(next(model.parameters()).device), self.labels
        labels = labels.to(images.device)
        g = torch.Generator(images.device).manual_seed(self.seed)
        adv = pgd(
            model, images, labels, eps=self.cfg.eps, alpha=self.cfg.eval_alpha, steps=self.cfg.eval_steps,
            mean=self.mean, std=self.std, generator=g,
        )  # fmt: skip
        with torch.no_grad(), eval_mode(model):
            return 100 * float((model(adv).argmax(1) == labels).float().mean())

    def update(self, acc: float) -> None:
        """Record one epoch's accuracy; raise if it fell more than `co_drop` points below the best so far."""
        self.history.append(acc)
        if self.best - acc > self.cfg.co_drop:
            raise CatastrophicOverfitting(
                f"catastrophic overfitting: PGD-{self.cfg.eval_steps} accuracy on the fixed batch fell from "
                f"{self.best:.1f}% to {acc:.1f}% (more than {self.cfg.co_drop:g} points) after epoch "
                f"{len(self.history)}; training stopped. Keep model_best (chosen by PGD accuracy), or lower --adv-eps "
                "/ --adv-alpha, or use --adv-train pgd"
            )
        self.best = max(self.best, acc)

    def __call__(self, model: nn.Module) -> Mapping[str, float]:
        acc = self.measure(model)
        self.update(acc)
        return {"fixed_pgd_top1": acc}


@dataclass(frozen=True)
class AdversarialTraining:
    """What `impl.train.fit` needs for adversarial training: pass these three through."""

    perturb: Perturb
    extra_evals: tuple[ExtraEval, ...]
    best_metric: str


def adversarial_training(
    cfg: AdvTrainConfig,
    val_loader: DataLoader,
    device: torch.device,
    monitor_batch: tuple[Tensor, Tensor] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> AdversarialTraining:
    """Perturbation, robust validation (and, for FGSM-RS, the monitor on `monitor_batch`), best by `val_pgd_top1`."""
    evals: list[ExtraEval] = [robust_validation(val_loader, cfg, device, mean, std)]
    if cfg.method == "fgsm-rs":
        if monitor_batch is None:
            raise ValueError(
                "FGSM-RS training needs a monitor_batch (images, labels) to detect catastrophic overfitting"
            )
        evals.append(CatastrophicOverfittingMonitor(*monitor_batch, cfg, mean, std))
    return AdversarialTraining(make_perturb(cfg, mean, std), tuple(evals), "val_pgd_top1")


MONITOR_IMAGES = 256  # the FGSM-RS monitor's fixed batch: the first this many robust-validation images


def adversarial_training_on(
    cfg: AdvTrainConfig,
    val_set: Dataset,
    device: torch.device,
    *,
    val_images: int,
    batch_size: int,
    workers: int = 0,
    info: DistInfo | None = None,
    pin_memory: bool = False,
) -> AdversarialTraining:
    """`adversarial_training` on a val set (what `--adv-train` runs): robust validation on its first `val_images`
    images, in this rank's shard, and for FGSM-RS the monitor on the first MONITOR_IMAGES of them."""
    subset = Subset(val_set, range(min(val_images, len(val_set))))  # type: ignore[arg-type]
    loader = make_eval_loader(subset, batch_size, workers=workers, info=info, pin_memory=pin_memory)
    monitor = None
    if cfg.method == "fgsm-rs":  # one fixed batch, the same every epoch
        items = [subset[i] for i in range(min(MONITOR_IMAGES, len(subset)))]
        monitor = (torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items]))
    steps = cfg.steps if cfg.method == "pgd" else 1
    log.info("adversarial training: %s, pixel eps %.4g alpha %.4g, %d step(s)", cfg.method, cfg.eps, cfg.step_size,
             steps)  # fmt: skip
    return adversarial_training(cfg, loader, device, monitor_batch=monitor)
