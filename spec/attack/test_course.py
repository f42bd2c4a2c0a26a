"""Course-mode `PGDAttack` (§3.3), reached through the `subject` fixture so it also checks a student's file.

The course contract: normalized input, ε and step in normalized units, target = least confident label of the clean
input, each step descends the target's cross-entropy, projection onto the ε-ball, clamp to the valid normalized box.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from spec.attack.toys import MEAN, STD, TinyNet, random_images
from spec.subject import need

pytestmark = pytest.mark.course("readme §3.3 and main.py validate(): model.eval(), grad enabled, perturb(model, input)")

LO, HI = (0 - MEAN) / STD, (1 - MEAN) / STD  # (1, 3, 1, 1): the valid normalized box per channel


def reference_course_pgd(model: nn.Module, images: Tensor, steps: int, step: float, eps: float) -> Tensor:
    """An independent reading of the course attack: target argmin of the clean logits, descend, project, clamp."""
    with torch.no_grad():
        target = model(images).argmin(1)
    x = images.clone()
    for _ in range(steps):
        x.requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(x), target), x)
        x = x.detach() - step * g.sign()
        x = torch.min(torch.max(x, images - eps), images + eps)
        x = torch.min(torch.max(x, LO.to(x)), HI.to(x))
    return x


@settings(max_examples=20)
@given(
    eps=st.floats(0, 0.5),
    step=st.floats(0, 0.2),
    steps=st.integers(0, 4),
    batch=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_course_pgd_stays_in_the_eps_ball_and_the_normalized_box(subject, eps, step, steps, batch, seed):
    PGDAttack = need(subject, "PGDAttack")
    torch.manual_seed(seed)
    model = TinyNet().eval()
    images = random_images(batch, seed)
    adv = PGDAttack(nn.CrossEntropyLoss(), num_steps=steps, step_size=step, epsilon=eps).perturb(model, images)
    over = ((adv - images).abs().max() - eps).item()
    below, above = (LO - adv).max().item(), (adv - HI).max().item()
    assert adv.shape == images.shape
    assert over <= 1e-6, f"eps={eps} step={step} steps={steps}: |δ|∞ exceeds ε by {over:.3g} (normalized units)"
    assert below <= 1e-6 and above <= 1e-6, (
        f"eps={eps}: outside the normalized box by {max(below, above):.3g} (box is [(0-mean)/std, (1-mean)/std])"
    )


def test_course_pgd_with_zero_eps_returns_the_input(subject, trained):
    PGDAttack = need(subject, "PGDAttack")
    model, images, _ = trained
    adv = PGDAttack(nn.CrossEntropyLoss(), num_steps=5, step_size=0.01, epsilon=0.0).perturb(model, images[:8])
    assert torch.equal(adv, images[:8]), f"ε = 0 changed the input by {(adv - images[:8]).abs().max():.3g}"


def test_course_pgd_matches_the_least_confident_reference(subject, trained):
    """Pins the target (least confident clean label), the sign (descent), the projection and the box at once."""
    PGDAttack = need(subject, "PGDAttack")
    model, images, _ = trained
    model64, x = copy.deepcopy(model).double(), images[:32].double()
    ours = PGDAttack(nn.CrossEntropyLoss(), num_steps=6, step_size=0.05, epsilon=0.2).perturb(model64, x)
    ref = reference_course_pgd(model64, x, steps=6, step=0.05, eps=0.2)
    err = (ours.double() - ref).abs().max().item()
    assert err <= 1e-5, f"course PGD differs from the least-confident-target reference by {err:.3g}"


def test_each_step_lowers_the_least_confident_labels_loss(subject, trained):
    """Catches the common sign bug: ascending the target's loss raises it instead."""
    PGDAttack = need(subject, "PGDAttack")
    model, images, _ = trained
    x = images[:64]
    with torch.no_grad():
        target = model(x).argmin(1)
    losses = []
    for k in range(5):
        adv = PGDAttack(nn.CrossEntropyLoss(), num_steps=k, step_size=0.01, epsilon=0.1).perturb(model, x)
        with torch.no_grad():
            losses.append(F.cross_entropy(model(adv), target).item())
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), (
        f"the least-confident label's loss after 0..4 steps: {losses} (must fall every step)"
    )


def test_large_budget_reaches_the_least_confident_class(subject, trained):
    PGDAttack = need(subject, "PGDAttack")
    model, images, _ = trained
    with torch.no_grad():
        target = model(images).argmin(1)
    adv = PGDAttack(nn.CrossEntropyLoss(), num_steps=20, step_size=0.1, epsilon=1.0).perturb(model, images)
    with torch.no_grad():
        hit = 100 * float((model(adv).argmax(1) == target).float().mean())
    assert hit >= 90, f"with ε = 1.0 only {hit:.1f}% of examples reached their least confident class"


def test_course_pgd_leaves_input_modes_bn_statistics_and_grads_untouched(subject, untrained):
    PGDAttack = need(subject, "PGDAttack")
    model = untrained
    images = random_images(4, seed=3)
    F.cross_entropy(model(images), torch.tensor([0, 1, 2, 3])).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    images_before = images.clone()
    adv = PGDAttack(nn.CrossEntropyLoss(), num_steps=3).perturb(model, images)
    assert model.training and all(m.training for m in model.modules()), "the attack left the model in eval mode"
    changed = [n for n, b in model.named_buffers() if not torch.equal(b, buffers[n])]
    assert not changed, f"the attack changed BatchNorm statistics {changed}"
    touched = [n for n, p in model.named_parameters() if not torch.equal(p.grad, grads[n])]
    assert not touched, f"the attack changed parameter grads {touched}"
    assert torch.equal(images, images_before) and not images.requires_grad, "the attack changed its input tensor"
    assert adv.grad_fn is None, "the adversarial batch carries an autograd graph"


def test_course_pgd_runs_the_model_in_eval_mode(subject, untrained):
    """With dropout active, two attacks of the same input would differ; in eval mode they are identical."""
    PGDAttack = need(subject, "PGDAttack")
    images = random_images(8, seed=4)
    attack = PGDAttack(nn.CrossEntropyLoss(), num_steps=3, step_size=0.02, epsilon=0.1)
    torch.manual_seed(1)
    a = attack.perturb(untrained, images)
    torch.manual_seed(2)
    b = attack.perturb(untrained, images)
    assert torch.equal(a, b), "results depend on the RNG: dropout or BN batch statistics were active"


def test_course_pgd_works_inside_no_grad(subject, trained):
    PGDAttack = need(subject, "PGDAttack")
    model, images, _ = trained
    with torch.no_grad():
        adv = PGDAttack(nn.CrossEntropyLoss(), num_steps=3, step_size=0.02, epsilon=0.1).perturb(model, images[:8])
    assert (adv - images[:8]).abs().max() > 0.05, "under no_grad the attack did not move the input"


def test_course_batch_equals_per_example(subject, trained):
    PGDAttack = need(subject, "PGDAttack")
    model, images, _ = trained
    model64, x = copy.deepcopy(model).double(), images[:5].double()
    attack = PGDAttack(nn.CrossEntropyLoss(), num_steps=4, step_size=0.02, epsilon=0.1)
    batch = attack.perturb(model64, x)
    single = torch.cat([attack.perturb(model64, x[i : i + 1]) for i in range(5)])
    err = (batch - single).abs().max().item()
    assert err <= 1e-9, f"batched and per-example course PGD differ by {err:.3g}"
