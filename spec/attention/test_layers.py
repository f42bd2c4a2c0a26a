"""DropPath (stochastic depth), MLP and PatchEmbed: the pieces a transformer block and the ViT are built from.

DropPath's statistics: with N samples of ones and drop probability p, the output mean has standard deviation
sqrt(p / ((1 - p)·N)); at N = 20000, p = 0.3 that is 0.0046, so a 6σ bound (0.028) holds for a correct layer with
probability > 1 - 1e-8, while the usual bugs move the mean by >= 0.3 (no rescaling: 0.7; rescaling by 1/p: 2.33;
dropping with probability keep: 0.43 = 0.3/0.7) or the drop fraction by >= 0.4.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from spec.attention.reference import SMALL, max_err
from spec.subject import need

pytestmark = pytest.mark.course("custom_blocks.py (given code): DropPath, MLP, PatchEmbed as the course uses them")


@pytest.mark.parametrize("p", [0.0, 0.5])
def test_drop_path_is_identity_in_eval(subject, p):
    layer = need(subject, "DropPath")(p).eval()
    x = torch.randn(16, 3, 2, 4)
    assert torch.equal(layer(x), x), f"DropPath({p}) changed its input in eval mode"


def test_drop_path_is_identity_at_zero_probability_in_training(subject):
    layer = need(subject, "DropPath")(0.0).train()
    x = torch.randn(16, 3, 2, 4)
    assert torch.equal(layer(x), x), "DropPath(0.0) changed its input in training mode"


@SMALL
@given(p=st.sampled_from([0.1, 0.25, 0.5, 0.9]), seed=st.integers(0, 2**31 - 1))
def test_drop_path_zeroes_or_scales_each_whole_sample_by_inverse_keep(subject, p, seed):
    torch.manual_seed(seed)
    layer = need(subject, "DropPath")(p).train()
    x = torch.randn(64, 3, 4, 5) + 3.0  # no zeros in the input, so a zero output means dropped
    out = layer(x)
    scaled = x / (1 - p)
    for n in range(x.shape[0]):
        dropped = bool((out[n] == 0).all())
        kept = torch.allclose(out[n], scaled[n], rtol=1e-6, atol=0)
        assert dropped or kept, (
            f"sample {n} is neither all zero nor x/keep (p={p}): max abs err vs x/keep {max_err(out[n], scaled[n]):.3g}"
        )


def test_drop_path_preserves_the_mean_and_drops_fraction_p(subject):
    p, n = 0.3, 20_000
    layer = need(subject, "DropPath")(p).train()
    out = layer(torch.ones(n, 2, 1, 3))
    mean = out.mean().item()
    dropped = (out.reshape(n, -1) == 0).all(dim=1).double().mean().item()
    bound = 6 * (p / ((1 - p) * n)) ** 0.5
    assert abs(mean - 1.0) <= bound, f"mean {mean:.4f} of DropPath({p}) on ones, expected 1 ± {bound:.4f}"
    assert abs(dropped - p) <= 6 * (p * (1 - p) / n) ** 0.5, f"dropped fraction {dropped:.4f}, expected {p}"


def test_drop_path_gradient_follows_the_same_per_sample_mask(subject):
    layer = need(subject, "DropPath")(0.5).train()
    x = torch.randn(32, 2, 2, 3, requires_grad=True)
    out = layer(x)
    (g,) = torch.autograd.grad(out.sum(), x)
    kept = (out != 0).reshape(32, -1).all(dim=1)
    expected = kept.float()[:, None, None, None].expand_as(x) * 2.0
    assert torch.allclose(g, expected), f"grad is not mask/keep: max abs err {max_err(g, expected):.3g}"


@pytest.mark.parametrize(("cin", "hidden", "act"), [(8, 32, nn.GELU), (5, 7, nn.ReLU)])
def test_mlp_is_linear_act_linear_per_token(subject, cin, hidden, act):
    mlp = need(subject, "MLP")(in_features=cin, hidden_features=hidden, act_layer=act)
    linears = [m for m in mlp.modules() if isinstance(m, nn.Linear)]
    assert [tuple(m.weight.shape) for m in linears] == [(hidden, cin), (cin, hidden)], f"linear layers {linears}"
    x = torch.randn(2, 3, 4, cin)
    expected = linears[1](act()(linears[0](x)))
    err = max_err(mlp(x), expected)
    assert err <= 1e-6, f"MLP vs fc2(act(fc1(x))): max abs err {err:.3g}"


@pytest.mark.parametrize(("size", "patch", "cin", "dim"), [(32, 8, 3, 16), (20, 4, 1, 6), (128, 16, 3, 192)])
def test_patch_embed_is_strided_conv_to_channels_last_grid(subject, size, patch, cin, dim):
    embed = need(subject, "PatchEmbed")(kernel_size=(patch, patch), stride=(patch, patch), in_chans=cin, embed_dim=dim)
    (conv,) = [m for m in embed.modules() if isinstance(m, nn.Conv2d)]
    x = torch.randn(2, cin, size, size)
    out = embed(x)
    assert out.shape == (2, size // patch, size // patch, dim), f"PatchEmbed output {tuple(out.shape)}"
    expected = F.conv2d(x, conv.weight, conv.bias, stride=patch).permute(0, 2, 3, 1)
    err = max_err(out, expected)
    assert err <= 1e-5, f"PatchEmbed vs F.conv2d: max abs err {err:.3g}"
