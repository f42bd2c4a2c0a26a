"""Independent oracles and hypothesis strategies for the attention spec.

The oracles re-derive the formulas from the course text with none of the implementation's reshapes: per-head loops,
explicit exp/sum softmax, masks built from token coordinates. They take the module's weights, not the module.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from torch import nn

from spec.subject import need

# The spec's autouse seeding fixture is function scoped; it only seeds, so reusing it across examples is harmless.
SMALL = settings(max_examples=12, suppress_health_check=[HealthCheck.function_scoped_fixture])
TINY = settings(max_examples=6, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def grids(draw: st.DrawFn, max_side: int = 9, max_heads: int = 4, max_head_dim: int = 8) -> dict[str, int]:
    """A token grid with H != W, batch 1-3, 1-4 heads, and a torch seed for the weights and inputs."""
    H = draw(st.integers(1, max_side))
    W = draw(st.integers(1, max_side).filter(lambda w: w != H))
    heads = draw(st.integers(1, max_heads))
    return {
        "B": draw(st.integers(1, 3)),
        "H": H,
        "W": W,
        "heads": heads,
        "dim": heads * draw(st.integers(1, max_head_dim)),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


def flag_of(module: nn.Module, flag: str = "fused_attn") -> None:
    """Skip unless the implementation under test exposes our manual/fused switch (a student's file need not)."""
    if not hasattr(module, flag):
        pytest.skip(f"{type(module).__name__} has no `{flag}` attribute: no manual/fused switch to compare")


def set_flag(model: nn.Module, value: bool, flag: str = "fused_attn") -> None:
    """Set the manual/fused switch on every attention module of `model`."""
    for m in model.modules():
        if hasattr(m, flag):
            setattr(m, flag, value)


def attention_reference(
    x: torch.Tensor, attn: nn.Module, mask: torch.Tensor | None = None, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """softmax(Q·Kᵀ/√hd)·V per head with `attn`'s qkv and proj weights, over all H·W tokens of x (B, H, W, C).

    `mask` (L, L), True where query i may attend to key j, makes it masked global attention.
    """
    B, H, W, C = x.shape
    n = attn.num_heads
    hd = C // n
    wq, wp = attn.qkv.weight.to(dtype), attn.proj.weight.to(dtype)
    bq = attn.qkv.bias.to(dtype) if attn.qkv.bias is not None else torch.zeros(3 * C, dtype=dtype)
    t = x.to(dtype).reshape(B, H * W, C)
    qkv = t @ wq.T + bq  # (B, L, 3C): [q | k | v], each head a contiguous hd slice
    heads = []
    for h in range(n):
        q = qkv[..., h * hd : (h + 1) * hd]
        k = qkv[..., C + h * hd : C + (h + 1) * hd]
        v = qkv[..., 2 * C + h * hd : 2 * C + (h + 1) * hd]
        logits = q @ k.transpose(1, 2) / hd**0.5  # (B, L, L)
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        e = torch.exp(logits - logits.amax(dim=-1, keepdim=True))
        heads.append((e / e.sum(dim=-1, keepdim=True)) @ v)
    out = torch.cat(heads, dim=-1) @ wp.T + attn.proj.bias.to(dtype)
    return out.reshape(B, H, W, C)


def same_window_mask(H: int, W: int, ws: int) -> torch.Tensor:
    """(H·W, H·W) block-diagonal mask: token (i, j) and (k, l) share a ws×ws window of the grid."""
    rows, cols = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    window = ((rows // ws) * ((W + ws - 1) // ws) + cols // ws).reshape(-1)
    return window[:, None] == window[None, :]


def zero_pad(x: torch.Tensor, ws: int) -> torch.Tensor:
    """Pad a (B, H, W, C) grid with zero tokens at the bottom and right up to multiples of ws."""
    B, H, W, C = x.shape
    Hp, Wp = -(-H // ws) * ws, -(-W // ws) * ws
    out = x.new_zeros(B, Hp, Wp, C)
    out[:, :H, :W] = x
    return out


def windowed(subject: Any, attn: nn.Module, x: torch.Tensor, ws: int) -> torch.Tensor:
    """The subject's windowed attention: partition, attend per window, unpartition."""
    windows, pad_hw = need(subject, "window_partition")(x, ws)
    return need(subject, "window_unpartition")(attn(windows), ws, pad_hw, (x.shape[1], x.shape[2]))


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()
