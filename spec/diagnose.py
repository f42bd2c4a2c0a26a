"""Known wrong variants of the course's parts: when a result differs from the reference, name the mistake it matches.

Each `*_variants` function returns {mistake: thunk computing what that mistake would produce}; `explain` turns a
failed comparison into the one-line message the report card shows: the largest error and the configuration, and the
known mistake the result matches when one does. `hint` does the same for an exception raised by the subject.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from impl.verify import KNOWN_MISTAKE

Variants = Mapping[str, Callable[[], Tensor]]


def max_err(a: Tensor, b: Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def matching_mistake(got: Tensor, variants: Variants, tol: float) -> str:
    """The name of the first variant `got` equals within `tol`, or ""."""
    for name, make in variants.items():
        try:
            candidate = make()
        except (RuntimeError, ValueError, IndexError):  # a variant that cannot even run on this shape
            continue
        if candidate.shape == got.shape and max_err(got, candidate) <= tol:
            return name
    return ""


def explain(what: str, got: Tensor, want: Tensor, config: Any, variants: Variants = {}, tol: float = 1e-6) -> str:  # noqa: B006
    """'<what>: max abs err E (config) — matches the known mistake: M' for a failed comparison."""
    if got.shape != want.shape:
        return f"{what}: shape {tuple(got.shape)}, expected {tuple(want.shape)} ({config})"
    message = f"{what}: max abs err {max_err(got, want):.3g} ({config})"
    mistake = matching_mistake(got, variants, tol)
    return f"{message} — {KNOWN_MISTAKE}: {mistake}" if mistake else message


# --- §3.1.1 convolution ------------------------------------------------------------------------------------------


def conv_forward_variants(x: Tensor, w: Tensor, b: Tensor | None, stride: int, padding: int) -> Variants:
    out = {
        "kernel flipped (true convolution instead of torch's cross-correlation)": lambda: F.conv2d(
            x, w.flip(2, 3), b, stride, padding
        )
    }
    if b is not None:
        out = {"bias ignored": lambda: F.conv2d(x, w, None, stride, padding), **out}
    return out


def conv_grad_variants(x: Tensor, w: Tensor, g: Tensor, stride: int, padding: int) -> dict[str, Variants]:
    """Wrong gradients of input, weight and bias for the output gradient `g`."""
    gw = torch.nn.grad.conv2d_weight(x, w.shape, g, stride, padding)
    return {
        "input": {
            "kernel not flipped in the input gradient": lambda: torch.nn.grad.conv2d_input(
                x.shape, w.flip(2, 3), g, stride, padding
            ),
            # A fold with another stride or padding than the forward's cannot even run (its block count differs):
            # `hint` names that one. The padded input's gradient cropped at the wrong place runs, and is wrong.
            "padded input's gradient cropped at the corner instead of the padding": lambda: _corner_cropped_grad(
                x, w, g, stride, padding
            ),
        },
        "weight": {
            "weight gradient averaged over the batch instead of summed": lambda: gw / x.shape[0],
            "weight gradient of the first sample only": lambda: torch.nn.grad.conv2d_weight(
                x[:1], w.shape, g[:1], stride, padding
            ),
        },
        "bias": {
            "bias gradient averaged over the batch instead of summed": lambda: g.sum((0, 2, 3)) / g.shape[0],
            "bias gradient summed over the batch only (not over positions)": lambda: g.sum(0).flatten(1)[:, 0],
        },
    }


def _corner_cropped_grad(x: Tensor, w: Tensor, g: Tensor, stride: int, padding: int) -> Tensor:
    """The gradient of the explicitly padded input, cropped to (H, W) from its top-left corner, not from (P, P)."""
    h, w_ = x.shape[2:]
    padded = (x.shape[0], x.shape[1], h + 2 * padding, w_ + 2 * padding)
    return torch.nn.grad.conv2d_input(padded, w, g, stride, 0)[:, :, :h, :w_]


# --- §3.2.1 attention --------------------------------------------------------------------------------------------


def attention_variant(
    x: Tensor, attn: nn.Module, *, scale: float | None = None, softmax_dim: int = -1, merge: str = "heads-last"
) -> Tensor:
    """Attention over all tokens of x (B, H, W, C) with `attn`'s qkv/proj weights, in float64, with one knob turned:
    `scale` (default 1/√head_dim), the softmax axis (-1: over keys), and how heads are merged back into channels
    ("heads-last": token-major, [head0 | head1 | ...]; "heads-first": the (B, nH, L, hd) tensor reshaped as is)."""
    B, H, W, C = x.shape
    n = attn.num_heads
    hd = C // n
    scale = hd**-0.5 if scale is None else scale
    qkv = F.linear(x.double().reshape(B, H * W, C), attn.qkv.weight.double(), _double(attn.qkv.bias))
    q, k, v = qkv.reshape(B, H * W, 3, n, hd).permute(2, 0, 3, 1, 4)  # each (B, nH, L, hd)
    out = ((q @ k.transpose(-2, -1)) * scale).softmax(dim=softmax_dim) @ v  # (B, nH, L, hd)
    merged = out.transpose(1, 2).reshape(B, H, W, C) if merge == "heads-last" else out.reshape(B, H, W, C)
    return F.linear(merged, attn.proj.weight.double(), _double(attn.proj.bias))


def attention_variants(x: Tensor, attn: nn.Module) -> Variants:
    hd = x.shape[-1] // attn.num_heads
    return {
        "scale missing (no 1/√d)": lambda: attention_variant(x, attn, scale=1.0),
        "scale inverted (×√d instead of ÷√d)": lambda: attention_variant(x, attn, scale=hd**0.5),
        "scale uses the model width, not the head width": lambda: attention_variant(x, attn, scale=x.shape[-1] ** -0.5),
        "softmax over the queries (wrong axis)": lambda: attention_variant(x, attn, softmax_dim=-2),
        "heads merged in the wrong order (no transpose before merging)": lambda: attention_variant(
            x, attn, merge="heads-first"
        ),
    }


def _double(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.double()


# --- §3.3 PGD ----------------------------------------------------------------------------------------------------


def course_pgd(
    model: nn.Module,
    images: Tensor,
    steps: int,
    step: float,
    eps: float,
    *,
    box: tuple[Tensor, Tensor] | None = None,
    per_step_target: bool = False,
    descend: bool = True,
    target: str = "least",
    accumulate: bool = False,
    project: bool = True,
) -> Tensor:
    """The course attack, read independently: target = least confident label (of the clean input, or recomputed each
    step), a signed gradient step that descends its cross-entropy, projection onto the ε-ball, and an optional clamp
    to `box` (lo, hi). The other knobs make the known mistakes."""

    def labels(z: Tensor) -> Tensor:
        with torch.no_grad():
            logits = model(z)
        return logits.argmin(1) if target == "least" else logits.argmax(1)

    fixed = labels(images)
    x, total = images.clone(), torch.zeros_like(images)
    for _ in range(steps):
        x.requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(x), labels(x) if per_step_target else fixed), x)
        total = total + g if accumulate else g
        x = x.detach() + (-step if descend else step) * total.sign()
        if project:
            x = torch.min(torch.max(x, images - eps), images + eps)
        if box is not None:
            x = torch.min(torch.max(x, box[0].to(x)), box[1].to(x))
    return x


def pgd_variants(
    model: nn.Module, images: Tensor, steps: int, step: float, eps: float, readings: Mapping[str, Mapping[str, Any]]
) -> Variants:
    """Each known PGD mistake on top of each valid reading of the attack (`readings`: name -> course_pgd knobs)."""
    mistakes: dict[str, dict[str, Any]] = {
        "ascends the target's loss instead of descending": {"descend": False},
        "targets the most confident label (argmax) instead of the least": {"target": "most"},
        "gradients accumulated across steps": {"accumulate": True},
        "clamps the normalized image to [0, 1]": {"box": (torch.zeros(1), torch.ones(1))},
        "no projection onto the ε-ball": {"project": False},
    }

    def run(kw: Mapping[str, Any]) -> Callable[[], Tensor]:
        return lambda: course_pgd(model, images, steps, step, eps, **kw)

    return {
        f"{mistake} ({reading})": run({**valid, **wrong})
        for mistake, wrong in mistakes.items()
        for reading, valid in readings.items()
        if not ("box" in wrong and "box" in valid)
    }


# --- exceptions --------------------------------------------------------------------------------------------------

_HINTS = {
    "sliding blocks": "fold/unfold called with a stride, padding or output size other than the forward's",
    "is a view and is being modified inplace": "the Function returns a view: nn.ReLU(inplace=True) cannot modify it",
    "view size is not compatible": ".view on a non-contiguous tensor (reshape it, or make it contiguous)",
    "cannot reshape tensor of 0 elements": "a reshape with -1 on an empty batch",
    "does not require grad and does not have a grad_fn": "no gradient reaches the input (a detach or no_grad too many)",
}


def hint(exc: BaseException) -> str:
    """A short explanation of a known exception message, or ""."""
    text = str(exc)
    return next((why for pattern, why in _HINTS.items() if pattern in text), "")
