"""TransformerBlock: Pre-LN, `x = x + drop_path(attn(norm1(x)))`, `x = x + drop_path(mlp(norm2(x)))`, attention over
ws×ws windows (ViTDet partition: zero-padded) when window_size > 0, global when 0.

The oracle rebuilds the block from its course-named parts (norm1, attn's qkv/proj, norm2, mlp) with the float64
reference attention; windowed attention is masked attention over the zero-padded grid (see test_window.py for why).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from spec.attention.reference import (
    SMALL,
    attention_reference,
    grids,
    max_err,
    same_window_mask,
    set_flag,
    zero_pad,
)
from spec.subject import need

pytestmark = pytest.mark.course("readme §3.2.1: Pre-LN block with stochastic depth; the starter's TransformerBlock")


def block_reference(block: torch.nn.Module, x: torch.Tensor, ws: int) -> torch.Tensor:
    y = block.norm1(x)
    if ws > 0:
        H, W = x.shape[1:3]
        padded = zero_pad(y, ws)
        a = attention_reference(padded, block.attn, mask=same_window_mask(*padded.shape[1:3], ws))[:, :H, :W]
    else:
        a = attention_reference(y, block.attn)
    x = x + a.to(x.dtype)
    return x + block.mlp(block.norm2(x))


@SMALL
@given(g=grids(max_side=7), ws=st.integers(0, 5), mlp_ratio=st.sampled_from([1.0, 2.5, 4.0]))
def test_block_is_pre_ln_residual_attention_then_mlp(subject, g, ws, mlp_ratio):
    torch.manual_seed(g["seed"])
    block = need(subject, "TransformerBlock")(g["dim"], g["heads"], mlp_ratio=mlp_ratio, drop_path=0.3, window_size=ws)
    block.eval()  # drop path is the identity in eval
    x = torch.randn(g["B"], g["H"], g["W"], g["dim"])
    err = max_err(block(x), block_reference(block, x, ws))
    assert err <= 2e-5, f"block vs Pre-LN reference: max abs err {err:.3g} (window_size={ws}, {g})"


@pytest.mark.parametrize("ws", [0, 3], ids=["global", "window3"])
def test_block_gradients_reach_every_parameter_and_stay_finite(subject, ws):
    # Train mode, but no drop path: at 0.2 on a batch of 3, every branch is dropped ~1.6 % of the time (no gradient).
    block = need(subject, "TransformerBlock")(12, 3, drop_path=0.0, window_size=ws).train()
    x = torch.randn(3, 5, 4, 12, requires_grad=True)
    out = block(x)
    assert out.shape == x.shape, f"block output {tuple(out.shape)} != input {tuple(x.shape)}"
    assert torch.isfinite(out).all(), "block output has NaN/inf"
    out.square().mean().backward()
    dead = [n for n, p in block.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"parameters without gradient: {dead}"
    assert torch.isfinite(x.grad).all(), "input gradient has NaN/inf"


def test_block_drop_path_drops_whole_residual_branches_per_sample(subject):
    """In training, each sample's output is x + d₁·attn(norm1(x))/keep then + d₂·mlp(norm2(·))/keep, with d₁, d₂ each
    0 or 1 per sample: one of four candidates. p = 0.5, as the course's drop-path rates are < 1 (the course's given
    drop_path divides by keep = 1 - p, so p = 1 is not a rate it supports)."""
    p, n = 0.5, 32
    block = need(subject, "TransformerBlock")(8, 2, drop_path=p).train()
    x = torch.randn(n, 3, 3, 8, dtype=torch.float64)
    block.double()
    with torch.no_grad():
        out = block(x)
        a = attention_reference(block.norm1(x), block.attn)
        candidates = []
        for d1 in (0.0, 1.0):
            y = x + d1 * a / (1 - p)
            for d2 in (0.0, 1.0):
                candidates.append(y + d2 * block.mlp(block.norm2(y)) / (1 - p))
    errs = torch.stack([(out - c).abs().flatten(1).amax(1) for c in candidates], 1)  # (n, 4)
    which = errs.argmin(1)
    worst = errs.min(1).values.max().item()
    assert worst <= 1e-8, f"a sample is none of x (+ branch/keep) per residual branch: max abs err {worst:.3g}"
    assert len(set(which.tolist())) > 1, f"every sample took the same drop pattern {which[0].item()} at p={p}"


@pytest.mark.extension("miniplaces-lab's fused_attn switch")
def test_block_manual_and_fused_attention_agree(subject):
    block = need(subject, "TransformerBlock")(16, 4, window_size=3).eval()
    if not hasattr(block.attn, "fused_attn"):
        pytest.skip("the block's attention has no `fused_attn` switch")
    x = torch.randn(2, 7, 5, 16)
    set_flag(block, False)
    manual = block(x)
    set_flag(block, True)
    err = max_err(manual, block(x))
    assert err <= 1e-5, f"block with manual vs fused attention: max abs err {err:.3g}"


@pytest.mark.extension("input validation")
def test_block_keeps_window_size_and_rejects_negative_window(subject):
    Block = need(subject, "TransformerBlock")
    assert Block(8, 2, window_size=4).window_size == 4
    with pytest.raises(ValueError, match="window_size"):
        Block(8, 2, window_size=-1)
