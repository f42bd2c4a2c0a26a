"""Edges of the course convolution that the spec leaves open, written to kill mutmut's survivors
(reports/verification.md): the starter's signature defaults and which algorithm the course Function runs. These test
miniplaces-lab's `impl` directly (not a student's file)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from impl.conv import CustomConv2DFunction


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
