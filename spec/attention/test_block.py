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
from spec.subject import need, ours_only

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
    block = need(subject, "TransformerBlock")(12, 3, drop_path=0.2, window_size=ws).train()
    x = torch.randn(3, 5, 4, 12, requires_grad=True)
    out = block(x)
    assert out.shape == x.shape, f"block output {tuple(out.shape)} != input {tuple(x.shape)}"
    assert torch.isfinite(out).all(), "block output has NaN/inf"
    out.square().mean().backward()
    dead = [n for n, p in block.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"parameters without gradient: {dead}"
    assert torch.isfinite(x.grad).all(), "input gradient has NaN/inf"


def test_block_drop_path_drops_whole_residual_branches_per_sample(subject):
    """drop_path = 1 (everything dropped) in training leaves the block the identity."""
    block = need(subject, "TransformerBlock")(8, 2, drop_path=1.0).train()
    x = torch.randn(4, 3, 3, 8)
    assert torch.equal(block(x), x), f"drop_path=1 block changed its input: max abs err {max_err(block(x), x):.3g}"


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


def test_block_keeps_window_size_and_rejects_negative_window(subject):
    ours_only(subject, "input validation")
    Block = need(subject, "TransformerBlock")
    assert Block(8, 2, window_size=4).window_size == 4
    with pytest.raises(ValueError, match="window_size"):
        Block(8, 2, window_size=-1)
