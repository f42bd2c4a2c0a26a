"""Spec of §3.1.1: 2D convolution as an autograd Function, checked against torch's own convolution.

Oracles: F.conv2d (forward), torch.nn.grad.conv2d_input / conv2d_weight (backward), torch.autograd.gradcheck in
float64. Both algorithms (the seed's "unfold" and our "fast") are checked; for a foreign implementation only its
CustomConv2DFunction is ("fast" is a miniplaces-lab extension).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.autograd.gradcheck import GradcheckError

from spec import diagnose
from spec.subject import need

pytestmark = pytest.mark.course("readme §3.1.1; the starter's code/test_conv.py: forward and backward equal torch's")

ConvFn = Callable[..., Tensor]


@dataclass(frozen=True)
class ConvCase:
    n: int
    c_in: int
    c_out: int
    h: int
    w: int
    kh: int
    kw: int
    stride: int
    padding: int
    bias: bool

    def tensors(
        self, dtype: torch.dtype, requires_grad: tuple[bool, bool, bool] = (True, True, True), device: str = "cpu"
    ):
        kw = {"dtype": dtype, "device": device}
        x = torch.randn(self.n, self.c_in, self.h, self.w, **kw).requires_grad_(requires_grad[0])
        w = torch.randn(self.c_out, self.c_in, self.kh, self.kw, **kw).requires_grad_(requires_grad[1])
        b = torch.randn(self.c_out, **kw).requires_grad_(requires_grad[2]) if self.bias else None
        return x, w, b


@st.composite
def conv_cases(draw: st.DrawFn, max_kernel: int = 7, square: bool = True) -> ConvCase:
    """K 1–7, S 1–4, P 0–3, C 1–6, N 1–3, H ≠ W allowed, strides that need not divide, with or without bias."""
    kh = draw(st.integers(1, max_kernel))
    kw = kh if square else draw(st.integers(1, max_kernel))
    padding = draw(st.integers(0, 3))
    stride = draw(st.integers(1, 4))
    h = draw(st.integers(max(1, kh - 2 * padding), kh + 6))
    w = draw(st.integers(max(1, kw - 2 * padding), kw + 6))
    return ConvCase(
        n=draw(st.integers(1, 3)),
        c_in=draw(st.integers(1, 6)),
        c_out=draw(st.integers(1, 6)),
        h=h,
        w=w,
        kh=kh,
        kw=kw,
        stride=stride,
        padding=padding,
        bias=draw(st.booleans()),
    )


@pytest.fixture(params=["unfold", pytest.param("fast", marks=pytest.mark.extension)])
def conv_fn(request: pytest.FixtureRequest, subject: ModuleType) -> ConvFn:
    """The subject's convolution as f(x, w, b, stride, padding): the course's Function, and our "fast" algorithm."""
    if request.param == "unfold":
        return need(subject, "CustomConv2DFunction").apply
    custom_conv2d = need(subject, "custom_conv2d")
    return lambda x, w, b, s, p: custom_conv2d(x, w, b, s, p, algorithm="fast")


def _max_err(a: Tensor, b: Tensor) -> float:
    return (a - b).abs().max().item() if a.numel() else 0.0


@settings(max_examples=25)
@given(case=conv_cases(), needs=st.tuples(st.booleans(), st.booleans(), st.booleans()))
def test_gradcheck_float64(conv_fn: ConvFn, case: ConvCase, needs: tuple[bool, bool, bool]) -> None:
    needs = (needs[0], needs[1], needs[2] and case.bias)
    if not any(needs):
        needs = (True, False, False)
    x, w, b = case.tensors(torch.float64, needs)
    inputs = tuple(t for t in (x, w, b) if t is not None)
    try:
        torch.autograd.gradcheck(
            lambda *args: conv_fn(args[0], args[1], args[2] if case.bias else None, case.stride, case.padding),
            inputs,
            eps=1e-6,
            atol=1e-5,
            fast_mode=True,  # checks random projections of the Jacobian: same power for a wrong formula, ~50x faster
        )
    except GradcheckError as exc:
        first = str(exc).splitlines()[0].replace("input 0", "input").replace("input 1", "weight")
        pytest.fail(f"gradcheck: {first.replace('input 2', 'bias')} ({case}, needs_input_grad={needs})", pytrace=False)


def _check_forward(conv_fn: ConvFn, case: ConvCase, device: str = "cpu") -> None:
    x, w, b = case.tensors(torch.float64, device=device)
    y = conv_fn(x, w, b, case.stride, case.padding)
    ref = F.conv2d(x, w, b, case.stride, case.padding)
    variants = diagnose.conv_forward_variants(x, w, b, case.stride, case.padding)
    assert y.shape == ref.shape and _max_err(y, ref) < 1e-10, diagnose.explain("forward", y, ref, case, variants)


def _check_backward(conv_fn: ConvFn, case: ConvCase, device: str = "cpu") -> None:
    x, w, b = case.tensors(torch.float64, device=device)
    y = conv_fn(x, w, b, case.stride, case.padding)
    g = torch.randn(F.conv2d(x, w, b, case.stride, case.padding).shape, dtype=x.dtype, device=device)
    grads = torch.autograd.grad(y, [t for t in (x, w, b) if t is not None], g)
    want = {
        "input": torch.nn.grad.conv2d_input(x.shape, w, g, case.stride, case.padding),
        "weight": torch.nn.grad.conv2d_weight(x, w.shape, g, case.stride, case.padding),
        "bias": g.sum((0, 2, 3)),
    }
    variants = diagnose.conv_grad_variants(x, w, g, case.stride, case.padding)
    for name, got in zip(("input", "weight", "bias"), grads, strict=False):
        ok = got.shape == want[name].shape and _max_err(got, want[name]) < 1e-10
        assert ok, diagnose.explain(f"grad {name}", got, want[name], case, variants[name])


@pytest.mark.part("conv_forward")
@settings(max_examples=20)
@given(case=conv_cases())
def test_forward_matches_torch_float64(conv_fn: ConvFn, case: ConvCase) -> None:
    _check_forward(conv_fn, case)


@settings(max_examples=20)
@given(case=conv_cases())
def test_backward_matches_torch_nn_grad_float64(conv_fn: ConvFn, case: ConvCase) -> None:
    _check_backward(conv_fn, case)


@pytest.mark.gpu
@settings(max_examples=30)
@given(case=conv_cases())
def test_cuda_forward_and_backward_match_torch_float64(conv_fn: ConvFn, case: ConvCase) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    _check_forward(conv_fn, case, device="cuda")
    _check_backward(conv_fn, case, device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("layer", [(32, 3, 64, 128, 7, 2, 3), (32, 64, 64, 32, 3, 1, 1), (32, 128, 512, 16, 1, 1, 0)])
def test_cuda_float32_simplenet_layers_match_torch_without_tf32(conv_fn: ConvFn, layer: tuple[int, ...]) -> None:
    """TF32 is off (spec/conftest.py): float32 at full layer sizes; a wrong formula errs by O(1), rounding by ~1e-5."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    n, c_in, c_out, hw, k, s, p = layer
    x, w, b = ConvCase(n, c_in, c_out, hw, hw, k, k, s, p, True).tensors(torch.float32, device="cuda")
    y, y_ref = conv_fn(x, w, b, s, p), F.conv2d(x, w, b, s, p)
    g = torch.randn_like(y_ref)
    got = (y, *torch.autograd.grad(y, (x, w), g))
    want = (y_ref, *torch.autograd.grad(y_ref, (x, w), g))
    for name, a, e in zip(("output", "grad input", "grad weight"), got, want, strict=True):
        # Weight gradients sum ~10⁵ float32 terms: judge the error against the tensor's scale, not per element.
        rel = ((a - e).abs().max() / e.abs().max()).item()
        assert rel < 1e-4, f"{layer}: {name} max abs error is {rel:.2g} of its max magnitude"


@pytest.mark.extension("non-square kernels: the readme's are square")
@settings(max_examples=15)
@given(case=conv_cases(square=False))
def test_non_square_kernels_match_torch_float64(conv_fn: ConvFn, case: ConvCase) -> None:
    _check_forward(conv_fn, case)
    _check_backward(conv_fn, case)


_U32 = 2.0**-24  # float32 unit roundoff


def _assert_within_rounding(name: str, got: Tensor, exact: Tensor, scale: Tensor, terms: int, case: ConvCase) -> None:
    """A float32 sum of `terms` products errs by at most γ·Σ|products| (any summation order, FMA or not), γ ≈
    terms·u: `scale` is that Σ|products| per element, computed in float64 on the absolute values."""
    bound = 2 * (terms + 1) * _U32 * scale + 1e-30
    excess = ((got.double() - exact).abs() / bound).max().item() if got.numel() else 0.0
    assert got.shape == exact.shape and excess <= 1, (
        f"{case}: float32 {name} errs by {excess:.3g}× the rounding bound of a {terms}-term sum "
        f"(max abs error {_max_err(got.double(), exact):.3g})"
    )


@settings(max_examples=10)
@given(case=conv_cases())
def test_float32_matches_a_float64_reference_within_rounding(conv_fn: ConvFn, case: ConvCase) -> None:
    """float32 against the exact (float64) result of the same float32 numbers, within the worst-case rounding error of
    each output's reduction, so a correct file never fails on summation order or thread count; a wrong formula errs
    by O(1) of the scale."""
    x, w, b = case.tensors(torch.float32)
    y = conv_fn(x, w, b, case.stride, case.padding)
    x64, w64, b64 = x.detach().double(), w.detach().double(), None if b is None else b.detach().double()
    y64 = F.conv2d(x64, w64, b64, case.stride, case.padding)
    abs_b = None if b64 is None else b64.abs()
    scale = F.conv2d(x64.abs(), w64.abs(), abs_b, case.stride, case.padding)
    _assert_within_rounding("output", y, y64, scale, case.c_in * case.kh * case.kw, case)
    g = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, w), g)
    g64 = g.double()
    s, p = case.stride, case.padding
    want_x = torch.nn.grad.conv2d_input(x.shape, w64, g64, s, p)
    scale_x = torch.nn.grad.conv2d_input(x.shape, w64.abs(), g64.abs(), s, p)
    _assert_within_rounding("grad input", gx, want_x, scale_x, case.c_out * case.kh * case.kw, case)
    want_w = torch.nn.grad.conv2d_weight(x64, w.shape, g64, s, p)
    scale_w = torch.nn.grad.conv2d_weight(x64.abs(), w.shape, g64.abs(), s, p)
    _assert_within_rounding("grad weight", gw, want_w, scale_w, case.n * y.shape[2] * y.shape[3], case)


@pytest.mark.advised("no wasted gradient work: autograd discards a gradient for an input that needs none")
@pytest.mark.parametrize(
    "needs", [(True, False, False), (False, True, False), (False, False, True), (True, True, False)]
)
def test_backward_returns_none_for_unneeded_gradients(conv_fn: ConvFn, needs: tuple[bool, bool, bool]) -> None:
    case = ConvCase(2, 3, 4, 7, 6, 3, 3, 2, 1, True)
    x, w, b = case.tensors(torch.float64, needs)
    y = conv_fn(x, w, b, case.stride, case.padding)
    grads = y.grad_fn.apply(torch.ones_like(y))
    assert len(grads) == 5, f"backward must return 5 values (input, weight, bias, stride, padding), got {len(grads)}"
    for name, needed, grad in zip(("input", "weight", "bias"), needs, grads, strict=False):
        assert (grad is not None) == needed, f"grad {name}: needed={needed} but backward returned {type(grad)}"


@pytest.mark.extension("what the Function saves for backward")
def test_unfold_saves_no_columns_when_weight_needs_no_gradient(subject: ModuleType) -> None:
    """No work for unneeded gradients: the columns (K² × the input) are only kept for the weight gradient."""
    fn = need(subject, "CustomConv2DFunction").apply
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    y = fn(x, torch.randn(8, 3, 5, 5), None, 1, 2)
    saved = [t for t in y.grad_fn.saved_tensors if t is not None]
    assert sum(t.numel() for t in saved) <= 8 * 3 * 5 * 5, [tuple(t.shape) for t in saved]


@pytest.mark.extension('the "fast" algorithm')
@settings(max_examples=20)
@given(case=conv_cases(square=False), channels_last=st.booleans())
def test_fast_algorithm_equals_unfold_algorithm(subject: ModuleType, case: ConvCase, channels_last: bool) -> None:
    custom_conv2d = need(subject, "custom_conv2d")
    x, w, b = case.tensors(torch.float64)
    if channels_last:
        x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    outs = {}
    for algorithm in ("unfold", "fast"):
        y = custom_conv2d(x, w, b, case.stride, case.padding, algorithm=algorithm)
        grads = torch.autograd.grad(y, (x, w), torch.ones_like(y))
        outs[algorithm] = (y, *grads)
    for name, a, e in zip(("output", "grad input", "grad weight"), outs["fast"], outs["unfold"], strict=True):
        assert _max_err(a, e) < 1e-10, f"{case} channels_last={channels_last}: {name} differs by {_max_err(a, e):.3g}"


@pytest.mark.part("conv_forward")
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_output_can_be_modified_in_place_by_relu(conv_fn: ConvFn, bias: bool) -> None:
    """The course's SimpleNet puts nn.ReLU(inplace=True) after every conv: returning a view from the Function breaks
    it (a real student bug), with or without a bias (the bias-free path is where a view slips through)."""
    x, w, b = ConvCase(2, 3, 5, 9, 8, 3, 3, 1, 1, bias).tensors(torch.float64)
    y = nn.ReLU(inplace=True)(conv_fn(x, w, b, 1, 1))
    y.sum().backward()
    ref_x, ref_w = x.detach().requires_grad_(), w.detach().requires_grad_()
    F.relu(F.conv2d(ref_x, ref_w, None if b is None else b.detach(), 1, 1)).sum().backward()
    for name, got, want in (("input", x.grad, ref_x.grad), ("weight", w.grad, ref_w.grad)):
        assert _max_err(got, want) < 1e-10, f"after an in-place ReLU, grad {name} max abs err {_max_err(got, want):.3g}"


BAD_INPUTS = {
    "input not 4-D": (torch.randn(3, 8, 8), torch.randn(4, 3, 3, 3), 1, 0, r"4-D"),
    "channel mismatch": (torch.randn(1, 2, 8, 8), torch.randn(4, 3, 3, 3), 1, 0, r"3 input channels.*has 2"),
    "kernel larger than padded input": (torch.randn(1, 3, 4, 4), torch.randn(4, 3, 7, 7), 1, 1, r"larger than"),
    "stride 0": (torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3), 0, 0, r"stride must be >= 1"),
    "negative padding": (torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3), 1, -1, r"padding must be >= 0"),
    "float stride": (torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3), 1.5, 0, r"stride must be an int"),
    "float padding": (torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3), 1, 0.5, r"padding must be an int"),
    "no output channels": (
        torch.randn(1, 3, 8, 8),
        torch.randn(0, 3, 3, 3),
        1,
        1,
        r"^weight \(0, 3, 3, 3\) has no "
        r"output channels$",
    ),
    "no input channels": (torch.randn(1, 0, 8, 8), torch.randn(4, 0, 3, 3), 1, 1, r"has no input channels$"),
    "empty kernel": (torch.randn(1, 3, 8, 8), torch.randn(4, 3, 0, 3), 1, 1, r"has no kernel rows$"),
}


@pytest.mark.extension("input validation")
@pytest.mark.parametrize("what", list(BAD_INPUTS))
def test_bad_input_raises_value_error_naming_shapes(conv_fn: ConvFn, what: str) -> None:
    x, w, stride, padding, message = BAD_INPUTS[what]
    with pytest.raises(ValueError, match=message):
        conv_fn(x, w, None, stride, padding)


@pytest.mark.part("conv_forward")
@pytest.mark.course("the starter's CustomConv2d wrapper (given code); main.py saves and loads its state_dict")
def test_custom_conv2d_is_a_drop_in_for_nn_conv2d(subject: ModuleType) -> None:
    CustomConv2d = need(subject, "CustomConv2d")
    native = nn.Conv2d(5, 7, kernel_size=3, stride=2, padding=1)
    custom = CustomConv2d(5, 7, kernel_size=3, stride=2, padding=1)
    assert list(custom.state_dict()) == list(native.state_dict())
    assert {k: v.shape for k, v in custom.state_dict().items()} == {k: v.shape for k, v in native.state_dict().items()}
    custom.load_state_dict(native.state_dict())
    x = torch.randn(3, 5, 11, 10, requires_grad=True)
    y, y_ref = custom(x), native(x)
    torch.testing.assert_close(y, y_ref)


@pytest.mark.part("conv_forward")
@pytest.mark.advised(
    "contiguous NCHW outputs and gradients like nn.Conv2d; the course's only `.view` follows AdaptiveAvgPool2d"
)
def test_custom_conv2d_gives_contiguous_outputs_and_gradients_for_nchw_input(subject: ModuleType) -> None:
    custom = need(subject, "CustomConv2d")(5, 7, kernel_size=3, stride=2, padding=1)
    x = torch.randn(3, 5, 11, 10, requires_grad=True)
    y = custom(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    assert y.is_contiguous() and g.is_contiguous(), f"output strides {y.stride()}, grad_input strides {g.stride()}"


@pytest.mark.extension("channels-last layout propagation")
def test_custom_conv2d_keeps_a_channels_last_layout_like_nn_conv2d(subject: ModuleType) -> None:
    custom = need(subject, "CustomConv2d")(5, 7, kernel_size=3, stride=1, padding=1)
    x = torch.randn(3, 5, 11, 10).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = custom(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    for name, t in (("output", y), ("grad_input", g)):
        assert t.is_contiguous(memory_format=torch.channels_last), f"{name} strides {t.stride()} are not NHWC"


@pytest.mark.part("conv_forward")
@pytest.mark.course("the starter's CustomConv2d.reset_parameters (given code)")
def test_custom_conv2d_init_has_nn_conv2d_bounds(subject: ModuleType) -> None:
    """nn.Conv2d draws weight and bias uniformly in ±1/√fan_in; a different init changes training curves."""
    CustomConv2d = need(subject, "CustomConv2d")
    m = CustomConv2d(16, 64, kernel_size=3)
    bound = 1 / (16 * 9) ** 0.5
    for name, p in (("weight", m.weight), ("bias", m.bias)):
        assert p.abs().max() <= bound + 1e-7, f"{name} exceeds ±{bound:.4f}"
        assert p.abs().max() > 0.9 * bound, f"{name} does not span ±{bound:.4f} (max {p.abs().max():.4f})"
        assert abs(p.std().item() - bound / 3**0.5) < 0.1 * bound, f"{name} std {p.std():.4f} is not uniform's"


@pytest.mark.extension("dilation/groups rejection (the course's wrapper ignores them)")
@pytest.mark.parametrize("kwargs", [{"dilation": 2}, {"groups": 2}])
def test_custom_conv2d_rejects_dilation_and_groups_clearly(subject: ModuleType, kwargs: dict[str, int]) -> None:
    CustomConv2d = need(subject, "CustomConv2d")
    with pytest.raises(NotImplementedError, match=next(iter(kwargs))):
        CustomConv2d(4, 4, 3, **kwargs)


@pytest.mark.extension('the "fast" algorithm')
def test_custom_conv2d_defaults_to_the_fast_algorithm(subject: ModuleType) -> None:
    """The module runs "fast" unless told otherwise, so the models' default path is the one the benchmarks time."""
    assert need(subject, "CustomConv2d")(3, 4, 3).algorithm == "fast"
    with pytest.raises(ValueError, match="algorithm must be one of"):
        need(subject, "CustomConv2d")(3, 4, 3, algorithm="winograd")


@pytest.mark.extension("the fast algorithm's batch chunking")
@pytest.mark.parametrize("stride", [1, 2])
def test_fast_algorithm_is_exact_when_the_batch_is_split_into_chunks(
    conv_fn: ConvFn, monkeypatch: pytest.MonkeyPatch, stride: int
) -> None:
    """The spec's small shapes fit one chunk; a 1-byte column budget forces one sample per GEMM chunk."""
    monkeypatch.setattr(importlib.import_module("impl.conv"), "COLUMN_BUDGET_BYTES", 1)
    for channels_last in (False, True):
        case = ConvCase(3, 4, 5, 9, 8, 3, 3, stride, 1, True)
        x, w, b = case.tensors(torch.float64)
        if channels_last:
            x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
        y, ref = conv_fn(x, w, b, stride, 1), F.conv2d(x, w, b, stride, 1)
        g = torch.randn_like(y)
        got = (y, *torch.autograd.grad(y, (x, w), g))
        want = (ref, *torch.autograd.grad(ref, (x, w), g))
        for name, a, e in zip(("output", "grad input", "grad weight"), got, want, strict=True):
            assert _max_err(a, e) < 1e-10, f"stride {stride} channels_last={channels_last}: {name}"


@pytest.mark.extension("empty batches (N = 0): main.py never makes one, and the course's reshapes need N > 0")
def test_an_empty_batch_gives_an_empty_output_like_torch(conv_fn: ConvFn) -> None:
    x, w, b = ConvCase(1, 3, 4, 8, 7, 3, 3, 2, 1, True).tensors(torch.float64)
    x = x.detach()[:0].requires_grad_()
    y = conv_fn(x, w, b, 2, 1)
    assert y.shape == F.conv2d(x, w, b, 2, 1).shape
    y.sum().backward()
    assert w.grad is not None and not w.grad.any(), "an empty batch contributes no weight gradient"
