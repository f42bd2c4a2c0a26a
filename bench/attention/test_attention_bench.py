"""Attention forward+backward: manual vs fused (default) vs `F.scaled_dot_product_attention`, and the SimpleViT
training step with each attention path. Table: reports/attention.md.

Grids: the default ViT's 8x8 tokens (192 channels, 4 heads) and 32x32 (1024 tokens, where the L×L matrix dominates).
Memory: CUDA peak allocated by torch on GPU, peak RSS of a fresh subprocess on CPU.
"""

from __future__ import annotations

import pytest
import torch

from bench.attention.cases import CANDIDATES, batch_for, make_attention_step, make_vit_train_step
from bench.device import cuda_memory_mib, process_memory_mib, synchronized


def _memory_mib(device: torch.device, setup: str, step_fn) -> dict[str, float | None]:
    if device.type == "cuda":
        return cuda_memory_mib(step_fn, device)  # allocated, reserved and NVML: each its own column
    return {"rss_peak_mib": process_memory_mib(setup, "step()", threads=torch.get_num_threads())["step_peak_mib"]}


@pytest.mark.parametrize("side", [8, 32], ids=["8x8", "32x32"])
@pytest.mark.parametrize("candidate", CANDIDATES)
def test_attention_forward_backward(benchmark, device, candidate, side):
    batch = batch_for(side, device)
    case = f"{side}x{side}x192 h4 B={batch}"
    step = make_attention_step(candidate, side, batch, device)
    setup = (
        "from bench.attention.cases import make_attention_step\n"
        f"step = make_attention_step({candidate!r}, {side}, {batch}, {str(device)!r})"
    )
    memory = _memory_mib(device, setup, step)  # also the warm-up call
    benchmark.group = f"attention-fwd-bwd:{case}"
    baseline = candidate == "sdpa"
    benchmark.extra_info.update(table="attention", case=case, candidate=candidate, baseline=baseline, **memory)
    benchmark(synchronized(step, device))


@pytest.mark.parametrize("fused", [False, True], ids=["manual", "fused"])
def test_vit_training_step(benchmark, device, fused):
    batch = 256 if device.type == "cuda" else 8
    case = f"SimpleViT train step B={batch}"
    step = make_vit_train_step(fused, batch, device)
    setup = (
        "from bench.attention.cases import make_vit_train_step\n"
        f"step = make_vit_train_step({fused}, {batch}, {str(device)!r})"
    )
    memory = _memory_mib(device, setup, step)
    benchmark.group = f"vit-train-step:B={batch}"
    candidate = "fused" if fused else "manual"
    benchmark.extra_info.update(table="attention", case=case, candidate=candidate, baseline=not fused, **memory)
    benchmark(synchronized(step, device))
    benchmark.extra_info["images_per_s"] = batch / benchmark.stats.stats.median
