"""Attack cost on SimpleNet: PGD-10 evaluation vs clean evaluation (seed: 12×), memory flat in the number of PGD
steps, and the step-time ratio of PGD-3 and FGSM-RS adversarial training to natural training (seed: 3.2×).
Table: reports/attack.md. Each attack against its algorithmic floor, interleaved: bench/attack/floor.py.
"""

from __future__ import annotations

import pytest
import torch

from bench.attack.cases import BATCH, SIZE, eval_step, train_step
from bench.device import cuda_memory_mib, process_memory_mib, synchronized

CASE = f"simplenet b{BATCH} {SIZE}px"


def _tag(benchmark, group: str, case: str, candidate: str, baseline: bool, **extra: float) -> None:
    benchmark.group = f"{group}:{case}"
    benchmark.extra_info.update(table="attack", case=case, candidate=candidate, baseline=baseline, **extra)


@pytest.mark.parametrize("candidate", ["clean", "pgd", "course-pgd", "fgsm"])
def test_attack_evaluation_time(benchmark, device: torch.device, candidate: str) -> None:
    """Evaluating one batch under attack (PGD-10 pixel / course, FGSM) against evaluating it clean."""
    step = eval_step(candidate, device)
    step()  # warm-up
    _tag(benchmark, "attack-eval", CASE, candidate, candidate == "clean")
    benchmark(synchronized(step, device))


@pytest.mark.parametrize("steps", [1, 10])
def test_attack_memory_is_flat_in_steps(benchmark, device: torch.device, steps: int) -> None:
    """Peak memory of one PGD-`steps` evaluation batch: no graph is kept between steps, so it must not grow."""
    if device.type == "cuda":
        step = eval_step("pgd", device, steps=steps)
        step()
        extra = cuda_memory_mib(step, device)  # allocated, reserved and NVML: each its own column
    else:
        setup = f"from bench.attack.cases import eval_step\nstep = eval_step('pgd', 'cpu', steps={steps})"
        memory = process_memory_mib(setup, "step()", threads=torch.get_num_threads())
        extra = {"cpu_peak_rss_mib": memory["step_peak_mib"]}
    step = eval_step("pgd", device, steps=steps)
    _tag(benchmark, "attack-mem", CASE, f"pgd-{steps}", steps == 1, **extra)
    benchmark.pedantic(synchronized(step, device), rounds=1, iterations=1, warmup_rounds=0)


@pytest.mark.parametrize("candidate", ["natural", "pgd-3", "fgsm-rs"])
def test_adversarial_training_step_time(benchmark, device: torch.device, candidate: str) -> None:
    """One training step; with the data loading equal, the ratio is the epoch-time ratio."""
    step = train_step(candidate, device)
    step()
    _tag(benchmark, "adv-train-step", CASE, candidate, candidate == "natural")
    benchmark(synchronized(step, device))
