"""SimpleViT (course interface, seed §3.2.2): patch embedding → absolute position embedding → `depth` Pre-LN blocks
(block i windowed when i ∈ window_block_indexes, drop-path rates linear 0 → drop_path_rate) → LayerNorm → mean over
tokens → Linear head.

Parameter count of the default ViT (img 128, patch 16, C = 192, depth 4, MLP hidden 4C = 768, 100 classes):
    patch embedding   3·16·16·C + C              =   147,648
    position          (128/16)²·C                =    12,288
    per block         2·2C (two LayerNorms) + (C·3C + 3C) + (C² + C) + (C·4C + 4C) + (4C·C + C)
                                                 =   444,864   (× 4 = 1,779,456)
    final LayerNorm   2C                         =       384
    head              C·100 + 100                =    19,300
    total                                        = 1,959,076
The test recomputes it from this formula rather than trusting the constant.
"""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from torch import nn

from spec import diagnose
from spec.attention.reference import max_err, set_flag
from spec.subject import load_subject, need

pytestmark = pytest.mark.course("readme §3.2.2 and the starter's SimpleViT skeleton; main.py --use-vit")


def vit_parameter_count(img=128, patch=16, cin=3, dim=192, depth=4, mlp_ratio=4.0, classes=100, abs_pos=True) -> int:
    hidden = int(dim * mlp_ratio)
    norms = 2 * (2 * dim)
    attention = (dim * 3 * dim + 3 * dim) + (dim * dim + dim)  # qkv, proj
    mlp = (dim * hidden + hidden) + (hidden * dim + dim)  # fc1, fc2
    block = norms + attention + mlp
    embed = cin * patch * patch * dim + dim
    pos = (img // patch) ** 2 * dim if abs_pos else 0
    return embed + pos + depth * block + 2 * dim + dim * classes + classes


def small_vit(subject, **kw):
    """A ViT on 32x32 images with a 4x4 token grid; window 3 leaves padding."""
    args = dict(img_size=32, patch_size=8, embed_dim=24, depth=3, num_heads=2, window_size=3, window_block_indexes=(1,))
    return need(subject, "SimpleViT")(**{**args, **kw})


def blocks_of(subject, model: nn.Module) -> list[nn.Module]:
    Block = need(subject, "TransformerBlock")
    return [m for m in model.modules() if isinstance(m, Block)]


@pytest.mark.extension("miniplaces-lab's ViT design: the readme leaves the head, final norm and sizes open")
def test_default_vit_parameter_count_matches_the_architecture_formula(subject):
    model = need(subject, "SimpleViT")()
    count = sum(p.numel() for p in model.parameters())
    expected = vit_parameter_count()
    assert expected == 1_959_076, "the documented count and the formula disagree"
    assert count == expected, f"default SimpleViT has {count:,} parameters, the architecture has {expected:,}"


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"use_abs_pos": False, "depth": 2, "window_block_indexes": (1,)},
        {"embed_dim": 16, "num_heads": 4, "mlp_ratio": 2.0, "num_classes": 7},
    ],
    ids=["small", "no-abs-pos", "narrow"],
)
@pytest.mark.extension("miniplaces-lab's ViT design: the readme leaves the head, final norm and sizes open")
def test_vit_parameter_count_matches_formula_for_other_configs(subject, kw):
    model = small_vit(subject, **kw)
    count = sum(p.numel() for p in model.parameters())
    expected = vit_parameter_count(
        img=32,
        patch=8,
        dim=kw.get("embed_dim", 24),
        depth=kw.get("depth", 3),
        mlp_ratio=kw.get("mlp_ratio", 4.0),
        classes=kw.get("num_classes", 100),
        abs_pos=kw.get("use_abs_pos", True),
    )
    assert count == expected, f"SimpleViT({kw}) has {count:,} parameters, formula {expected:,}"


@pytest.mark.advised("ViTDet/timm's order (norm per token, then pool, then head); the readme leaves the head open")
def test_vit_forward_composes_its_parts_in_the_documented_order(subject):
    """patch embedding + absolute positions → blocks in order → LayerNorm → mean over tokens → head, rebuilt from
    the model's own submodules (eval mode, so drop-path is off)."""
    torch.manual_seed(0)
    model = need(subject, "SimpleViT")(img_size=32, patch_size=8, embed_dim=16, depth=3, num_heads=2, num_classes=5)
    missing = [a for a in ("patch_embed", "pos_embed", "blocks", "norm", "head") if not hasattr(model, a)]
    if missing:
        pytest.skip(f"SimpleViT of the implementation under test has no {missing} (course attribute names)")
    with torch.no_grad():
        model.pos_embed.normal_()  # non-zero, so leaving it out is visible
        for p in model.blocks.parameters():  # far from the near-identity init, so block order matters
            p.normal_(0, 0.3)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    tokens = model.patch_embed(x) + model.pos_embed  # (B, H', W', C)
    for block in model.blocks:
        tokens = block(tokens)
    want = model.head(model.norm(tokens).mean(dim=(1, 2)))
    got = model(x)
    mistakes = {
        "norm after pooling (LayerNorm of the mean token)": lambda: model.head(model.norm(tokens.mean(dim=(1, 2)))),
        "no final norm": lambda: model.head(tokens.mean(dim=(1, 2))),
        "blocks in reverse order": lambda: model.head(model.norm(_blocks(model, reversed)(x)).mean(dim=(1, 2))),
        "position embedding not added": lambda: model.head(
            model.norm(_blocks(model, list, pos=False)(x)).mean(dim=(1, 2))
        ),
    }
    with torch.no_grad():
        assert max_err(got, want) < 1e-5, diagnose.explain(
            "SimpleViT.forward vs its parts in order", got, want, "eval", mistakes, 1e-5
        )


def _blocks(model, order, pos: bool = True):
    def run(x):
        tokens = model.patch_embed(x) + (model.pos_embed if pos else 0)
        for block in order(model.blocks):
            tokens = block(tokens)
        return tokens

    return run


def test_default_vit_maps_images_to_finite_logits_in_train_and_eval(subject):
    batch = 2
    model = need(subject, "SimpleViT")()
    x = torch.randn(batch, 3, 128, 128)
    for mode in (True, False):
        out = model.train(mode)(x)
        assert out.shape == (batch, 100), f"logits {tuple(out.shape)} (train={mode})"
        assert torch.isfinite(out).all(), f"logits have NaN/inf (train={mode})"


@pytest.mark.course("the starter's patch_embed and pos_embed (given) feed the blocks; readme §3.2.2")
def test_vit_gradients_reach_the_embeddings_and_every_block(subject):
    """Catches a position embedding that is created but never added, and blocks that are built but skipped."""
    model = small_vit(subject, drop_path_rate=0.0).train()
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    given = [(n, p) for n, p in model.named_parameters() if n.startswith(("patch_embed.", "pos_embed"))]
    given += [(f"block {i}: {n}", p) for i, b in enumerate(blocks_of(subject, model)) for n, p in b.named_parameters()]
    dead = [n for n, p in given if p.grad is None or not p.grad.abs().sum() > 0]
    assert given and not dead, f"no gradient reaches {dead[:4]} (of {len(given)} embedding and block parameters)"


@pytest.mark.advised("every parameter of the ViT is used: an unused one is dead weight the optimizer decays")
def test_vit_gradients_reach_every_parameter(subject):
    model = small_vit(subject, drop_path_rate=0.0).train()
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"parameters without gradient: {dead}"


@pytest.mark.parametrize(("depth", "rate"), [(4, 0.1), (5, 0.3), (1, 0.2)])
def test_vit_drop_path_rates_are_the_linear_schedule(subject, depth, rate):
    model = small_vit(subject, depth=depth, drop_path_rate=rate, window_block_indexes=())
    blocks = blocks_of(subject, model)
    assert len(blocks) == depth, f"{len(blocks)} blocks for depth={depth}"
    got = [float(getattr(b.drop_path, "drop_prob", 0.0)) for b in blocks]  # nn.Identity stands for rate 0
    expected = torch.linspace(0, rate, depth).tolist()
    assert got == pytest.approx(expected, abs=1e-7), f"drop-path rates {got}, expected {expected}"


def test_vit_windows_exactly_the_listed_blocks(subject):
    model = small_vit(subject, depth=4, window_size=3, window_block_indexes=(0, 2))
    sizes = [b.window_size for b in blocks_of(subject, model)]
    assert sizes == [3, 0, 3, 0], f"block window sizes {sizes}, expected [3, 0, 3, 0]"


@pytest.mark.advised(
    "the starter's init (trunc-normal .02 position embedding, _init_weights); a (1, N, C) layout is fine"
)
def test_vit_initialization_follows_the_course(subject):
    model = need(subject, "SimpleViT")()
    pos = model.pos_embed
    assert pos.numel() == 8 * 8 * 192, f"pos_embed shape {tuple(pos.shape)}: not one 192-vector per 8x8 token"
    assert abs(pos.std().item() - 0.02) < 0.003, f"pos_embed std {pos.std().item():.4f}, expected trunc-normal .02"
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            std = m.weight.std().item()
            assert abs(std - 0.02) < 0.004, f"{name}.weight std {std:.4f}, expected .02"
            assert m.bias is None or not m.bias.any(), f"{name}.bias is not zero"
        elif isinstance(m, nn.LayerNorm):
            assert (m.weight == 1).all() and not m.bias.any(), f"{name} is not initialised to 1/0"


@pytest.mark.extension("miniplaces-lab's fused_attn switch")
def test_vit_manual_and_fused_attention_give_the_same_logits(subject):
    model = small_vit(subject).eval()
    if not any(hasattr(m, "fused_attn") for m in model.modules()):
        pytest.skip("the ViT's attention has no `fused_attn` switch")
    x = torch.randn(2, 3, 32, 32)
    set_flag(model, False)
    manual = model(x)
    set_flag(model, True)
    err = max_err(manual, model(x))
    assert err <= 1e-5, f"ViT logits, manual vs fused attention: max abs err {err:.3g}"


@pytest.mark.extension("input validation")
def test_vit_rejects_img_size_not_divisible_by_patch_size(subject):
    with pytest.raises(ValueError, match=r"130.*16|16.*130"):
        need(subject, "SimpleViT")(img_size=130, patch_size=16)


@pytest.mark.extension("input validation")
def test_vit_rejects_images_of_another_size_naming_the_shape(subject):
    model = small_vit(subject)
    with pytest.raises(ValueError, match=r"\(2, 3, 64, 64\)"):
        model(torch.randn(2, 3, 64, 64))


@pytest.mark.extension("other image sizes: main.py only feeds 128x128")
def test_vit_without_absolute_positions_accepts_other_image_sizes(subject):
    model = small_vit(subject, use_abs_pos=False).eval()
    out = model(torch.randn(2, 3, 48, 40))  # a 6x5 token grid; the windowed block pads it to 6x6
    assert out.shape == (2, 100), f"logits {tuple(out.shape)} for 48x40 images"
    assert torch.isfinite(out).all(), "logits have NaN/inf"


COURSE_LIKE = '''
"""A course-style student_code.py: manual attention only, ViTDet windows, nothing else of §3.2."""
import torch
import torch.nn.functional as F
from torch import nn

class Attention(nn.Module):
    def __init__(self, dim, num_heads=8, qkv_bias=True):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, H, W, _ = x.shape
        qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, B * self.num_heads, H * W, -1).unbind(0)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        x = (attn @ v).view(B, self.num_heads, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, -1)
        return self.proj(x)

def window_partition(x, window_size):
    B, H, W, C = x.shape
    pad_h = (window_size - H % window_size) % window_size
    pad_w = (window_size - W % window_size) % window_size
    x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    Hp, Wp = H + pad_h, W + pad_w
    x = x.view(B, Hp // window_size, window_size, Wp // window_size, window_size, C)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window_size, window_size, C), (Hp, Wp)

def window_unpartition(windows, window_size, pad_hw, hw):
    (Hp, Wp), (H, W) = pad_hw, hw
    B = windows.shape[0] // (Hp * Wp // window_size // window_size)
    x = windows.view(B, Hp // window_size, Wp // window_size, window_size, window_size, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(B, Hp, Wp, -1)[:, :H, :W, :].contiguous()
'''


def test_spec_runs_against_a_course_style_student_file_and_skips_what_it_lacks(tmp_path):
    """The same test functions, handed a course-style student file instead of `impl`: what it defines is checked and
    passes, what it lacks (our fused switch, SimpleViT) skips by name."""
    from spec.attention import test_attention, test_window

    student_file = tmp_path / "student_code.py"
    student_file.write_text(textwrap.dedent(COURSE_LIKE))
    student = load_subject(str(student_file))
    try:
        test_attention.test_attention_matches_nn_multihead_attention_with_copied_weights(student)
        test_window.test_windowed_attention_with_padding_equals_masked_attention_over_zero_padded_grid(student)
        with pytest.raises(pytest.skip.Exception, match="no `fused_attn` attribute"):
            test_attention.test_manual_path_equals_fused_path_in_float32(student)
        with pytest.raises(pytest.skip.Exception, match="does not define `SimpleViT`"):
            test_default_vit_parameter_count_matches_the_architecture_formula(student)
    finally:
        sys.modules.pop(student.__name__, None)
        sys.path.remove(str(tmp_path))
