"""ViTDet window partition and windowed attention.

`window_partition` zero-pads the (B, H, W, C) grid at the bottom/right to multiples of ws and cuts (B·nW, ws, ws, C)
windows, batch-major, windows in row-major order; `window_unpartition` puts them back and crops.

Why windowed attention with padding differs from masked global attention
-------------------------------------------------------------------------
Without padding, attending within each window is exactly global attention with a block-diagonal mask (a query sees
the keys of its own window and nothing else). With padding it is not: the pad tokens are zero vectors that take part
in the window's attention as keys (and values). A zero token's key is the qkv bias b_k (0 without bias), so it gets
logit q·b_k·scale — finite, never −∞ — and takes a share of every border query's softmax, pulling the output towards
its value b_v (0 without bias). Masked global attention over the real H×W tokens has no such keys. What windowed
attention with padding *does* equal is masked attention over the zero-padded Hp×Wp grid, cropped back to H×W; both
statements are checked below, the second as the positive characterization of the first.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from spec.attention.reference import (
    SMALL,
    TINY,
    attention_reference,
    grids,
    max_err,
    same_window_mask,
    windowed,
    zero_pad,
)
from spec.subject import need

pytestmark = pytest.mark.course("readme §3.2.1 local window attention; custom_blocks.py window_partition (given)")


@st.composite
def grids_with_window(draw: st.DrawFn, divides: bool | None = None, **kw) -> dict[str, int]:
    """A grid and a window size; `divides` True/False forces ws to divide both sides / leave padding."""
    g = draw(grids(**kw))
    H, W = g["H"], g["W"]
    if divides is True:
        ws = draw(st.sampled_from([d for d in range(1, min(H, W) + 1) if H % d == 0 and W % d == 0]))
    elif divides is False:
        ws = draw(st.integers(2, max(H, W) + 2).filter(lambda d: H % d or W % d))
    else:
        ws = draw(st.integers(1, max(H, W) + 2))
    return {**g, "ws": ws}


@SMALL
@given(g=grids_with_window(max_side=11))
def test_window_unpartition_of_partition_is_identity(subject, g):
    torch.manual_seed(g["seed"])
    x = torch.randn(g["B"], g["H"], g["W"], g["dim"])
    windows, pad_hw = need(subject, "window_partition")(x, g["ws"])
    back = need(subject, "window_unpartition")(windows, g["ws"], pad_hw, (g["H"], g["W"]))
    assert back.shape == x.shape, f"round trip shape {tuple(back.shape)} != {tuple(x.shape)} ({g})"
    assert torch.equal(back, x), f"round trip changed values: max abs err {max_err(back, x):.3g} ({g})"


@SMALL
@given(g=grids_with_window(max_side=11))
def test_window_partition_cuts_zero_padded_grid_into_row_major_windows(subject, g):
    torch.manual_seed(g["seed"])
    B, H, W, C, ws = g["B"], g["H"], g["W"], g["dim"], g["ws"]
    x = torch.randn(B, H, W, C)
    windows, pad_hw = need(subject, "window_partition")(x, ws)
    Hp, Wp = -(-H // ws) * ws, -(-W // ws) * ws
    assert tuple(pad_hw) == (Hp, Wp), f"pad_hw {pad_hw} != {(Hp, Wp)} ({g})"
    rows, cols = Hp // ws, Wp // ws
    assert windows.shape == (B * rows * cols, ws, ws, C), f"windows {tuple(windows.shape)} ({g})"
    padded = zero_pad(x, ws)
    for b in range(B):
        for r in range(rows):
            for c in range(cols):
                expected = padded[b, r * ws : (r + 1) * ws, c * ws : (c + 1) * ws]
                got = windows[(b * rows + r) * cols + c]
                assert torch.equal(got, expected), f"window (b={b}, row={r}, col={c}) differs ({g})"


@SMALL
@given(g=grids_with_window(divides=True, max_side=8))
def test_windowed_attention_without_padding_equals_block_diagonal_masked_attention(subject, g):
    torch.manual_seed(g["seed"])
    attn = need(subject, "Attention")(g["dim"], num_heads=g["heads"])
    x = torch.randn(g["B"], g["H"], g["W"], g["dim"])
    expected = attention_reference(x, attn, mask=same_window_mask(g["H"], g["W"], g["ws"]))
    err = max_err(windowed(subject, attn, x, g["ws"]), expected)
    assert err <= 1e-5, f"windowed vs block-diagonal masked global attention: max abs err {err:.3g} ({g})"


@SMALL
@given(g=grids_with_window(divides=False, max_side=8))
def test_windowed_attention_with_padding_equals_masked_attention_over_zero_padded_grid(subject, g):
    torch.manual_seed(g["seed"])
    attn = need(subject, "Attention")(g["dim"], num_heads=g["heads"])
    x = torch.randn(g["B"], g["H"], g["W"], g["dim"])
    padded = zero_pad(x, g["ws"])
    Hp, Wp = padded.shape[1:3]
    expected = attention_reference(padded, attn, mask=same_window_mask(Hp, Wp, g["ws"]))[:, : g["H"], : g["W"]]
    err = max_err(windowed(subject, attn, x, g["ws"]), expected)
    assert err <= 1e-5, f"windowed vs masked attention on the zero-padded grid: max abs err {err:.3g} ({g})"


@pytest.mark.parametrize("qkv_bias", [True, False], ids=["bias", "no-bias"])
def test_windowed_attention_with_padding_differs_from_masked_global_attention_only_in_padded_windows(subject, qkv_bias):
    """Pad tokens are keys: windows that contain padding differ from masked attention over the real tokens; the
    windows without padding agree. (H, W) = (6, 5), ws = 4: the window at rows 0-3, cols 0-3 is the only full one."""
    H, W, ws, C = 6, 5, 4, 8
    attn = need(subject, "Attention")(C, num_heads=2, qkv_bias=qkv_bias)
    if qkv_bias:
        with torch.no_grad():
            attn.qkv.bias.normal_()  # the course init leaves biases random; make sure pad keys are not ~0
    x = torch.randn(2, H, W, C)
    got = windowed(subject, attn, x, ws)
    masked = attention_reference(x, attn, mask=same_window_mask(H, W, ws))
    full = max_err(got[:, :ws, :ws], masked[:, :ws, :ws])
    border = (got - masked).abs()[:, :, ws:].amax().item()  # columns 4.. sit in windows with padding
    assert full <= 1e-5, f"the unpadded window differs from masked global attention: max abs err {full:.3g}"
    assert border > 1e-3, f"padded windows equal masked global attention (max diff {border:.3g}): pads were not keys"


@TINY
@given(g=grids(max_side=6))
def test_block_with_window_equal_to_square_grid_equals_global_block_exactly(subject, g):
    side = g["H"]
    torch.manual_seed(g["seed"])
    Block = need(subject, "TransformerBlock")
    windowed_block = Block(g["dim"], g["heads"], window_size=side).eval()
    global_block = Block(g["dim"], g["heads"], window_size=0).eval()
    global_block.load_state_dict(windowed_block.state_dict())
    x = torch.randn(g["B"], side, side, g["dim"])
    a, b = windowed_block(x), global_block(x)
    assert max_err(a, b) <= 1e-6, f"window = H = W = {side} vs global block: max abs err {max_err(a, b):.3g} ({g})"


@TINY
@given(g=grids_with_window(max_side=7))
def test_windowed_block_output_token_has_zero_gradient_from_other_windows(subject, g):
    torch.manual_seed(g["seed"])
    H, W, ws = g["H"], g["W"], g["ws"]
    dim = 4 * g["heads"]  # LayerNorm over 1 or 2 channels is constant or a sign: it would hide the mixing below
    block = need(subject, "TransformerBlock")(dim, g["heads"], window_size=ws).eval()
    x = torch.randn(1, H, W, dim, requires_grad=True)
    i, j = H - 1, 0  # bottom-left token: its window is padded whenever ws does not divide H
    (grad,) = torch.autograd.grad(block(x)[0, i, j].sum(), x)
    reach = grad[0].abs().sum(-1)  # (H, W): how much each input token moves the chosen output token
    same = (torch.arange(H)[:, None] // ws == i // ws) & (torch.arange(W)[None, :] // ws == j // ws)
    leak = reach[~same].max().item() if (~same).any() else 0.0
    assert leak == 0.0, f"output ({i},{j}) has gradient {leak:.3g} from tokens outside its window ({g})"
    others = same.clone()
    others[i, j] = False
    if others.any():  # the test is not vacuous: attention does mix the tokens of one window
        assert reach[others].max().item() > 0, f"output ({i},{j}) ignores the other tokens of its window ({g})"


@SMALL
@given(g=grids())
def test_window_size_one_makes_attention_return_proj_of_v(subject, g):
    """One token per window: softmax over a single key is 1, so each token's output is proj(v(token))."""
    torch.manual_seed(g["seed"])
    attn = need(subject, "Attention")(g["dim"], num_heads=g["heads"])
    x = torch.randn(g["B"], g["H"], g["W"], g["dim"])
    C = g["dim"]
    v = x @ attn.qkv.weight[2 * C :].T + attn.qkv.bias[2 * C :]
    expected = attn.proj(v)
    err = max_err(windowed(subject, attn, x, 1), expected)
    assert err <= 1e-5, f"window size 1 vs proj(v): max abs err {err:.3g} ({g})"


@pytest.mark.extension("input validation")
def test_window_partition_rejects_non_positive_window_size(subject):
    with pytest.raises(ValueError, match="window_size"):
        need(subject, "window_partition")(torch.zeros(1, 4, 4, 2), 0)


@pytest.mark.extension("input validation")
def test_window_unpartition_rejects_non_positive_window_size(subject):
    with pytest.raises(ValueError, match="window_size"):
        need(subject, "window_unpartition")(torch.zeros(4, 2, 2, 8), 0, (4, 4), (4, 4))
