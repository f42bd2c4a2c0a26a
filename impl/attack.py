"""§3.3 adversarial attacks and an honest robustness evaluation. Spec: spec/attack/.

Two conventions, each behind its own entry point:

* **course mode**: `PGDAttack(loss_fn, num_steps, step_size, epsilon).perturb(model, input)`, the seed's interface. The
  input is ImageNet-normalized; ε and the step are in *normalized* units (0.1 ≈ 6 pixel levels of 255). The target is
  the **least confident label of the clean input**, fixed once before the first step; every step *descends* that
  target's cross-entropy (`x ← x − α·sign(∇)`), projects onto the ε-ball and clamps to the valid normalized box of each
  channel, `[(0 − mean)/std, (1 − mean)/std]`.
* **pixel mode**: `pgd`, `fgsm`, `random_noise`, the torchattacks / foolbox / AutoAttack convention. Images go in and
  out normalized; ε and α are in [0, 1] pixel units; ‖x_adv − x‖∞ ≤ ε in pixel space and pixels stay in [0, 1].

Every attack runs the model in eval mode and gives each module its previous mode back; leaves the input, parameter
`.grad`s and BatchNorm statistics untouched; differentiates with respect to the input only (`torch.autograd.grad`, so no
parameter gradient is computed); keeps no graph between steps (memory flat in the number of steps); and works for
callers inside `torch.no_grad()` or autocast (the loss is taken in float32, summed so fp16 gradients do not underflow).

`evaluate_robustness` measures clean and adversarial top-1/top-5 over a loader for many attacks in one pass (the seed's
tables come from `sweep_specs`) and checks the result against the Carlini et al. (2019) checklist (`sanity_checks`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from itertools import pairwise
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from impl.data import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

AttackFn = Callable[[nn.Module, Tensor, Tensor], Tensor]
"""(model, normalized images (B, C, H, W), labels (B,)) -> normalized adversarial images (B, C, H, W)."""

Mode = Literal["course", "pixel"]
Kind = Literal["pgd", "fgsm", "noise"]

# Normalized inputs are de-normalized to check they are pixels in [0, 1]; float32 rounding stays far below this.
_PIXEL_SLACK = 1e-3


# ---------------------------------------------------------------------------------------------------------------------
# Shared machinery


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module in eval mode for the block, then give each module its own previous mode back."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def _channel_stats(
    images: Tensor, mean: Sequence[float], std: Sequence[float], who: str, check_range: bool = True
) -> tuple[Tensor, Tensor]:
    """Mean and std as (1, C, 1, 1) tensors on the images' device, after checking the images' shape against them and
    (with `check_range`, one host sync) that they de-normalize to pixels in [0, 1]."""
    if images.dim() != 4:
        raise ValueError(f"{who}: images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"{who}: images must be a float tensor (normalized), got dtype {images.dtype}")
    if len(mean) != images.shape[1] or len(std) != images.shape[1]:
        raise ValueError(
            f"{who}: images have {images.shape[1]} channels but mean has {len(mean)} and std has {len(std)} entries"
        )
    if min(std) <= 0:
        raise ValueError(f"{who}: std must be positive, got {tuple(std)}")
    # built on the CPU and copied non-blocking: torch.tensor(..., device="cuda") is a synchronizing copy
    m = torch.tensor(mean, dtype=images.dtype).view(1, -1, 1, 1).to(images.device, non_blocking=True)
    s = torch.tensor(std, dtype=images.dtype).view(1, -1, 1, 1).to(images.device, non_blocking=True)
    if images.numel() == 0 or not check_range:  # an empty batch has no pixels to check (amin() of nothing raises)
        return m, s
    pixels = images.detach() * s + m
    lo, hi = torch.stack([pixels.amin(), pixels.amax()]).tolist()  # one device sync per attack call, not per step
    if lo < -_PIXEL_SLACK or hi > 1 + _PIXEL_SLACK:
        raise ValueError(
            f"{who}: images de-normalized with mean={tuple(mean)} std={tuple(std)} span pixels [{lo:.4g}, {hi:.4g}], "
            "not [0, 1]: pass ImageNet-normalized images (or the mean/std they were normalized with)"
        )
    return m, s


def _check_labels(images: Tensor, labels: Tensor, who: str) -> None:
    if labels.shape != (images.shape[0],) or labels.dtype != torch.long:
        raise ValueError(
            f"{who}: labels must be a long tensor of shape ({images.shape[0]},) matching the batch, "
            f"got shape {tuple(labels.shape)} dtype {labels.dtype}"
        )


def _check_budget(who: str, **values: float) -> None:
    for name, value in values.items():
        if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{who}: {name} must be a finite number >= 0, got {value!r}")


def _check_steps(who: str, steps: int, least: int = 0, what: str = "steps") -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < least:
        raise ValueError(f"{who}: the number of {what} must be an integer >= {least}, got {steps!r}")


def _no_inference_mode(who: str) -> None:
    if torch.is_inference_mode_enabled():
        raise RuntimeError(f"{who}: attacks need autograd; call them outside torch.inference_mode() (no_grad is fine)")


@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Parameters frozen for the whole attack (set once, not per step), their `requires_grad` given back after.

    autograd.grad(loss, x) already skips weight gradients of built-in ops, but a custom Function (CustomConv2d) only
    sees `needs_input_grad`, fixed at its forward, and would compute them anyway.
    """
    frozen = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in frozen:
            p.requires_grad_(False)
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


def _input_grad(model: nn.Module, x: Tensor, loss_of_logits: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
    """(∂loss/∂x, the logits detached) from one forward and one input-only backward; the graph is freed.

    Call it inside `_frozen(model)`: then no parameter gradient is computed or written to `.grad`.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        loss = loss_of_logits(logits)
    grad = torch.autograd.grad(loss, x, allow_unused=True)[0] if loss.requires_grad else None
    if grad is None:
        raise RuntimeError(
            f"the loss of {type(model).__name__} does not depend differentiably on its input (a detach or a "
            "non-differentiable op on the way): gradient attacks cannot run on it"
        )
    return grad, logits.detach()


def _upcast(logits: Tensor) -> Tensor:
    """Logits in at least float32: autocast's fp16/bf16 logits make a coarse loss."""
    return logits if logits.dtype == torch.float64 else logits.float()


def _summed_ce(labels: Tensor) -> Callable[[Tensor], Tensor]:
    return lambda logits: F.cross_entropy(_upcast(logits), labels, reduction="sum")


# ---------------------------------------------------------------------------------------------------------------------
# Course mode


class PGDAttack:
    """The seed's PGD: targeted at the least confident label, in normalized units (§3.3).

    `loss_fn` is the course's criterion (`nn.CrossEntropyLoss()`), called as `loss_fn(logits, target)`. With
    `num_steps=1, step_size=epsilon` it is the course-mode FGSM.
    """

    def __init__(
        self,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        num_steps: int = 10,
        step_size: float = 0.01,  # normalized units per step
        epsilon: float = 0.1,  # L∞ radius in normalized units (0.1 ≈ 6/255 in pixels)
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        _check_steps("PGDAttack", num_steps)
        _check_budget("PGDAttack", step_size=step_size, epsilon=epsilon)
        self.loss_fn = loss_fn
        self.num_steps = num_steps
        self.step_size = step_size
        self.epsilon = epsilon
        self.mean = tuple(mean)
        self.std = tuple(std)

    def perturb(self, model: nn.Module, input: Tensor) -> Tensor:
        """Return adversarial samples for `input` (normalized, (B, C, H, W)) toward its least confident labels.

        An empty batch comes back as an empty copy. Each step is one forward and one input-only backward, updated in
        place: the cost is `num_steps` × (forward + input backward), the floor of the algorithm (bench/attack/floor.py).
        """
        _no_inference_mode("PGDAttack.perturb")
        m, s = _channel_stats(input, self.mean, self.std, "PGDAttack.perturb")
        clean = input.detach()
        output = clean.clone()
        if clean.shape[0] == 0 or self.num_steps == 0:
            return output
        box_lo, box_hi = (0 - m) / s, (1 - m) / s  # (1, C, 1, 1): the valid normalized box
        # clamp_box(clamp_ball(x)) == clamp(x, clamp_box(ball_lo), clamp_box(ball_hi)): one clamp a step, same values
        lo = (clean - self.epsilon).clamp_(box_lo, box_hi)  # clamp(t, a, b) = min(max(t, a), b), bit for bit
        hi = (clean + self.epsilon).clamp_(box_lo, box_hi)
        target: Tensor | None = None

        def target_loss(logits: Tensor) -> Tensor:
            nonlocal target
            if target is None:  # the first step runs on the clean input: its logits fix the target for every step
                target = logits.detach().argmin(dim=1)
            # × batch: a mean-reduced loss_fn divides each example's gradient by B, which fp16 autocast can round to
            # zero (then sign() makes no step); a positive factor leaves every sign, hence the attack, unchanged.
            return self.loss_fn(_upcast(logits), target) * logits.shape[0]

        with eval_mode(model), _frozen(model):
            for _ in range(self.num_steps):
                grad, _ = _input_grad(model, output, target_loss)
                output.add_(grad.sign_(), alpha=-self.step_size)  # descend: make the target more likely
                output.clamp_(lo, hi)
        return output


default_attack = PGDAttack  # the name the course's main.py imports


# ---------------------------------------------------------------------------------------------------------------------
# Pixel mode


def pgd(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    eps: float = 8 / 255,
    alpha: float = 2 / 255,
    steps: int = 10,
    random_start: bool = True,
    restarts: int = 1,
    targeted: bool = False,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    generator: torch.Generator | None = None,
    early_stop: bool = False,
    check_range: bool = True,
) -> Tensor:
    """L∞ PGD in pixel units on normalized images (Madry et al. 2018); returns normalized adversarial images.

    Untargeted (default) ascends the cross-entropy of the true `labels`; `targeted=True` descends the cross-entropy of
    `labels` read as targets. With `restarts > 1` each example keeps its worst restart: a successful one first (wrong
    label, or the target hit), then the one with the highest (untargeted) or lowest (targeted) loss.
    `generator` (on the images' device) draws the random start; None uses torch's global generator.

    `early_stop` (untargeted only): an example the model already misclassifies at a step keeps its current image and
    leaves the batch; only inputs still classified correctly are attacked further, so a step costs in proportion to
    them. Its robust accuracy is never above the full run's up to float rounding (an example fooled at any step stays
    fooled; one never fooled follows the full run's path, but in a smaller batch whose kernels may sum in another
    order, so a near-tie can flip either way), and the returned image is the first that fooled the model, not the one
    of highest loss. Each step then reads one boolean back from the device (a host sync).

    `check_range` verifies that the images de-normalize to [0, 1] pixels, a clear error for unnormalized input at the
    price of one host sync per call; a training loop that feeds its own normalized batches turns it off.

    Cost: `steps` × (forward + input-only backward) per restart, updated in place; no other pass over the model.
    """
    who = "pgd"
    _no_inference_mode(who)
    _check_steps(who, steps)
    _check_steps(who, restarts, least=1, what="restarts")
    _check_budget(who, eps=eps, alpha=alpha)
    if early_stop and targeted:
        raise ValueError("pgd: early_stop applies to the untargeted attack only (targeted=True was given)")
    m, s = _channel_stats(images, mean, std, who, check_range)
    _check_labels(images, labels, who)
    clean = images.detach()
    if clean.shape[0] == 0:
        return clean.clone()
    # δ (pixel units) stays in [-ε, ε] ∩ [-pixel, 1 - pixel]; both contain 0. Kept as normalized bounds of x.
    pixels = (clean * s).add_(m).clamp_(0, 1)
    hi_px = (1 - pixels).clamp_(max=eps)
    lo_px = pixels.neg_().clamp_(min=-eps)  # in the pixels' buffer
    step = (-alpha if targeted else alpha) / s  # (1, C, 1, 1): α pixels in normalized units
    if restarts == 1:
        # Every setup buffer is reused in place (each bit as out of place, spec/attack/test_pgd_edges.py): each live
        # image-sized buffer more costs fresh pages under glibc's allocator in every step (bench/attack/floor.py).
        adv = _start(clean, lo_px, hi_px, s, eps, random_start, generator)
        lo, hi = lo_px.div_(s).add_(clean), hi_px.div_(s).add_(clean)
        with eval_mode(model), _frozen(model):
            _pgd_steps(model, adv, labels, lo, hi, step, steps, early_stop)
        return adv
    lo, hi = clean + lo_px / s, clean + hi_px / s
    direction = -1.0 if targeted else 1.0
    best, best_success, best_loss = clean, None, None
    with eval_mode(model), _frozen(model):
        for _ in range(restarts):
            adv = _start(clean, lo_px, hi_px, s, eps, random_start, generator)
            _pgd_steps(model, adv, labels, lo, hi, step, steps, early_stop)
            with torch.no_grad():
                logits = _upcast(model(adv))
            loss = direction * F.cross_entropy(logits, labels, reduction="none")  # higher = worse for the model
            success = (logits.argmax(1) == labels) if targeted else (logits.argmax(1) != labels)
            if best_success is None:
                best, best_success, best_loss = adv, success, loss
                continue
            better = (success & ~best_success) | ((success == best_success) & (loss > best_loss))
            best = torch.where(better.view(-1, 1, 1, 1), adv, best)
            best_success, best_loss = best_success | success, torch.where(better, loss, best_loss)
    return best


def _start(
    clean: Tensor, lo_px: Tensor, hi_px: Tensor, s: Tensor, eps: float, random_start: bool, gen: torch.Generator | None
) -> Tensor:
    """The first iterate: `clean`, or clean + a uniform δ in [-ε, ε] clamped to [lo_px, hi_px] (pixel units)."""
    if not random_start:
        return clean.clone()
    delta = torch.empty_like(clean).uniform_(-eps, eps, generator=gen)
    return delta.clamp_(lo_px, hi_px).div_(s).add_(clean)  # = clean + min(max(δ, lo_px), hi_px) / s, bit for bit


def _pgd_steps(
    model: nn.Module, adv: Tensor, labels: Tensor, lo: Tensor, hi: Tensor, step: Tensor, steps: int, early_stop: bool
) -> None:
    """`steps` signed-gradient steps on `adv` in place, each clamped to [lo, hi]; with `early_stop`, only on the rows
    the model still classifies correctly (the batch shrinks as examples are fooled)."""
    rows: Tensor | None = None  # the rows still attacked; None: all of them
    for _ in range(steps):
        x, y = (adv, labels) if rows is None else (adv[rows], labels[rows])
        grad, logits = _input_grad(model, x, _summed_ce(y))
        grad.sign_()  # sign(∂L/∂δ) = sign(∂L/∂x / std) = sign(∂L/∂x): std > 0
        if early_stop:
            correct = logits.argmax(1) == y
            if not bool(correct.all()):  # the one host sync of a step, early stopping only
                keep = correct.nonzero().squeeze(1)
                rows, grad = (keep if rows is None else rows[keep]), grad[keep]
                if rows.numel() == 0:
                    return
        if rows is None:
            adv.addcmul_(step, grad).clamp_(lo, hi)
        else:
            adv[rows] = torch.min(torch.max(adv[rows].addcmul_(step, grad), lo[rows]), hi[rows])


def fgsm(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    eps: float = 8 / 255,
    alpha: float | None = None,
    random_start: bool = False,
    targeted: bool = False,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One signed-gradient step in pixel units (Goodfellow et al. 2015), projected onto the ε-ball and [0, 1].

    `alpha` defaults to ε, or to 1.25·ε with `random_start` (FGSM-RS, Wong et al. 2020).
    """
    if alpha is None:
        alpha = 1.25 * eps if random_start else eps
    return pgd(
        model, images, labels, eps=eps, alpha=alpha, steps=1, random_start=random_start, targeted=targeted,
        mean=mean, std=std, generator=generator,
    )  # fmt: skip


def random_noise(
    images: Tensor,
    eps: float,
    units: Mode = "pixel",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Uniform noise in the same ε-ball the attacks use (pixel units, or normalized units in course mode), kept valid.

    The baseline an attack must beat: if noise hurts as much as PGD, the gradients carry no information.
    """
    _check_budget("random_noise", eps=eps)
    m, s = _channel_stats(images, mean, std, "random_noise")
    clean = images.detach()
    noise = torch.empty_like(clean).uniform_(-eps, eps, generator=generator)
    if units == "course":
        return torch.min(torch.max(clean + noise, (0 - m) / s), (1 - m) / s)
    pixels = (clean * s + m).clamp(0, 1)
    noise = torch.min(torch.max(noise, -pixels), 1 - pixels)
    return clean + noise / s


# ---------------------------------------------------------------------------------------------------------------------
# Robustness evaluation


def _units(value: float, mode: Mode) -> str:
    """A budget as the report writes it: normalized units in course mode, n/255 in pixel mode."""
    return f"{value:.4g}" if mode == "course" else f"{value * 255:.4g}/255"


@dataclass(frozen=True)
class AttackSpec:
    """One attack of an evaluation, in one mode's units."""

    kind: Kind
    mode: Mode = "course"
    eps: float = 0.1  # L∞ radius: normalized units in course mode, [0, 1] pixel units in pixel mode
    steps: int = 10  # PGD iterations (FGSM: 1, noise: 0)
    alpha: float | None = None  # step size, same units as eps; None: course 0.01, pixel 2/255 (FGSM: eps)
    random_start: bool = True  # pixel-mode PGD only (the course mode starts at the input)
    restarts: int = 1  # pixel-mode PGD only
    early_stop: bool = False  # pixel-mode PGD only: stop attacking inputs once misclassified (`pgd(early_stop=...)`)
    chance_probe: bool = False  # a deliberately large ε: the sanity report expects accuracy near chance

    def __post_init__(self) -> None:
        if self.kind not in ("pgd", "fgsm", "noise"):
            raise ValueError(f"AttackSpec: kind must be pgd, fgsm or noise, got {self.kind!r}")
        if self.mode not in ("course", "pixel"):
            raise ValueError(f"AttackSpec: mode must be course or pixel, got {self.mode!r}")
        _check_budget("AttackSpec", eps=self.eps, alpha=self.step_size)
        _check_steps("AttackSpec", self.steps)
        if self.early_stop and (self.kind, self.mode) != ("pgd", "pixel"):
            raise ValueError(f"AttackSpec: early_stop is for pixel-mode PGD only, got {self.kind} ({self.mode} mode)")

    @property
    def step_size(self) -> float:
        if self.kind == "fgsm":
            return self.eps if self.alpha is None else self.alpha
        if self.alpha is not None:
            return self.alpha
        return 0.01 if self.mode == "course" else 2 / 255

    @property
    def effective_steps(self) -> int:
        return {"pgd": self.steps, "fgsm": 1, "noise": 0}[self.kind]

    @property
    def reaches_edge(self) -> bool:
        """Whether the steps can reach the ball's far edge from any start: steps·α ≥ ε (2ε after a random start)."""
        span = 2 * self.eps if self.kind == "pgd" and self.mode == "pixel" and self.random_start else self.eps
        return self.effective_steps * self.step_size >= span * (1 - 1e-6)

    @property
    def name(self) -> str:
        eps = _units(self.eps, self.mode)
        label = f"pgd-{self.steps}" if self.kind == "pgd" else self.kind
        early = " (early stop)" if self.early_stop else ""
        return f"{label} eps={eps}{early}" + (" (chance probe)" if self.chance_probe else "")

    def build(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> AttackFn:
        """The attack as a function of (model, images, labels); course-mode attacks ignore the labels."""
        if self.kind == "noise":
            return lambda model, x, y: random_noise(x, self.eps, units=self.mode, mean=mean, std=std)
        if self.mode == "course":
            course = PGDAttack(nn.CrossEntropyLoss(), self.effective_steps, self.step_size, self.eps, mean, std)
            return lambda model, x, y: course.perturb(model, x)
        if self.kind == "fgsm":
            return lambda model, x, y: fgsm(model, x, y, eps=self.eps, alpha=self.step_size, mean=mean, std=std)
        options = dict(
            eps=self.eps, alpha=self.step_size, steps=self.steps, random_start=self.random_start,
            early_stop=self.early_stop,
        )  # fmt: skip
        return lambda model, x, y: pgd(model, x, y, **options, restarts=self.restarts, mean=mean, std=std)


def default_specs(
    mode: Mode = "course",
    eps: float | None = None,
    steps: int = 10,
    alpha: float | None = None,
    early_stop: bool = False,
) -> list[AttackSpec]:
    """PGD at the given budget, with FGSM and uniform noise at the same ε as the baselines the sanity report needs.

    `early_stop` early-stops the PGD (pixel mode only; `AttackSpec` refuses it in course mode)."""
    eps = (0.1 if mode == "course" else 8 / 255) if eps is None else eps
    return [
        AttackSpec("pgd", mode, eps, steps, alpha, early_stop=early_stop),
        AttackSpec("fgsm", mode, eps),
        AttackSpec("noise", mode, eps),
    ]


def sweep_specs(
    mode: Mode = "course",
    eps: float | None = None,
    steps: int = 10,
    alpha: float | None = None,
    steps_sweep: Sequence[int] = (5, 10, 20),
    eps_scales: Sequence[float] = (0.5, 1.0, 1.5),
    chance_eps: float | None = None,
    early_stop: bool = False,
) -> list[AttackSpec]:
    """The seed's tables: PGD steps {5, 10, 20} at ε, PGD at ε × {½, 1, 1½} with FGSM and noise at each ε, and a probe.

    The ε rows scale the step size with ε (α·scale), so that their steps span each ball as the base's span its own:
    with α fixed (the course's 0.01 and 10 steps reach at most 0.1), the ε × 1½ row could never leave the ε 0.1 ball
    and repeated the base attack image for image. The chance probe (default ε: 1.0 normalized,
    32/255 pixels) uses α = 2.5·ε/steps (Madry et al.) so that the steps can reach the ball's edge. `early_stop`
    early-stops every PGD of the sweep, the probe included (pixel mode only).
    """
    base = default_specs(mode, eps, steps, alpha, early_stop)[0]

    def pgd_at(e: float, n: int, a: float | None = alpha, probe: bool = False) -> AttackSpec:
        return AttackSpec("pgd", mode, e, n, a, early_stop=early_stop, chance_probe=probe)

    specs = {pgd_at(base.eps, n) for n in steps_sweep}
    for scale in eps_scales:
        e = base.eps * scale
        a = alpha if scale == 1 else base.step_size * scale
        specs |= {pgd_at(e, steps, a), AttackSpec("fgsm", mode, e), AttackSpec("noise", mode, e)}
    probe = (1.0 if mode == "course" else 32 / 255) if chance_eps is None else chance_eps
    specs.add(pgd_at(probe, steps, 2.5 * probe / max(steps, 1), probe=True))
    order = {"pgd": 0, "fgsm": 1, "noise": 2}
    return sorted(specs, key=lambda a: (a.chance_probe, order[a.kind], a.eps, a.steps))


@dataclass(frozen=True)
class AttackResult:
    spec: AttackSpec
    top1: float  # % of examples whose adversarial top-1 prediction is the true label
    top5: float
    max_perturbation: float  # measured max ‖x_adv − x‖∞ in the spec's units (normalized or pixel)
    max_perturbation_pixel: float  # the same in [0, 1] pixel units
    nan_count: int  # non-finite values in the adversarial images and their logits
    seconds: float  # wall time spent generating this attack's images
    target_hit: float | None = None  # course mode: % predicted as the least confident clean label (the target)

    @property
    def strength(self) -> tuple[float, str]:
        """(higher = stronger, what it measures): target hits for the targeted course mode, else accuracy lost."""
        if self.target_hit is not None:
            return self.target_hit, f"{self.target_hit:.2f}% target hits"
        return -self.top1, f"{self.top1:.2f}% top-1"


@dataclass(frozen=True)
class SanityCheck:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class RobustnessReport:
    n: int  # examples evaluated
    num_classes: int
    clean_top1: float  # %
    clean_top5: float  # %
    clean_seconds: float
    results: tuple[AttackResult, ...]
    checks: tuple[SanityCheck, ...] = field(default=())

    @property
    def failed(self) -> tuple[SanityCheck, ...]:
        return tuple(c for c in self.checks if not c.passed)

    def result(self, name: str) -> AttackResult:
        for r in self.results:
            if r.spec.name == name:
                return r
        raise KeyError(f"no attack named {name!r}; have {[r.spec.name for r in self.results]}")

    def rows(self) -> list[dict[str, object]]:
        """One row per attack (clean first): the table the CLI prints and the demo report embeds."""

        course = any(r.target_hit is not None for r in self.results)
        # the step size each attack ran with, in its ε's units (the sweep's ε rows scale it with ε)
        _alphas = {r.spec.name: _units(r.spec.step_size, r.spec.mode) for r in self.results if r.spec.kind != "noise"}

        def row(name: str, top1: float, top5: float, hit: float | None, pert: float, nans: int, seconds: float):
            row = {"attack": name, "step α": _alphas.get(name, ""), "top1 (%)": top1, "top5 (%)": top5}
            if course:
                row["least-confident target hit (%)"] = "" if hit is None else hit
            return {**row, "max |δ|∞ (pixel)": pert, "NaNs": nans, "time_s": seconds}

        clean = row("clean", self.clean_top1, self.clean_top5, None, 0.0, 0, self.clean_seconds)
        return [clean] + [
            row(r.spec.name, r.top1, r.top5, r.target_hit, r.max_perturbation_pixel, r.nan_count, r.seconds)
            for r in self.results
        ]

    def to_markdown(self) -> str:
        head = list(self.rows()[0])
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in self.rows():
            cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()]
            lines.append("| " + " | ".join(cells) + " |")
        checks = [f"- {'ok  ' if c.passed else 'FAIL'} {c.name}: {c.detail}" for c in self.checks]
        return "\n".join(lines + ([""] + checks if checks else []))


def _topk_correct(logits: Tensor, labels: Tensor, k: int = 5) -> tuple[int, int]:
    """How many examples have the label at top-1 and within top-k."""
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices  # (B, k)
    hit = top == labels.view(-1, 1)
    return int(hit[:, 0].sum()), int(hit.any(dim=1).sum())


@dataclass
class _Tally:
    """Running counts of one attack (or of the clean pass) over the batches."""

    top1: int = 0
    top5: int = 0
    max_perturbation: float = 0.0
    max_perturbation_pixel: float = 0.0
    nan_count: int = 0
    seconds: float = 0.0
    target_hits: int = 0

    def add(self, logits: Tensor, labels: Tensor, seconds: float) -> None:
        c1, c5 = _topk_correct(logits, labels)
        self.top1, self.top5, self.seconds = self.top1 + c1, self.top5 + c5, self.seconds + seconds
        self.nan_count += int((~torch.isfinite(logits)).sum())

    def measure(self, adv: Tensor, images: Tensor, std: Tensor, units: Mode) -> None:
        diff = (adv - images).abs()  # normalized units
        diff_px = diff * std
        self.max_perturbation = max(self.max_perturbation, _finite_max(diff if units == "course" else diff_px))
        self.max_perturbation_pixel = max(self.max_perturbation_pixel, _finite_max(diff_px))
        self.nan_count += int((~torch.isfinite(adv)).sum())


def evaluate_robustness(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    specs: Sequence[AttackSpec],
    device: torch.device | str | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    max_batches: int | None = None,
    progress: bool = False,
    on_batch: Callable[[int, Tensor, Tensor, dict[str, Tensor]], None] | None = None,
) -> RobustnessReport:
    """Clean and adversarial top-1/top-5 of `model` over `loader` for every spec, then the sanity report.

    `on_batch(i, images, labels, adversarial_by_name)` sees each batch (figures, TensorBoard grids). A failed sanity
    check is logged as a warning and recorded in the report. Times are wall-clock (on CUDA they include the syncs the
    accuracy counts force, so they are comparable between attacks). `device` defaults to the model's.
    """
    if device is None:
        device = next(model.parameters()).device
    if not specs:
        raise ValueError("evaluate_robustness: no attack specs given")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"evaluate_robustness: duplicate attack specs {names}")
    attacks = {s.name: s.build(mean, std) for s in specs}
    std_t = torch.tensor(std, device=device).view(1, -1, 1, 1)
    clean, tallies = _Tally(), {name: _Tally() for name in names}
    n = num_classes = 0
    batches: Iterable[tuple[Tensor, Tensor]] = loader
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(loader, desc="attack", unit="batch", total=_len_or_none(loader, max_batches))
    with eval_mode(model):
        for i, (images, labels) in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            images, labels = images.to(device), labels.to(device)
            t0 = time.perf_counter()
            with torch.no_grad():
                logits = model(images).float()
            clean.add(logits, labels, time.perf_counter() - t0)
            n, num_classes = n + images.shape[0], logits.shape[1]
            adversarial: dict[str, Tensor] = {}
            for spec in specs:
                t0 = time.perf_counter()
                adv = attacks[spec.name](model, images, labels)
                with torch.no_grad():
                    adv_logits = model(adv).float()
                tallies[spec.name].add(adv_logits, labels, time.perf_counter() - t0)
                tallies[spec.name].measure(adv, images, std_t, spec.mode)
                if spec.mode == "course":
                    tallies[spec.name].target_hits += int((adv_logits.argmax(1) == logits.argmin(1)).sum())
                adversarial[spec.name] = adv
            if on_batch is not None:
                on_batch(i, images, labels, adversarial)
    if n == 0:
        raise ValueError("evaluate_robustness: the loader yielded no examples")
    results = tuple(
        AttackResult(
            s, 100 * t.top1 / n, 100 * t.top5 / n, t.max_perturbation, t.max_perturbation_pixel, t.nan_count, t.seconds,
            100 * t.target_hits / n if s.mode == "course" else None,
        )
        for s, t in ((s, tallies[s.name]) for s in specs)
    )  # fmt: skip
    report = RobustnessReport(n, num_classes, 100 * clean.top1 / n, 100 * clean.top5 / n, clean.seconds, results)
    report = replace(report, checks=sanity_checks(report))
    for check in report.failed:
        log.warning("robustness sanity check failed: %s: %s", check.name, check.detail)
    return report


def _finite_max(t: Tensor) -> float:
    t = t[torch.isfinite(t)]
    return float(t.max()) if t.numel() else 0.0


def _len_or_none(loader: object, max_batches: int | None) -> int | None:
    try:
        total = len(loader)  # type: ignore[arg-type]
    except TypeError:
        return max_batches
    return total if max_batches is None else min(total, max_batches)


def sanity_checks(
    report: RobustnessReport, tolerance: float = 1.0, chance_tolerance: float = 5.0
) -> tuple[SanityCheck, ...]:
    """The Carlini et al. (2019) checklist on measured accuracies (`tolerance`: slack in percentage points).

    No NaNs; measured ‖δ‖∞ within ε; no attack above clean accuracy; accuracy non-increasing in ε (per attack family);
    attacks at least as strong with more PGD steps and in the order PGD ≥ FGSM ≥ noise at each ε, counting only PGD
    runs whose steps can reach the ball's far edge (`AttackSpec.reaches_edge`: with the seed's fixed α = 0.01, PGD-5 at
    ε = 0.1 cannot, and FGSM may rightly beat it); the chance probe within `chance_tolerance` points of chance.

    Strength is judged on each attack's own objective: accuracy lost for the untargeted pixel mode, least-confident
    target hits for the targeted course mode (a targeted PGD need not lower accuracy more than a targeted FGSM; it
    must hit its target more often). Course-mode attacks must still leave accuracy at or below the noise baseline.
    """
    rs = report.results
    regular = [r for r in rs if not r.spec.chance_probe]
    checks = [
        _check("no NaN/inf", [f"{r.spec.name}: {r.nan_count}" for r in rs if r.nan_count], "0 non-finite values"),
        _check(
            "perturbation within ε",
            [f"{r.spec.name}: {r.max_perturbation:.6g} > {r.spec.eps:.6g}" for r in rs
             if r.max_perturbation > r.spec.eps * (1 + 1e-4) + 1e-6],
            f"max |δ|∞/ε = {max((r.max_perturbation / r.spec.eps for r in rs if r.spec.eps > 0), default=0.0):.4f}",
        ),
        _check(
            "attacks do not raise accuracy",
            [f"{r.spec.name}: {r.top1:.2f}% > clean {report.clean_top1:.2f}%" for r in rs
             if r.spec.kind != "noise" and r.top1 > report.clean_top1 + tolerance],
        ),
    ]  # fmt: skip
    # early-stopped and full PGD are separate families: at equal budget the early-stopped one may rightly be lower
    family = lambda s: (s.kind, s.effective_steps, s.alpha, s.early_stop)  # noqa: E731
    by_family = _groups(regular, key=family, order=lambda s: s.eps)
    if any(len(g) > 1 for g in by_family):
        checks.append(_check("accuracy non-increasing in ε", _rises(by_family, tolerance)))
    pgd_by_eps = _groups(
        [r for r in regular if r.spec.kind == "pgd"],
        key=lambda s: (s.eps, s.alpha, s.early_stop),
        order=lambda s: s.steps,
    )
    if any(len(g) > 1 for g in pgd_by_eps):
        checks.append(_check("PGD not weaker with more steps", _weakens(pgd_by_eps, tolerance)))
    rank = {"pgd": 0, "fgsm": 1, "noise": 2}
    for eps in sorted({r.spec.eps for r in regular}):
        chain = [
            r for r in regular
            if r.spec.eps == eps and (r.spec.kind != "pgd" or r.spec.reaches_edge)
        ]  # fmt: skip
        if len({r.spec.kind for r in chain}) < 2:
            continue
        wrong = [
            f"{a.spec.name} ({a.strength[1]}) weaker than {b.spec.name} ({b.strength[1]})"
            for a in chain
            for b in chain
            if rank[a.spec.kind] < rank[b.spec.kind] and a.strength[0] < b.strength[0] - tolerance
        ]
        wrong += [
            f"{a.spec.name} {a.top1:.2f}% > {b.spec.name} {b.top1:.2f}%"
            for a in chain
            for b in chain
            if a.target_hit is not None and b.spec.kind == "noise" and a.top1 > b.top1 + tolerance
        ]
        checks.append(_check(f"PGD ≥ FGSM ≥ noise at {chain[0].spec.name.split(' ', 1)[1]}", wrong))
    chance = 100 / report.num_classes
    for r in rs:
        if r.spec.chance_probe:
            detail = f"top-1 {r.top1:.2f}% vs chance {chance:.2f}% (+{chance_tolerance:g} allowed)"
            checks.append(SanityCheck(f"{r.spec.name} is near chance", r.top1 <= chance + chance_tolerance, detail))
    return tuple(checks)


def _check(name: str, failures: list[str], ok: str = "ok") -> SanityCheck:
    return SanityCheck(name, not failures, "; ".join(failures) or ok)


def _groups(
    results: Sequence[AttackResult], key: Callable[[AttackSpec], object], order: Callable[[AttackSpec], float]
) -> list[list[AttackResult]]:
    groups: dict[object, list[AttackResult]] = {}
    for r in results:
        groups.setdefault(key(r.spec), []).append(r)
    return [sorted(g, key=lambda r: order(r.spec)) for g in groups.values()]


def _rises(groups: list[list[AttackResult]], tolerance: float) -> list[str]:
    """Where accuracy goes up along a group ordered by attack budget."""
    return [
        f"{b.spec.name} {b.top1:.2f}% > {a.spec.name} {a.top1:.2f}%"
        for g in groups
        for a, b in pairwise(g)
        if b.top1 > a.top1 + tolerance
    ]


def _weakens(groups: list[list[AttackResult]], tolerance: float) -> list[str]:
    """Where an attack gets weaker (on its own objective) along a group ordered by attack budget."""
    return [
        f"{b.spec.name} ({b.strength[1]}) weaker than {a.spec.name} ({a.strength[1]})"
        for g in groups
        for a, b in pairwise(g)
        if b.strength[0] < a.strength[0] - tolerance
    ]
