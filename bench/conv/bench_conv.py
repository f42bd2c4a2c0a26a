"""Custom convolution (both algorithms) vs native F.conv2d: forward+backward time per SimpleNet layer, and time and
peak memory of one SimpleNet training step with each conv op. Targets for "fast": <= 1.2x native time,
<= 1.05x native peak memory (measured side by side in one run). Table: reports/conv.md.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from bench.conv.simplenet_step import CONV_OPS, make_step
from bench.device import cuda_peak_mib, subprocess_peak_rss_mib, synchronized
from impl.conv import custom_conv2d

BATCH = 32
# SimpleNet's convolutions at a 128×128 input: (C_in, C_out, K, stride, padding, input H=W).
LAYERS = [
    (3, 64, 7, 2, 3, 128),
    (64, 64, 1, 1, 0, 32),
    (64, 64, 3, 1, 1, 32),
    (64, 256, 1, 1, 0, 32),
    (256, 128, 1, 1, 0, 16),
    (128, 128, 3, 1, 1, 16),
    (128, 512, 1, 1, 0, 16),
]
CANDIDATES: dict[str, Callable[..., torch.Tensor]] = {
    "native": F.conv2d,
    "unfold": lambda x, w, b, s, p: custom_conv2d(x, w, b, s, p, algorithm="unfold"),
    "fast": lambda x, w, b, s, p: custom_conv2d(x, w, b, s, p, algorithm="fast"),
}


def _tag(benchmark, table_case: str, candidate: str, **extra: float) -> None:
    benchmark.extra_info.update(table="conv", case=table_case, candidate=candidate, baseline=candidate == "native")
    benchmark.extra_info.update(extra)


@pytest.mark.parametrize("candidate", list(CANDIDATES))
@pytest.mark.parametrize("layer", LAYERS, ids=lambda l: f"{l[0]}to{l[1]}k{l[2]}s{l[3]}@{l[5]}")
def test_layer_forward_backward(benchmark, device: torch.device, layer, candidate: str) -> None:
    c_in, c_out, k, s, p, hw = layer
    x = torch.randn(BATCH, c_in, hw, hw, device=device, requires_grad=c_in != 3)  # images need no gradient
    w = torch.randn(c_out, c_in, k, k, device=device, requires_grad=True)
    b = torch.randn(c_out, device=device, requires_grad=True)
    conv = CANDIDATES[candidate]

    def step() -> None:
        y = conv(x, w, b, s, p)
        y.backward(torch.ones_like(y))

    case = f"{c_in}->{c_out} k{k}/s{s} @{hw}x{hw} b{BATCH}"
    benchmark.group = f"conv-fwd-bwd:{case}"
    _tag(benchmark, case, candidate)
    benchmark(synchronized(step, device))


@pytest.mark.parametrize("candidate", list(CONV_OPS))
def test_simplenet_training_step(benchmark, device: torch.device, candidate: str) -> None:
    """Time of one SGD step of SimpleNet (batch 32, 128×128) and its peak memory above the model and data."""
    step = make_step(candidate, str(device), BATCH)
    if device.type == "cuda":
        peak_mib = cuda_peak_mib(step, device)
    else:  # a fresh process, so that no other case's allocations count
        setup = f"from bench.conv.simplenet_step import make_step; step = make_step({candidate!r}, 'cpu', {BATCH})"
        peak_mib = subprocess_peak_rss_mib(setup, "step()")
    benchmark.group = f"simplenet-train-step:b{BATCH}@128"
    _tag(benchmark, f"SimpleNet SGD step b{BATCH} 128x128", candidate, peak_mib=peak_mib)
    benchmark(synchronized(step, device))
