"""Pixel-space attacks (`pgd`, `fgsm`, `random_noise`): the torchattacks convention, checked against an oracle.

These are our own (not the course interface), so they are imported from `impl.attack` directly.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from impl.attack import fgsm, pgd, random_noise
from spec.attack.toys import MEAN, STD, TinyNet, accuracy, random_images, to_pixels

TOL = 1e-6  # float32 rounding of normalize → de-normalize


def _bound_violations(adv: Tensor, clean: Tensor, eps: float) -> tuple[float, float, float]:
    """(max ‖δ‖∞ − ε, how far below 0, how far above 1) in pixel units: all ≤ TOL for a valid attack."""
    delta = (to_pixels(adv) - to_pixels(clean)).abs().max().item()
    px = to_pixels(adv)
    return delta - eps, -px.min().item(), px.max().item() - 1


@settings(max_examples=25)
@given(
    eps=st.floats(0, 64 / 255),
    alpha=st.floats(0, 16 / 255),
    steps=st.integers(0, 4),
    batch=st.integers(1, 4),
    random_start=st.booleans(),
    targeted=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_pgd_stays_in_the_eps_ball_and_the_pixel_box(eps, alpha, steps, batch, random_start, targeted, seed):
    torch.manual_seed(seed)
    model = TinyNet().eval()
    images = random_images(batch, seed)
    labels = torch.randint(0, 4, (batch,))
    adv = pgd(model, images, labels, eps=eps, alpha=alpha, steps=steps, random_start=random_start, targeted=targeted)
    over, below, above = _bound_violations(adv, images, eps)
    assert adv.shape == images.shape and adv.dtype == images.dtype
    assert over <= TOL and below <= TOL and above <= TOL, (
        f"eps={eps} alpha={alpha} steps={steps}: |δ|∞ exceeds ε by {over:.3g}, pixels below 0 by {below:.3g}, "
        f"above 1 by {above:.3g}"
    )


@settings(max_examples=15)
@given(eps=st.floats(0, 64 / 255), random_start=st.booleans(), batch=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_fgsm_and_noise_stay_in_the_eps_ball_and_the_pixel_box(eps, random_start, batch, seed):
    torch.manual_seed(seed)
    model = TinyNet().eval()
    images = random_images(batch, seed)
    labels = torch.randint(0, 4, (batch,))
    for name, adv in {
        "fgsm": fgsm(model, images, labels, eps=eps, random_start=random_start),
        "noise": random_noise(images, eps),
    }.items():
        over, below, above = _bound_violations(adv, images, eps)
        assert over <= TOL and below <= TOL and above <= TOL, f"{name} eps={eps}: {over=:.3g} {below=:.3g} {above=:.3g}"


def test_pixels_at_the_box_edges_stay_inside():
    """Black and white pixels: a large ε may only push them inwards."""
    model = TinyNet().eval()
    pixels = torch.zeros(2, 3, 12, 12)
    pixels[1] = 1.0
    images = (pixels - MEAN) / STD
    adv = pgd(model, images, torch.tensor([0, 1]), eps=0.5, alpha=0.2, steps=3)
    px = to_pixels(adv)
    assert px.min() >= -TOL and px.max() <= 1 + TOL, f"pixels span [{px.min():.3g}, {px.max():.3g}]"


def test_zero_eps_returns_the_input(trained):
    model, images, labels = trained
    for name, adv in {
        "pgd": pgd(model, images[:8], labels[:8], eps=0.0, random_start=True),
        "fgsm-rs": fgsm(model, images[:8], labels[:8], eps=0.0, random_start=True),
        "noise": random_noise(images[:8], 0.0),
    }.items():
        assert torch.equal(adv, images[:8]), f"{name}: max change {(adv - images[:8]).abs().max():.3g} at ε = 0"


def _state(model: nn.Module) -> dict[str, object]:
    return {
        "modes": {n: m.training for n, m in model.named_modules()},
        "buffers": {n: b.clone() for n, b in model.named_buffers()},
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
    }


def _assert_same_state(before: dict[str, object], after: dict[str, object], who: str) -> None:
    assert before["modes"] == after["modes"], f"{who} changed module modes: {before['modes']} -> {after['modes']}"
    for kind in ("buffers", "params"):
        for name, value in before[kind].items():
            assert torch.equal(value, after[kind][name]), f"{who} changed {kind[:-1]} {name}"
    for name, grad in before["grads"].items():
        new = after["grads"][name]
        same = new is None if grad is None else (new is not None and torch.equal(grad, new))
        assert same, f"{who} changed the .grad of {name}"


def attacks_under_test() -> dict[str, object]:
    return {
        "pgd": lambda m, x, y: pgd(m, x, y, steps=3),
        "pgd-restarts": lambda m, x, y: pgd(m, x, y, steps=2, restarts=2),
        "fgsm": lambda m, x, y: fgsm(m, x, y),
        "fgsm-rs": lambda m, x, y: fgsm(m, x, y, random_start=True),
    }


@pytest.mark.parametrize("name", list(attacks_under_test()))
def test_attack_leaves_input_modes_bn_statistics_and_grads_untouched(name, untrained):
    model = untrained  # train mode: BN would update its statistics, dropout would be active
    model.features[3].eval()  # a mixed-mode model: each module must get its own mode back
    images = random_images(4, seed=1)
    labels = torch.tensor([0, 1, 2, 3])
    F.cross_entropy(model(images), labels).backward()  # existing grads: an attack must neither add nor clear them
    model.head.bias.grad = None
    images_before = images.clone()
    before = _state(model)
    adv = attacks_under_test()[name](model, images, labels)
    _assert_same_state(before, _state(model), name)
    assert torch.equal(images, images_before) and not images.requires_grad, f"{name} changed its input tensor"
    assert adv.grad_fn is None and not adv.requires_grad, f"{name} returned a tensor attached to a graph"


def test_attack_computes_no_parameter_gradient(untrained):
    """Parameter gradients are not even computed (hooks fire when autograd computes a leaf's gradient)."""
    fired = []
    for name, p in untrained.named_parameters():
        p.register_hook(lambda g, name=name: fired.append(name))
    pgd(untrained, random_images(2, seed=2), torch.tensor([0, 1]), steps=2)
    assert not fired, f"the attack computed gradients for parameters {sorted(set(fired))}"


def test_attack_does_no_weight_gradient_work_in_custom_conv_functions(monkeypatch: pytest.MonkeyPatch):
    """A custom autograd Function decides from `needs_input_grad` at forward time: the attack must not make
    CustomConv2d compute weight gradients it throws away (a third of each step's backward)."""
    import impl.conv
    from impl.conv import CustomConv2d

    calls: list[str] = []
    for name in ("_shift_grad_weight", "_im2col_grad_weight"):  # the fast algorithm's weight-gradient passes
        original = getattr(impl.conv, name)
        monkeypatch.setattr(impl.conv, name, lambda *a, n=name, f=original: (calls.append(n), f(*a))[1])
    # teeth: a training step of the same model does enter one of them
    probe = CustomConv2d(3, 4, 3, padding=1)
    probe(random_images(2, seed=3)).sum().backward()
    assert calls, "neither weight-gradient pass ran in a training step: the probe watches the wrong functions"
    calls.clear()
    model = nn.Sequential(
        CustomConv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )
    adv = pgd(model, random_images(2, seed=3), torch.tensor([0, 1]), steps=2)
    assert torch.isfinite(adv).all()
    assert not calls, f"weight-gradient passes during the attack: {calls}"
    assert all(p.requires_grad for p in model.parameters()), "the attack left parameters frozen"


def test_attack_works_inside_no_grad(trained):
    model, images, labels = trained
    with torch.no_grad():
        adv = pgd(model, images[:64], labels[:64], eps=8 / 255, alpha=2 / 255, steps=5)
    assert accuracy(model, adv, labels[:64]) < accuracy(model, images[:64], labels[:64]) - 20, (
        "under no_grad the attack did not lower accuracy by 20 points: it ran without gradients"
    )


def test_attack_works_under_autocast(trained):
    model, images, labels = trained
    with torch.autocast("cpu", dtype=torch.bfloat16):
        adv = pgd(model, images[:64], labels[:64], eps=8 / 255, alpha=2 / 255, steps=5)
    over, below, above = _bound_violations(adv, images[:64], 8 / 255)
    assert over <= TOL and below <= TOL and above <= TOL, f"under autocast: {over=:.3g} {below=:.3g} {above=:.3g}"
    drop = accuracy(model, images[:64], labels[:64]) - accuracy(model, adv, labels[:64])
    assert drop > 20, f"under bf16 autocast the attack lowered accuracy by only {drop:.1f} points"


def test_random_start_is_deterministic_given_a_seed(trained):
    model, images, labels = trained
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        runs.append(pgd(model, images[:8], labels[:8], steps=2, random_start=True))
    g = [torch.Generator().manual_seed(7) for _ in range(2)]
    with_generator = [pgd(model, images[:8], labels[:8], steps=2, generator=gi) for gi in g]
    assert torch.equal(*runs), "same global seed, different result"
    assert torch.equal(*with_generator), "same generator seed, different result"
    torch.manual_seed(124)
    assert not torch.equal(runs[0], pgd(model, images[:8], labels[:8], steps=2)), "the random start ignores the seed"


@pytest.mark.parametrize("targeted", [False, True])
def test_batch_result_equals_per_example_result(trained, targeted):
    model, images, labels = trained
    model64, x, y = copy.deepcopy(model).double(), images[:6].double(), labels[:6]
    kwargs = dict(eps=8 / 255, alpha=2 / 255, steps=4, random_start=False, targeted=targeted)
    batch = pgd(model64, x, y, **kwargs)
    single = torch.cat([pgd(model64, x[i : i + 1], y[i : i + 1], **kwargs) for i in range(6)])
    err = (batch - single).abs().max().item()
    assert err <= 1e-9, f"batched and per-example PGD differ by {err:.3g} (targeted={targeted})"


def reference_pgd(model: nn.Module, images: Tensor, labels: Tensor, eps: float, alpha: float, steps: int) -> Tensor:
    """An independent PGD written in pixel space: x ← clip_[0,1](clip_ε(x + α·sign ∇ₓ CE)), normalize at the model."""
    mean, std = MEAN.to(images), STD.to(images)
    clean = images * std + mean
    x = clean.clone()
    for _ in range(steps):
        x.requires_grad_(True)
        loss = F.cross_entropy(model((x - mean) / std), labels)
        (g,) = torch.autograd.grad(loss, x)
        x = torch.clamp(torch.min(torch.max(x.detach() + alpha * g.sign(), clean - eps), clean + eps), 0, 1)
    return (x - mean) / std


@pytest.mark.parametrize(("eps", "alpha", "steps"), [(8 / 255, 2 / 255, 5), (4 / 255, 1 / 255, 7), (0.2, 0.1, 3)])
def test_pgd_matches_an_independent_reimplementation(trained, eps, alpha, steps):
    model, images, labels = trained
    model64, x, y = copy.deepcopy(model).double(), images[:32].double(), labels[:32]
    ours = pgd(model64, x, y, eps=eps, alpha=alpha, steps=steps, random_start=False)
    ref = reference_pgd(model64, x, y, eps, alpha, steps)
    err = (to_pixels(ours) - to_pixels(ref)).abs().max().item()
    assert err <= 1e-5, f"eps={eps} alpha={alpha} steps={steps}: max pixel difference from the reference {err:.3g}"


def test_fgsm_is_one_full_step(trained):
    """FGSM with α = ε moves every pixel with a nonzero gradient by exactly ε (unless the box stops it)."""
    model, images, labels = trained
    model64, x, y = copy.deepcopy(model).double(), images[:16].double(), labels[:16]
    ref = reference_pgd(model64, x, y, 8 / 255, 8 / 255, 1)
    err = (to_pixels(fgsm(model64, x, y, eps=8 / 255)) - to_pixels(ref)).abs().max().item()
    assert err <= 1e-6, f"fgsm differs from one ε-step by {err:.3g}"


def test_trained_model_orders_pgd_below_fgsm_below_clean(trained):
    model, images, labels = trained
    torch.manual_seed(0)
    clean = accuracy(model, images, labels)
    acc_fgsm = accuracy(model, fgsm(model, images, labels, eps=8 / 255), labels)
    acc_pgd = accuracy(model, pgd(model, images, labels, eps=8 / 255, alpha=2 / 255, steps=10), labels)
    acc_noise = accuracy(model, random_noise(images, 8 / 255), labels)
    assert acc_pgd < acc_fgsm < clean, f"PGD {acc_pgd:.1f}%, FGSM {acc_fgsm:.1f}%, clean {clean:.1f}%"
    assert acc_fgsm < acc_noise, f"FGSM {acc_fgsm:.1f}% is no stronger than noise {acc_noise:.1f}%"


def test_accuracy_falls_with_eps_and_reaches_chance(trained):
    model, images, labels = trained
    torch.manual_seed(0)
    accs = [accuracy(model, pgd(model, images, labels, eps=e / 255, alpha=e / 255 / 4, steps=10), labels)
            for e in (0, 2, 4, 8, 16, 32)]  # fmt: skip
    rises = [(a, b) for a, b in zip(accs, accs[1:], strict=False) if b > a + 1.0]
    assert not rises, f"accuracy rose with ε: {accs}"
    assert accs[-1] <= 25 + 5, f"at ε = 32/255 accuracy is {accs[-1]:.1f}%, far above chance (25 %)"


def test_targeted_success_rises_with_eps(trained):
    model, images, labels = trained
    targets = (labels + 1 + torch.randint(0, 3, labels.shape)) % 4  # a wrong class for every example
    assert not (targets == labels).any()
    rates = []
    for e in (0, 4, 8, 16, 32):
        adv = pgd(model, images, targets, eps=e / 255, alpha=e / 255 / 4, steps=10, targeted=True)
        with torch.no_grad():
            rates.append(100 * float((model(adv).argmax(1) == targets).float().mean()))
    assert all(b >= a - 1.0 for a, b in zip(rates, rates[1:], strict=False)), f"success rate not rising: {rates}"
    assert rates[-1] >= rates[0] + 50, f"targeted success rose only from {rates[0]:.1f}% to {rates[-1]:.1f}%"


def test_restarts_keep_each_examples_worst_case(trained):
    """Restart 1 of a 3-restart run replays a 1-restart run with the same seed: what it fooled stays fooled."""
    model, images, labels = trained
    torch.manual_seed(5)
    one = pgd(model, images, labels, eps=6 / 255, alpha=2 / 255, steps=3, restarts=1)
    torch.manual_seed(5)
    three = pgd(model, images, labels, eps=6 / 255, alpha=2 / 255, steps=3, restarts=3)
    with torch.no_grad():
        fooled_one, fooled_three = model(one).argmax(1) != labels, model(three).argmax(1) != labels
    lost = int((fooled_one & ~fooled_three).sum())
    assert lost == 0, f"{lost} examples fooled by restart 1 were not fooled by the 3-restart result"
    assert fooled_three.sum() >= fooled_one.sum()


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda m: pgd(m, random_images(2, 0)[:, :2], torch.tensor([0, 1])), "2 channels"),
        (lambda m: pgd(m, torch.rand(2, 3, 12, 12) * 5, torch.tensor([0, 1])), r"not \[0, 1\]"),
        (lambda m: pgd(m, random_images(2, 0), torch.tensor([0, 1, 2])), r"shape \(2,\)"),
        (lambda m: pgd(m, random_images(2, 0), torch.tensor([0.0, 1.0])), "long"),
        (lambda m: pgd(m, random_images(2, 0)[0], torch.tensor([0])), r"\(B, C, H, W\)"),
        (lambda m: pgd(m, random_images(2, 0), torch.tensor([0, 1]), eps=-0.1), "eps"),
        (lambda m: pgd(m, random_images(2, 0), torch.tensor([0, 1]), steps=2.5), "steps"),
        (lambda m: pgd(m, random_images(2, 0), torch.tensor([0, 1]), restarts=0), "restarts"),
        (lambda m: random_noise(random_images(2, 0), float("nan")), "eps"),
    ],
)
def test_bad_input_raises_naming_the_culprit(untrained, call, match):
    with pytest.raises(ValueError, match=match):
        call(untrained)


def test_inference_mode_raises_a_clear_error(untrained):
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        pgd(untrained, random_images(2, 0), torch.tensor([0, 1]))


def test_a_model_without_input_gradients_raises_a_clear_error():
    class Detached(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = TinyNet().eval()

        def forward(self, x: Tensor) -> Tensor:
            return self.net(x.detach())

    with pytest.raises(RuntimeError, match="does not depend differentiably on its input"):
        pgd(Detached(), random_images(2, 0), torch.tensor([0, 1]))
