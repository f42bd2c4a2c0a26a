"""The course schedule (linear warmup, cosine to eta_min, stepped per iteration), the optimizers and top-k counts."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from impl.train import TrainConfig, WarmupCosineLR, build_optimizer, build_scheduler, topk_correct, warmup_cosine_lr


def _lrs_seen_by_optimizer(warmup_steps: int, total_steps: int, base: float, eta_min: float) -> list[float]:
    """The lr each optimizer step actually used, read from the param group before the step."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base)
    sched = WarmupCosineLR(opt, warmup_steps, total_steps, eta_min)
    seen = []
    for _ in range(total_steps):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    seen.append(opt.param_groups[0]["lr"])  # after the last step: the end of the cosine
    return seen


def test_schedule_values_at_warmup_start_warmup_end_and_cosine_end():
    base, eta_min, warmup, total = 0.1, 1e-8, 50, 200
    lrs = _lrs_seen_by_optimizer(warmup, total, base, eta_min)
    assert lrs[0] == pytest.approx(eta_min, abs=1e-12), f"warmup starts at {lrs[0]}, expected eta_min={eta_min}"
    assert lrs[warmup] == pytest.approx(base, rel=1e-12), f"end of warmup {lrs[warmup]}, expected {base}"
    assert lrs[total] == pytest.approx(eta_min, abs=1e-12), f"cosine ends at {lrs[total]}, expected {eta_min}"
    mid = warmup + (total - warmup) // 2
    assert lrs[mid] == pytest.approx((base + eta_min) / 2, rel=1e-9), f"cosine midpoint {lrs[mid]}"
    assert lrs[warmup // 2] == pytest.approx(eta_min + (base - eta_min) / 2, rel=1e-9), "warmup is not linear"


@settings(max_examples=30)
@given(
    warmup=st.integers(0, 40),
    extra=st.integers(1, 80),
    base=st.floats(1e-4, 1.0),
)
def test_schedule_matches_an_independent_formula_at_every_step(warmup: int, extra: int, base: float):
    total, eta_min = warmup + extra, 1e-8
    lrs = _lrs_seen_by_optimizer(warmup, total, base, eta_min)
    for t, lr in enumerate(lrs):
        if t < warmup:
            expected = eta_min + (base - eta_min) * t / warmup
        else:
            expected = eta_min + (base - eta_min) * (1 + math.cos(math.pi * (t - warmup) / (total - warmup))) / 2
        assert lr == pytest.approx(expected, rel=1e-9, abs=1e-15), f"step {t}: {lr} vs {expected} (W={warmup})"
    rises, falls = lrs[: warmup + 1], lrs[warmup:]
    assert rises == sorted(rises) and falls == sorted(falls, reverse=True), "warmup must rise, cosine must fall"


def test_scheduler_is_built_per_iteration_from_epochs():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = build_scheduler(opt, TrainConfig(epochs=90, warmup=5), iters_per_epoch=390)
    assert (sched.warmup_steps, sched.total_steps) == (5 * 390, 90 * 390)
    assert warmup_cosine_lr(5 * 390, 0.1, 5 * 390, 90 * 390, 1e-8) == pytest.approx(0.1)


def test_fast_forward_equals_stepping():
    def fresh():
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
        return opt, WarmupCosineLR(opt, 7, 30)

    opt_a, a = fresh()
    for _ in range(12):
        opt_a.step()
        a.step()
    opt_b, b = fresh()
    b.fast_forward(12)
    assert opt_a.param_groups[0]["lr"] == opt_b.param_groups[0]["lr"] and a.get_last_lr() == b.get_last_lr()


def test_sgd_for_cnns_and_adamw_for_the_vit_with_the_course_hyperparameters():
    model = nn.Linear(3, 2)
    sgd = build_optimizer(model, TrainConfig(lr=0.1, momentum=0.9, weight_decay=1e-4))
    adamw = build_optimizer(model, TrainConfig(optimizer="adamw", lr=1e-3, weight_decay=0.05))
    assert type(sgd) is torch.optim.SGD and type(adamw) is torch.optim.AdamW
    g = sgd.param_groups[0]
    assert (g["lr"], g["momentum"], g["weight_decay"]) == (0.1, 0.9, 1e-4)
    assert (adamw.param_groups[0]["lr"], adamw.param_groups[0]["weight_decay"]) == (1e-3, 0.05)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epochs", 0),
        ("warmup", -1),
        ("lr", 0.0),
        ("optimizer", "sgdm"),
        ("amp", "fp8"),
        ("batch_size", 0),
        ("workers", -1),
        ("momentum", 1.5),
        ("weight_decay", -1e-4),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field: str, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


@settings(max_examples=40)
@given(n=st.integers(1, 12), c=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_topk_correct_matches_a_rank_count_oracle(n: int, c: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g)
    target = torch.randint(0, c, (n,), generator=g)
    # oracle: the target is in the top k iff fewer than k logits in its row are strictly larger (no ties a.s.)
    larger = (logits > logits.gather(1, target[:, None])).sum(1)
    expected = [int((larger < k).sum()) for k in (1, 5)]
    assert topk_correct(logits, target, (1, 5)) == expected


def test_topk_correct_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(5,\)"):
        topk_correct(torch.zeros(4, 3), torch.zeros(5, dtype=torch.long))
