"""Edges of the course convolution that the spec leaves open, written to kill mutmut's survivors
(reports/verification.md): the starter's signature defaults and which algorithm the course Function runs. These test
miniplaces-lab's `impl` directly (not a student's file)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from impl.conv import CustomConv2d, CustomConv2DFunction, custom_conv2d


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
