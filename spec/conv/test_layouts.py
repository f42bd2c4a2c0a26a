"""Spec of the "fast" convolution's two layout paths: NCHW input (the course's layout, channel-major im2col) and
channels-last input (im2col rows, shifted-row weight gradient) each equal torch's convolution and keep the caller's
layout, with either GEMM routine (`conv.GEMM`: oneDNN's matmul or torch.mm).

Oracles: F.conv2d, torch.nn.grad.conv2d_input / conv2d_weight, gradcheck in float64 (which runs torch.mm: oneDNN's
matmul has no float64), and in float32 both GEMM routines against a float64 reference. Shapes reach every branch:
1×1 as one GEMM on views, stride-1 K×K (including padding wider than the kernel, which makes the grad_input
correlation crop dY), and strided im2col with col2im; anisotropic stride and padding pairs, batch 1.
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
def test_nchw_im2col_path_is_exact_whatever_the_chunking(monkeypatch: pytest.MonkeyPatch, budget: int) -> None:
    """The columns are built per batch chunk; a chunk boundary must not change a single value."""
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
def test_outputs_and_grads_never_share_a_transient_buffer(kernel: int, stride: int, pad: int) -> None:
    """Transients are views of a buffer a call frees: a later call (same shapes, other values) must not change an
    earlier call's output, its saved state or its gradients, and none of them may be a view of a larger buffer."""
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
    for name, t in (("y1", y1), ("y2", y2), ("gx1", gx1), ("gw1", gw1), ("gx2", gx2), ("gw2", gw2)):
        own = t.numel() * t.element_size()
        assert t.untyped_storage().nbytes() == own, (
            f"{name} ({own} B) is a view of a {t.untyped_storage().nbytes()} B buffer"
        )


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


PATHS = [((1, 1), (1, 1), (0, 0)), ((3, 3), (1, 1), (1, 1)), ((2, 2), (1, 1), (3, 0)), ((7, 7), (2, 2), (3, 3))]
PATH_IDS = ["1x1", "3x3", "padding-wider-than-kernel", "7x7/2-stem"]


@pytest.mark.parametrize("gemm", conv.GEMMS)
@pytest.mark.parametrize(("kernel", "stride", "pad"), PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_both_gemm_routines_match_torch_in_float32(
    monkeypatch: pytest.MonkeyPatch, gemm: str, kernel, stride, pad, channels_last: bool
) -> None:
    """Flip the one GEMM switch: output and gradients of float32 input stay within float32 rounding of a float64
    reference (F.conv2d, conv2d_input, conv2d_weight on the same values), relative to the largest entry."""
    monkeypatch.setattr(conv, "GEMM", gemm)
    x, w, b = _tensors((3, 6, 5, 11, 10, kernel, stride, pad), channels_last, torch.float32)
    y = custom_conv2d(x, w, b, stride, pad, algorithm="fast")
    dy = torch.randn_like(y)
    gx, gw, gb = torch.autograd.grad(y, (x, w, b), dy)
    x64, w64, b64, dy64 = (t.detach().double() for t in (x, w, b, dy))
    refs = {
        "out": F.conv2d(x64, w64, b64, stride, pad),
        "grad_input": conv2d_input(x.shape, w64, dy64, stride, pad),
        "grad_weight": conv2d_weight(x64, w.shape, dy64, stride, pad),
        "grad_bias": dy64.sum((0, 2, 3)),
    }
    got = {"out": y, "grad_input": gx, "grad_weight": gw, "grad_bias": gb}
    errors = {k: ((got[k].double() - r).abs().max() / r.abs().max()).item() for k, r in refs.items()}
    assert max(errors.values()) < 1e-5, f"GEMM={gemm} {kernel}/{stride}/{pad} cl={channels_last}: rel errors {errors}"


@pytest.mark.skipif(conv._ONEDNN_MATMUL is None, reason="this torch build has no oneDNN matmul")
@pytest.mark.parametrize(("kernel", "stride", "pad"), PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_the_gemm_switch_routes_float32_to_onednn_and_float64_to_torch_mm(
    monkeypatch: pytest.MonkeyPatch, kernel, stride, pad, channels_last: bool
) -> None:
    """The switch is not a no-op: "onednn" sends a float32 CPU conv's GEMMs to oneDNN's matmul (all but the NCHW
    1×1's batched GEMM, which has none), "blas" sends none, and float64 (oneDNN has none) never goes there."""
    calls: list[str] = []
    onednn = conv._ONEDNN_MATMUL
    monkeypatch.setattr(conv, "_ONEDNN_MATMUL", lambda *a: (calls.append(str(a[0].dtype)), onednn(*a))[1])
    pointwise_nchw = kernel == (1, 1) and not channels_last
    for gemm, dtype, expect in (
        ("onednn", torch.float32, not pointwise_nchw),
        ("blas", torch.float32, False),
        ("onednn", torch.float64, False),
    ):
        monkeypatch.setattr(conv, "GEMM", gemm)
        calls.clear()
        x, w, b = _tensors((2, 3, 4, 9, 8, kernel, stride, pad), channels_last, dtype)
        y = custom_conv2d(x, w, b, stride, pad, algorithm="fast")
        torch.autograd.grad(y.sum(), (x, w))
        assert bool(calls) == expect, f"GEMM={gemm} {dtype}: oneDNN matmul calls {calls}, expected some: {expect}"


@pytest.mark.parametrize(("kernel", "stride", "pad"), PATHS[1:], ids=PATH_IDS[1:])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_an_input_only_backward_does_no_weight_gradient_work(
    monkeypatch: pytest.MonkeyPatch, kernel, stride, pad, channels_last: bool
) -> None:
    """With a frozen weight (as the attacks have it) backward computes grad_input only: the weight-gradient passes
    are not entered, and the input gradient still equals torch's."""

    def forbidden(*args: object) -> None:
        raise AssertionError("a weight-gradient pass ran for a weight that needs no gradient")

    for name in ("_im2col_grad_weight", "_shift_grad_weight"):
        monkeypatch.setattr(conv, name, forbidden)
    x, w, b = _tensors((2, 3, 4, 9, 8, kernel, stride, pad), channels_last)
    w.requires_grad_(False)
    y = custom_conv2d(x, w, b, stride, pad, algorithm="fast")
    dy = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, (x,), dy)
    err = (gx - conv2d_input(x.shape, w, dy, stride, pad)).abs().max().item()
    assert err < 1e-10, f"{kernel}/{stride}/{pad} cl={channels_last}: grad_input max abs error {err:.2e}"


@pytest.mark.parametrize("gemm", conv.GEMMS)
@pytest.mark.parametrize(("kernel", "stride", "pad"), PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("bias_kind", ["strided", "expanded"])
def test_a_bias_that_is_not_contiguous_is_added_as_its_values(
    monkeypatch: pytest.MonkeyPatch, gemm: str, kernel, stride, pad, channels_last: bool, bias_kind: str
) -> None:
    """A strided (a column of a matrix) or expanded (one scalar broadcast) bias: oneDNN's matmul reads a bias as
    dense, so passed as is it summed the wrong values (or read past the storage of an expanded one)."""
    monkeypatch.setattr(conv, "GEMM", gemm)
    x, w, _ = _tensors((2, 3, 4, 9, 8, kernel, stride, pad), channels_last, torch.float32)
    b = torch.randn(4, 3)[:, 1] if bias_kind == "strided" else torch.tensor(0.5).expand(4)
    y = custom_conv2d(x.detach(), w.detach(), b, stride, pad, algorithm="fast")
    err = (y - F.conv2d(x.detach(), w.detach(), b, stride, pad)).abs().max().item()
    assert err < 1e-4, f"GEMM={gemm} {kernel}/{stride}/{pad} cl={channels_last} {bias_kind} bias: max abs error {err}"


@pytest.mark.parametrize(("kernel", "stride", "pad"), PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_bfloat16_weight_gradient_is_summed_no_worse_than_native(
    monkeypatch: pytest.MonkeyPatch, kernel, stride, pad, channels_last: bool
) -> None:
    """bfloat16 with one sample per chunk (the chunking a large input gets): the weight gradient's error against a
    float64 reference stays within 2x native's (the running sum is float32; a bfloat16 one was 3-7x)."""
    monkeypatch.setattr(conv, "COLUMN_BUDGET_BYTES", 1)
    x, w, _ = _tensors((16, 8, 8, 12, 12, kernel, stride, pad), channels_last, torch.bfloat16)
    dy = torch.randn(F.conv2d(x.detach(), w.detach(), None, stride, pad).shape, dtype=torch.bfloat16)
    (gw,) = torch.autograd.grad(custom_conv2d(x, w, None, stride, pad, algorithm="fast"), (w,), dy)
    (native,) = torch.autograd.grad(F.conv2d(x, w, None, stride, pad), (w,), dy)
    ref = conv2d_weight(x.detach().double(), w.shape, dy.double(), stride, pad)
    ours, theirs = ((g.double() - ref).abs().max().item() / ref.abs().max().item() for g in (gw, native))
    assert ours <= 2 * theirs + 1e-3, (
        f"{kernel}/{stride}/{pad} cl={channels_last}: rel error {ours:.2e}, native {theirs:.2e}"
    )


def test_disabling_mkldnn_keeps_the_fast_conv_off_onednn(monkeypatch: pytest.MonkeyPatch) -> None:
    """`torch.backends.mkldnn.flags(enabled=False)` turns oneDNN off for native convolutions; ours follows it."""
    calls: list[int] = []
    onednn = conv._ONEDNN_MATMUL
    monkeypatch.setattr(conv, "_ONEDNN_MATMUL", lambda *a: (calls.append(1), onednn(*a))[1])
    monkeypatch.setattr(conv, "GEMM", "onednn")
    x, w, b = _tensors((2, 3, 4, 9, 8, (3, 3), (1, 1), (1, 1)), False, torch.float32)
    with torch.backends.mkldnn.flags(enabled=False):
        y = custom_conv2d(x, w, b, 1, 1, algorithm="fast")
        torch.autograd.grad(y.sum(), (x, w))
    assert not calls, f"{len(calls)} oneDNN matmul calls with mkldnn disabled"
    err = (y - F.conv2d(x, w, b, 1, 1)).abs().max().item()
    assert err < 1e-4, f"max abs error {err}"


def test_gemm_helper_equals_a_times_b_transposed_plus_bias_on_both_routes(monkeypatch: pytest.MonkeyPatch) -> None:
    """gemm(a, b, bias) = a·bᵀ + bias, also for a b that is a transposed view (how the fast path passes columns)."""
    a, b_t, bias = torch.randn(37, 19), torch.randn(19, 23), torch.randn(23)
    want = a.double() @ b_t.double() + bias.double()
    calls: list[int] = []
    onednn = conv._ONEDNN_MATMUL
    if onednn is not None:  # the "onednn" half must reach oneDNN, not pass on torch.mm's fallback
        monkeypatch.setattr(conv, "_ONEDNN_MATMUL", lambda *args: (calls.append(1), onednn(*args))[1])
    for gemm in conv.GEMMS:
        monkeypatch.setattr(conv, "GEMM", gemm)
        calls.clear()
        err = (conv.gemm(a, b_t.t(), bias).double() - want).abs().max().item()
        assert err < 1e-4, f"GEMM={gemm}: max abs error {err:.2e}"
        assert bool(calls) == (gemm == "onednn" and onednn is not None), f"GEMM={gemm}: oneDNN calls {calls}"


@pytest.mark.parametrize(("kernel", "stride", "pad"), PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_the_output_survives_an_in_place_relu_in_both_layouts(kernel, stride, pad, channels_last: bool) -> None:
    """SimpleNet applies ReLU(inplace=True) to every conv output: autograd refuses that on a view made inside a
    Function, so every path must return a tensor of its own, and the gradients through the ReLU equal torch's."""
    x, w, b = _tensors((2, 3, 4, 9, 8, kernel, stride, pad), channels_last)
    y = torch.relu_(custom_conv2d(x, w, b, stride, pad, algorithm="fast"))
    ref = torch.relu_(F.conv2d(x, w, b, stride, pad))
    got, want = torch.autograd.grad(y.sum(), (x, w)), torch.autograd.grad(ref.sum(), (x, w))
    err = max((g - r).abs().max().item() for g, r in zip(got, want, strict=True))
    assert err < 1e-10, f"{kernel}/{stride}/{pad} cl={channels_last}: max abs gradient error {err:.2e}"
