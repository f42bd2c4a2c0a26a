"""Early stopping of the untargeted pixel PGD (`pgd(early_stop=True)`): only inputs still classified correctly keep
being attacked, and the robust accuracy it measures is never above the full run's.

Ours (not the course interface): imported from `impl.attack` directly. Float64 copies of the trained toy make the
per-example paths of the shrinking batch and of the full batch agree to rounding.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from impl.attack import AttackSpec, pgd
from spec.attack.toys import TinyNet, quadrant_data, train_natural


def _correct(model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
    with torch.no_grad():
        return model(images).argmax(1) == labels


@pytest.fixture(scope="module")
def model64(trained) -> nn.Module:
    return copy.deepcopy(trained[0]).double()


@settings(max_examples=12)
@given(
    data_seed=st.integers(0, 2**16),
    eps=st.sampled_from([2 / 255, 4 / 255, 8 / 255, 16 / 255]),
    alpha=st.sampled_from([0.5 / 255, 1 / 255, 2 / 255, 4 / 255]),
    steps=st.integers(1, 8),
    random_start=st.booleans(),
)
def test_early_stop_robust_accuracy_is_never_above_the_full_runs(model64, data_seed, eps, alpha, steps, random_start):
    images, labels = quadrant_data(48, seed=data_seed, contrast=0.06)
    x = images.double()
    kwargs = dict(eps=eps, alpha=alpha, steps=steps, random_start=random_start)
    torch.manual_seed(data_seed)
    full = pgd(model64, x, labels, **kwargs)
    torch.manual_seed(data_seed)  # the same random start for both runs
    early = pgd(model64, x, labels, **kwargs, early_stop=True)
    ok_full, ok_early = _correct(model64, full, labels), _correct(model64, early, labels)
    survivors_only_early = (ok_early & ~ok_full).nonzero().flatten().tolist()
    assert not survivors_only_early, (
        f"examples {survivors_only_early} resist the early-stopped attack but not the full one "
        f"(eps={eps * 255:.3g}/255 alpha={alpha * 255:.3g}/255 steps={steps}): "
        f"robust accuracy {ok_early.double().mean():.3f} early vs {ok_full.double().mean():.3f} full"
    )


def test_inputs_misclassified_at_the_start_are_not_attacked(model64):
    images, labels = quadrant_data(64, seed=3, contrast=0.06)
    x = images.double()
    labels = labels.clone()
    labels[:8] = (labels[:8] + 1) % 4  # wrong labels: the clean input is already "fooled" for these
    wrong = ~_correct(model64, x, labels)
    assert wrong.sum() >= 8, f"only {int(wrong.sum())} misclassified examples: the setup did not work"
    adv = pgd(model64, x, labels, eps=8 / 255, alpha=2 / 255, steps=5, random_start=False, early_stop=True)
    moved = (adv[wrong] - x[wrong]).abs().amax().item()
    assert moved == 0.0, f"misclassified inputs were still perturbed (max change {moved:.3g})"


def test_inputs_never_fooled_follow_the_full_runs_path(model64):
    images, labels = quadrant_data(64, seed=4, contrast=0.06)
    x = images.double()
    kwargs = dict(eps=1 / 255, alpha=0.25 / 255, steps=4, random_start=False)  # a weak attack: many survive
    full = pgd(model64, x, labels, **kwargs)
    early = pgd(model64, x, labels, **kwargs, early_stop=True)
    survived = _correct(model64, early, labels)
    assert survived.sum() >= 8, f"only {int(survived.sum())} examples survived: the attack is too strong for this test"
    err = (early[survived] - full[survived]).abs().max().item()
    assert err <= 1e-12, f"surviving examples differ from the full run by {err:.3g}"


def test_the_attacked_batch_shrinks_to_the_inputs_still_classified_correctly(trained):
    model, images, labels = trained
    sizes: list[int] = []
    handle = model.register_forward_pre_hook(lambda _, args: sizes.append(args[0].shape[0]))
    try:
        adv = pgd(model, images[:64], labels[:64], eps=16 / 255, alpha=4 / 255, steps=10, early_stop=True)
    finally:
        handle.remove()
    assert sizes[0] == 64 and sizes == sorted(sizes, reverse=True), f"attacked batch sizes per step: {sizes}"
    assert sum(sizes) < 64 * 10 / 2, f"early stopping saved little on a model PGD breaks easily: {sizes}"
    with torch.no_grad():
        fooled = int((model(adv).argmax(1) != labels[:64]).sum())
    assert fooled >= 64 - sizes[-1], f"{fooled} of 64 fooled, but only {sizes[-1]} were attacked at the last step"


def test_early_stop_pays_only_for_steps_on_inputs_still_correct():
    """With every input misclassified from the start, no gradient step is taken at all (one forward to see it)."""
    torch.manual_seed(0)
    model = train_natural(TinyNet(), *quadrant_data(256, seed=0, contrast=0.06), steps=40)
    images, labels = quadrant_data(16, seed=5, contrast=0.06)
    with torch.no_grad():
        wrong_labels = (model(images).argmax(1) + 1) % 4
    calls: list[int] = []
    handle = model.register_forward_pre_hook(lambda _, args: calls.append(args[0].shape[0]))
    try:
        adv = pgd(model, images, wrong_labels, steps=10, random_start=False, early_stop=True)
    finally:
        handle.remove()
    assert calls == [16], f"forward batch sizes {calls}: expected one forward of 16, then a stop"
    assert torch.equal(adv, images), "inputs misclassified at the start were changed"


def test_early_stop_is_rejected_for_the_targeted_attack(trained):
    model, images, labels = trained
    with pytest.raises(ValueError, match="early_stop applies to the untargeted attack only"):
        pgd(model, images[:4], labels[:4], targeted=True, early_stop=True)


def test_attack_spec_carries_early_stop_into_its_name_and_attack(trained):
    model, images, labels = trained
    spec = AttackSpec("pgd", "pixel", 8 / 255, 5, early_stop=True)
    assert "early stop" in spec.name, spec.name
    torch.manual_seed(0)
    via_spec = spec.build()(model, images[:32], labels[:32])
    torch.manual_seed(0)
    direct = pgd(model, images[:32], labels[:32], eps=8 / 255, alpha=2 / 255, steps=5, early_stop=True)
    assert torch.equal(via_spec, direct), f"spec and direct call differ by {(via_spec - direct).abs().max():.3g}"
    with pytest.raises(ValueError, match="early_stop"):
        AttackSpec("pgd", "course", 0.1, 5, early_stop=True)
