"""Spec of the "fast" convolution's two layout paths: NCHW input (the course's layout, per-sample plane GEMMs) and
channels-last input (row GEMMs) each equal torch's convolution and keep the caller's layout.

Oracles: F.conv2d, torch.nn.grad.conv2d_input / conv2d_weight, gradcheck in float64. Shapes reach every branch of
the NCHW path: 1×1 as one batched GEMM, stride-1 K×K on padded planes (including padding wider than the kernel,
which puts dY before the first input pixel), and strided im2col; anisotropic stride and padding pairs, batch 1.
These are miniplaces-lab's own paths, so the tests import impl directly (not run for a foreign implementation).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.grad import conv2d_input, conv2d_weight

from impl import conv
from impl.conv import CustomConv2d, custom_conv2d, is_channels_last

Case = tuple[int, int, int, int, int, tuple[int, int], tuple[int, int], tuple[int, int]]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """(n, c_in, c_out, h, w, kernel, stride, padding) with pairs that differ per axis and pads up to K + 1."""
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    pad = (draw(st.integers(0, kernel[0] + 1)), draw(st.integers(0, kernel[1] + 1)))
    h = draw(st.integers(max(1, kernel[0] - 2 * pad[0]), kernel[0] + 5))
    w = draw(st.integers(max(1, kernel[1] - 2 * pad[1]), kernel[1] + 5))
    return draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 5)), h, w, kernel, stride, pad


def _tensors(case: Case, channels_last: bool, dtype: torch.dtype = torch.float64):
    n, c_in, c_out, h, w, kernel, _, _ = case
    x = torch.randn(n, c_in, h, w, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return (
        x.requires_grad_(),
        torch.randn(c_out, c_in, *kernel, dtype=dtype, requires_grad=True),
        torch.randn(c_out, dtype=dtype, requires_grad=True),
    )


@settings(max_examples=60)
@given(case=cases(), channels_last=st.booleans())
def test_fast_forward_and_backward_match_torch_in_both_layouts(case: Case, channels_last: bool) -> None:
    stride, pad = case[6], case[7]
    x, w, b = _tensors(case, channels_last)
    y = custom_conv2d(x, w, b, stride, pad, algorithm="fast")
    ref = F.conv2d(x.detach(), w.detach(), b.detach(), stride, pad)
    dy = torch.randn_like(ref)
    gx, gw, gb = torch.autograd.grad(y, (x, w, b), dy)
    errors = {
        "out": (y - ref).abs().max().item(),
        "grad_input": (gx - conv2d_input(x.shape, w.detach(), dy, stride, pad)).abs().max().item(),
        "grad_weight": (gw - conv2d_weight(x.detach(), w.shape, dy, stride, pad)).abs().max().item(),
        "grad_bias": (gb - dy.sum((0, 2, 3))).abs().max().item(),
    }
    assert max(errors.values()) < 1e-10, f"{case} channels_last={channels_last}: max abs errors {errors}"
    # A C=1 or 1×1 input counts as NCHW (it is both), as torch's suggest_memory_format has it.
    layout = torch.channels_last if is_channels_last(x) else torch.contiguous_format
    dense = {"out": y.is_contiguous(memory_format=layout), "grad_input": gx.is_contiguous(memory_format=layout)}
    assert all(dense.values()), f"{case}: not dense in the input's layout {layout}: {dense}"


@pytest.mark.parametrize(
    ("kernel", "stride", "pad"),
    [((1, 1), (1, 1), (0, 0)), ((3, 2), (1, 1), (1, 2)), ((2, 2), (1, 1), (3, 0)), ((3, 3), (2, 1), (1, 2))],
    ids=["1x1-batched-gemm", "plane", "padding-wider-than-kernel", "strided-im2col"],
)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_fast_paths_pass_gradcheck_float64(kernel, stride, pad, channels_last: bool) -> None:
    x, w, b = _tensors((1, 2, 2, 4, 5, kernel, stride, pad), channels_last)
    assert torch.autograd.gradcheck(
        lambda x, w, b: custom_conv2d(x, w, b, stride, pad, algorithm="fast"), (x, w, b), eps=1e-6, atol=1e-5
    )


@pytest.mark.parametrize("budget", [1, 10**9], ids=["one-sample-chunks", "one-chunk"])
def test_nchw_plane_path_is_exact_whatever_the_chunking(monkeypatch: pytest.MonkeyPatch, budget: int) -> None:
    """The widened planes are built per batch chunk; a chunk boundary must not change a single value."""
    monkeypatch.setattr(conv, "COLUMN_BUDGET_BYTES", budget)
    x, w, b = _tensors((4, 3, 2, 7, 5, (3, 3), (1, 1), (1, 1)), channels_last=False)
    y = custom_conv2d(x, w, b, 1, 1, algorithm="fast")
    gx, gw = torch.autograd.grad(y.square().sum(), (x, w))
    ref = F.conv2d(x, w, b, 1, 1)
    rx, rw = torch.autograd.grad(ref.square().sum(), (x, w))
    err = max((y - ref).abs().max().item(), (gx - rx).abs().max().item(), (gw - rw).abs().max().item())
    assert err < 1e-10, f"budget {budget} B: max abs error {err:.2e}"


@pytest.mark.parametrize(
    ("kernel", "stride", "pad"), [(1, 1, 0), (3, 1, 1), (3, 2, 1)], ids=["1x1", "3x3-plane", "3x3/2-im2col"]
)
def test_outputs_and_grads_never_share_the_reused_workspace(kernel: int, stride: int, pad: int) -> None:
    """Transients live in one workspace reused by every call: a later call (same shapes, other values) must not
    change an earlier call's output, its saved state or its gradients, and none of them may alias the workspace."""
    x1, w1, b1 = _tensors((3, 4, 5, 7, 6, (kernel, kernel), (stride, stride), (pad, pad)), channels_last=False)
    y1 = custom_conv2d(x1, w1, b1, stride, pad, algorithm="fast")
    ref_y = F.conv2d(x1, w1, b1, stride, pad).detach()
    x2, w2, b2 = (t.detach().neg().requires_grad_() for t in (x1, w1, b1))
    y2 = custom_conv2d(x2, w2, b2, stride, pad, algorithm="fast")  # overwrites the workspace
    dy = torch.randn_like(y1)
    gx1, gw1 = torch.autograd.grad(y1, (x1, w1), dy)  # y1's backward after y2's forward
    gx2, gw2 = torch.autograd.grad(y2, (x2, w2), dy)  # and a backward after it
    rx = conv2d_input(x1.shape, w1.detach(), dy, stride, pad)
    rw = conv2d_weight(x1.detach(), w1.shape, dy, stride, pad)
    err = max((y1.detach() - ref_y).abs().max().item(), (gx1 - rx).abs().max().item(), (gw1 - rw).abs().max().item())
    assert err < 1e-10, f"first call's results changed by a second call: max abs error {err:.2e}"
    workspace = {buf.untyped_storage().data_ptr() for buf in conv._WORKSPACES.buffers.values()}
    for name, t in (("y1", y1), ("y2", y2), ("gx1", gx1), ("gw1", gw1), ("gx2", gx2), ("gw2", gw2)):
        assert t.untyped_storage().data_ptr() not in workspace, f"{name} is a view of the workspace"


def test_nchw_input_that_is_not_contiguous_is_accepted() -> None:
    """A transposed view (neither NCHW- nor NHWC-contiguous) is convolved as NCHW, like torch does."""
    base = torch.randn(2, 6, 3, 5, dtype=torch.float64)
    x = base.transpose(2, 3)  # (2, 6, 5, 3), strided
    w = torch.randn(4, 6, 3, 3, dtype=torch.float64)
    err = (custom_conv2d(x, w, None, 1, 1, algorithm="fast") - F.conv2d(x, w, None, 1, 1)).abs().max().item()
    assert err < 1e-10, f"max abs error {err:.2e}"


@pytest.mark.parametrize(("args", "culprit"), [((0, 4, 3), "in_channels"), ((3, 0, 3), "out_channels")])
def test_custom_conv2d_rejects_zero_channels_naming_the_argument(args: tuple[int, int, int], culprit: str) -> None:
    with pytest.raises(ValueError, match=f"{culprit} must be a positive int, got 0"):
        CustomConv2d(*args)
