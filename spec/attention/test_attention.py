"""Attention (course interface): softmax(Q·Kᵀ·scale)·V per head, heads merged, then `proj`, on (B, H, W, C) grids.

Oracles: a float64 per-head re-derivation of the formula (spec/attention/reference.py), `nn.MultiheadAttention` with
copied weights (the course's qkv layout, [q | k | v] with heads contiguous, is exactly MHA's in_proj layout), and our
own two paths against each other (manual vs fused, `fused_attn`; skipped for an implementation without that switch).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from torch import nn

from spec import diagnose
from spec.attention.reference import SMALL, TINY, attention_reference, flag_of, grids, max_err
from spec.subject import need

pytestmark = pytest.mark.course("readme §3.2.1 eq. (3) and the starter's Attention skeleton")


def _paths(attn: nn.Module) -> list[bool | None]:
    """The paths to check: the default (None) and, where the switch exists, manual and fused."""
    return [None, False, True] if hasattr(attn, "fused_attn") else [None]


@SMALL
@given(g=grids())
def test_attention_matches_float64_reference_formula(subject, g):
    torch.manual_seed(g["seed"])
    attn = need(subject, "Attention")(g["dim"], num_heads=g["heads"])
    x = torch.randn(g["B"], g["H"], g["W"], g["dim"])
    ref = attention_reference(x, attn)
    variants = diagnose.attention_variants(x, attn)
    for fused in _paths(attn):
        if fused is not None:
            attn.fused_attn = fused
        out32 = attn(x)
        err32 = max_err(out32, ref) if out32.shape == ref.shape else float("inf")
        assert err32 <= 1e-5, diagnose.explain(
            "float32 vs float64 reference", out32, ref, f"fused={fused}, {g}", variants, 1e-4
        )
        out64 = attn.double()(x.double())
        attn.float()
        assert max_err(out64, ref) <= 1e-10, diagnose.explain(
            "float64 vs reference", out64, ref, f"fused={fused}, {g}", variants
        )


@SMALL
@given(g=grids())
def test_attention_matches_nn_multihead_attention_with_copied_weights(subject, g):
    torch.manual_seed(g["seed"])
    attn = need(subject, "Attention")(g["dim"], num_heads=g["heads"])
    mha = nn.MultiheadAttention(g["dim"], g["heads"], batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(attn.qkv.weight)
        mha.in_proj_bias.copy_(attn.qkv.bias)
        mha.out_proj.weight.copy_(attn.proj.weight)
        mha.out_proj.bias.copy_(attn.proj.bias)
    x = torch.randn(g["B"], g["H"], g["W"], g["dim"])
    tokens = x.reshape(g["B"], g["H"] * g["W"], g["dim"])
    expected, _ = mha(tokens, tokens, tokens, need_weights=False)
    got = attn(x)
    err = max_err(got.reshape_as(expected), expected)
    assert err <= 1e-5, diagnose.explain(
        "vs nn.MultiheadAttention", got, expected.reshape_as(got), g, diagnose.attention_variants(x, attn), 1e-4
    )


@pytest.mark.extension("miniplaces-lab's fused_attn switch")
@SMALL
@given(g=grids(max_side=12, max_head_dim=16))
def test_manual_path_equals_fused_path_in_float32(subject, g):
    torch.manual_seed(g["seed"])
    attn = need(subject, "Attention")(g["dim"], num_heads=g["heads"])
    flag_of(attn)
    x = torch.randn(g["B"], g["H"], g["W"], g["dim"], requires_grad=True)
    results = {}
    for fused in (False, True):
        attn.fused_attn = fused
        out = attn(x)
        (gx,) = torch.autograd.grad(out.square().sum(), x)
        results[fused] = (out, gx)
    err_out = max_err(results[False][0], results[True][0])
    err_grad = max_err(results[False][1], results[True][1]) / max(1.0, results[False][1].abs().max().item())
    assert err_out <= 1e-5, f"manual vs fused output: max abs err {err_out:.3g} ({g})"
    assert err_grad <= 1e-5, f"manual vs fused input gradient: max rel err {err_grad:.3g} ({g})"


@pytest.mark.extension("empty batches (N = 0): main.py never makes one; the starter's own qkv reshape needs B > 0")
@pytest.mark.parametrize("fused", [False, True], ids=["manual", "fused"])
def test_attention_maps_an_empty_batch_to_an_empty_batch(subject, fused):
    attn = need(subject, "Attention")(8, num_heads=2)
    if hasattr(attn, "fused_attn"):
        attn.fused_attn = fused
    assert attn(torch.randn(0, 3, 4, 8)).shape == (0, 3, 4, 8)


@pytest.mark.parametrize(
    "fused",
    [None, pytest.param(False, marks=pytest.mark.extension), pytest.param(True, marks=pytest.mark.extension)],
    ids=["default", "manual", "fused"],
)
def test_attention_gradients_pass_gradcheck_in_float64(subject, fused):
    attn = need(subject, "Attention")(4, num_heads=2).double()
    if fused is not None:
        flag_of(attn)
        attn.fused_attn = fused
    x = torch.randn(2, 3, 2, 4, dtype=torch.float64, requires_grad=True)
    params = tuple(attn.parameters())

    def f(x, *ps):
        return torch.func.functional_call(attn, dict(zip([n for n, _ in attn.named_parameters()], ps, strict=True)), x)

    assert torch.autograd.gradcheck(f, (x, *params), fast_mode=True), f"gradcheck failed (fused={fused})"


@TINY
@given(g=grids(max_side=6))
def test_attention_is_equivariant_to_token_permutation(subject, g):
    """No positional information inside attention: permuting the tokens permutes the output the same way."""
    torch.manual_seed(g["seed"])
    attn = need(subject, "Attention")(g["dim"], num_heads=g["heads"])
    x = torch.randn(g["B"], g["H"], g["W"], g["dim"])
    perm = torch.randperm(g["H"] * g["W"])

    def shuffle(t):
        return t.reshape(g["B"], -1, g["dim"])[:, perm].reshape(t.shape)

    err = max_err(attn(shuffle(x)), shuffle(attn(x)))
    assert err <= 1e-5, f"attn(P·x) vs P·attn(x): max abs err {err:.3g} ({g})"


@pytest.mark.parametrize(("dim", "heads"), [(192, 4), (12, 3), (8, 8), (5, 1)])
def test_attention_has_course_attributes_and_scale_is_inverse_sqrt_head_dim(subject, dim, heads):
    attn = need(subject, "Attention")(dim, num_heads=heads)
    assert attn.num_heads == heads
    assert attn.qkv.weight.shape == (3 * dim, dim), f"qkv weight {tuple(attn.qkv.weight.shape)}"
    assert attn.proj.weight.shape == (dim, dim), f"proj weight {tuple(attn.proj.weight.shape)}"
    assert attn.scale == pytest.approx((dim // heads) ** -0.5), f"scale {attn.scale} for head_dim {dim // heads}"


def test_attention_without_qkv_bias_has_no_qkv_bias(subject):
    attn = need(subject, "Attention")(8, num_heads=2, qkv_bias=False)
    assert attn.qkv.bias is None
    x = torch.randn(1, 2, 3, 8)
    err = max_err(attn(x), attention_reference(x, attn))
    assert err <= 1e-5, f"without qkv bias vs reference: max abs err {err:.3g}"


@pytest.mark.extension("input validation")
def test_dim_not_divisible_by_heads_raises_value_error_naming_both(subject):
    with pytest.raises(ValueError, match=r"10.*4|4.*10"):
        need(subject, "Attention")(10, num_heads=4)


@pytest.mark.extension("input validation")
def test_attention_rejects_wrong_channel_count_naming_the_shape(subject):
    attn = need(subject, "Attention")(8, num_heads=2)
    with pytest.raises(ValueError, match=r"\(1, 2, 3, 6\)"):
        attn(torch.randn(1, 2, 3, 6))
