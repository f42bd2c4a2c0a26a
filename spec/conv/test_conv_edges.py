"""Edges of the course convolution that the spec leaves open, written to kill mutmut's survivors
(reports/verification.md): the starter's signature defaults and which algorithm the course Function runs. These test
miniplaces-lab's `impl` directly (not a student's file)."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from impl.conv import CustomConv2d, CustomConv2DFunction, FastConv2DFunction, custom_conv2d


def test_the_course_function_defaults_to_stride_1_and_padding_0() -> None:
    x, w, b = torch.randn(2, 3, 7, 6, dtype=torch.float64), torch.randn(4, 3, 3, 3, dtype=torch.float64), None
    y = CustomConv2DFunction.apply(x, w, b)
    ref = F.conv2d(x, w, b)
    assert y.shape == ref.shape, f"apply(x, w, b) gives {tuple(y.shape)}, F.conv2d(x, w, b) {tuple(ref.shape)}"
    torch.testing.assert_close(y, ref)


def test_the_course_function_runs_the_unfold_algorithm() -> None:
    """The spec checks `unfold` through CustomConv2DFunction and `fast` by name: if the course Function ran `fast`,
    the unfold algorithm would go unchecked."""
    x = torch.randn(1, 2, 5, 5, requires_grad=True)
    y = CustomConv2DFunction.apply(x, torch.randn(3, 2, 3, 3), None, 1, 1)
    assert y.grad_fn.algorithm == "unfold", f"CustomConv2DFunction ran {y.grad_fn.algorithm!r}"


def test_custom_conv2d_defaults_to_stride_1_padding_0_and_the_unfold_algorithm() -> None:
    x, w = (
        torch.randn(1, 3, 6, 5, dtype=torch.float64, requires_grad=True),
        torch.randn(4, 3, 3, 3, dtype=torch.float64),
    )
    y = custom_conv2d(x, w, None)
    torch.testing.assert_close(y, F.conv2d(x, w))
    assert y.grad_fn.algorithm == "unfold", f"custom_conv2d's default algorithm is {y.grad_fn.algorithm!r}"
    with pytest.raises(ValueError, match=r"^algorithm must be one of \(.*\), got 'winograd'$"):
        custom_conv2d(x, w, None, algorithm="winograd")


def test_custom_conv2d_module_has_nn_conv2d_attributes() -> None:
    m = CustomConv2d(3, 4, 3)
    got = (m.kernel_size, m.stride, m.padding, m.dilation, m.groups)
    assert got == ((3, 3), (1, 1), (0, 0), (1, 1), 1), f"(kernel_size, stride, padding, dilation, groups) = {got}"
    assert CustomConv2d(3, 4, 3, bias=False).bias is None, "bias=False still made a bias"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kernel_size": 0}, r"^kernel_size must be >= 1, got 0$"),
        ({"stride": 0}, r"^stride must be >= 1, got 0$"),
        ({"padding": -1}, r"^padding must be >= 0, got -1$"),
        ({"dilation": 0}, r"^dilation must be >= 1, got 0$"),
    ],
)
def test_custom_conv2d_rejects_a_bad_hyper_parameter_naming_it(kwargs, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CustomConv2d(3, 4, **{"kernel_size": 3, **kwargs})


def test_a_bias_of_the_wrong_shape_is_an_error_naming_it() -> None:
    with pytest.raises(ValueError, match=r"^bias must have shape \(4,\) to match weight \(4, 3, 3, 3\), got \(5,\)$"):
        custom_conv2d(torch.randn(1, 3, 5, 5), torch.randn(4, 3, 3, 3), torch.randn(5))


def test_init_bounds_follow_the_fan_in_of_a_non_square_kernel() -> None:
    """nn.Conv2d's init: weight bound √(6 / ((1 + 5)·fan_in)) (kaiming_uniform, a = √5), bias bound 1/√fan_in."""
    m = CustomConv2d(4, 512, kernel_size=(3, 5))
    fan_in = 4 * 3 * 5
    for name, p, bound in (("weight", m.weight, (1 / fan_in) ** 0.5), ("bias", m.bias, 1 / fan_in**0.5)):
        top = p.abs().max().item()
        assert 0.95 * bound < top <= bound + 1e-7, f"{name} spans ±{top:.4f}, nn.Conv2d's bound is ±{bound:.4f}"


@pytest.mark.parametrize("algorithm", ["unfold", "fast"])
@pytest.mark.parametrize("needs", [(True, False), (False, True)], ids=["input-only", "weight-only"])
def test_backward_keeps_only_what_the_needed_gradients_use(algorithm: str, needs: tuple[bool, bool]) -> None:
    x = torch.randn(2, 3, 6, 6).requires_grad_(needs[0])
    w = torch.randn(4, 3, 3, 3).requires_grad_(needs[1])
    saved = custom_conv2d(x, w, None, 1, 1, algorithm=algorithm).grad_fn.saved_tensors
    kept = sum(t is not None for t in saved)
    assert kept == 1, (
        f"{algorithm}, needs (input, weight) = {needs}: saved {[None if t is None else tuple(t.shape) for t in saved]}"
    )


@pytest.mark.parametrize("stride", [(2, 1), (1, 2)])
def test_fast_algorithm_handles_anisotropic_strides(stride) -> None:
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    y, ref = custom_conv2d(x, w, None, stride, 1, algorithm="fast"), F.conv2d(x, w, None, stride, 1)
    torch.testing.assert_close(y, ref)
    g = torch.randn_like(ref)
    for got, want in zip(torch.autograd.grad(y, (x, w), g), torch.autograd.grad(ref, (x, w), g), strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize(
    ("in_channels", "out_channels", "culprit"),
    [(0, 4, "in_channels"), (2.5, 4, "in_channels"), (3, True, "out_channels"), (3, -2, "out_channels")],
    ids=["zero-in", "float-in", "bool-out", "negative-out"],
)
def test_custom_conv2d_names_a_channel_count_that_is_not_a_positive_int(in_channels, out_channels, culprit) -> None:
    value = in_channels if culprit == "in_channels" else out_channels
    with pytest.raises(ValueError, match="^" + re.escape(f"{culprit} must be a positive int, got {value!r}") + "$"):
        CustomConv2d(in_channels, out_channels, 3)


def test_custom_conv2d_takes_one_channel_in_and_out_as_nn_conv2d_does() -> None:
    m = CustomConv2d(1, 1, 3, algorithm="unfold").double()
    x = torch.randn(2, 1, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(m(x), F.conv2d(x, m.weight, m.bias))


# The fast conv's routes: a 1×1 conv as one GEMM on views, a stride-1 K×K, a strided K×K.
ROUTES = {"pointwise": (1, 1, 0), "stride-1": (3, 1, 1), "strided": (3, 2, 1)}


@pytest.mark.parametrize("route", ROUTES)
def test_fast_conv_takes_a_transposed_input_on_every_route(route: str) -> None:
    """An input with H and W strides swapped (neither contiguous nor channels-last) gives F.conv2d's output and
    gradients."""
    k, s, p = ROUTES[route]
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64).transpose(2, 3).requires_grad_()
    w = torch.randn(4, 3, k, k, dtype=torch.float64, requires_grad=True)
    y = custom_conv2d(x, w, None, s, p, algorithm="fast")
    want = F.conv2d(x, w, None, s, p)
    torch.testing.assert_close(y, want)
    g = torch.randn_like(want)
    torch.testing.assert_close(torch.autograd.grad(y, (x, w), g), torch.autograd.grad(want, (x, w), g))


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels-last"])
def test_fast_conv_backward_takes_a_transposed_upstream_gradient(route: str, channels_last: bool) -> None:
    """y.transpose(2, 3) downstream hands the backward a gradient with H and W strides swapped."""
    k, s, p = ROUTES[route]
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    w = torch.randn(4, 3, k, k, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 4, *F.conv2d(x, w, None, s, p).shape[2:], dtype=torch.float64)
    g_t = g.transpose(2, 3).contiguous()  # the loss sees y transposed, so y's gradient is g_t transposed: a view
    got = torch.autograd.grad((custom_conv2d(x, w, None, s, p, algorithm="fast").transpose(2, 3) * g_t).sum(), (x, w))
    want = torch.autograd.grad((F.conv2d(x, w, None, s, p) * g).sum(), (x, w))
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels-last"])
def test_fast_conv_output_and_gradients_stay_on_the_inputs_device(route: str, channels_last: bool) -> None:
    """On the meta device (shapes without data: the device besides the CPU that every machine has) the output and both
    gradients are meta tensors of F.conv2d's shapes, not tensors made on the default device."""
    k, s, p = ROUTES[route]
    x = torch.empty(2, 3, 6, 6, device="meta")
    x = (x.contiguous(memory_format=torch.channels_last) if channels_last else x).requires_grad_()
    w = torch.empty(4, 3, k, k, device="meta", requires_grad=True)
    y = custom_conv2d(x, w, torch.empty(4, device="meta"), s, p, algorithm="fast")
    grad_x, grad_w = torch.autograd.grad(y, (x, w), torch.empty_like(y))
    got = [(t.device.type, tuple(t.shape)) for t in (y, grad_x, grad_w)]
    want = [("meta", tuple(F.conv2d(x, w, None, s, p).shape)), ("meta", tuple(x.shape)), ("meta", tuple(w.shape))]
    assert got == want, f"{route} channels_last={channels_last}: (device, shape) of y, grad_x, grad_w {got}"


def test_the_fast_function_defaults_to_stride_1_and_padding_0_and_records_the_fast_algorithm() -> None:
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    y = FastConv2DFunction.apply(x, w, None)
    torch.testing.assert_close(y, F.conv2d(x, w))
    assert y.grad_fn.algorithm == "fast", f"FastConv2DFunction recorded {y.grad_fn.algorithm!r} for its backward"
