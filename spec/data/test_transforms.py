"""Course transforms: output shape, dtype and value range; val is deterministic and equals an independent
resize -> centre crop -> normalize; train follows the course recipe and its randomness follows torch's seed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.transforms import v2

from impl.data import IMAGENET_MEAN, IMAGENET_STD, RandomColorScale, denormalize, train_transform, val_transform

MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)
LOW, HIGH = (0 - MEAN) / STD, (1 - MEAN) / STD  # what normalize makes of pixel values 0 and 1


def random_image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)


def assert_normalized_range(out: torch.Tensor, what: str) -> None:
    below = (LOW - 1e-5 - out).clamp(min=0).max().item()
    above = (out - HIGH - 1e-5).clamp(min=0).max().item()
    assert below == 0 and above == 0, f"{what}: values outside normalized [0, 1] by {max(below, above):.3g}"


def test_imagenet_statistics_are_the_course_constants() -> None:
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406) and IMAGENET_STD == (0.229, 0.224, 0.225)


@settings(max_examples=8)
@given(h=st.integers(16, 200), w=st.integers(16, 200), seed=st.integers(0, 2**16))
def test_both_transforms_map_any_uint8_image_to_normalized_float_128(h: int, w: int, seed: int) -> None:
    image = random_image(h, w, seed)
    for name, transform in (("train", train_transform()), ("val", val_transform())):
        out = transform(image)
        assert out.shape == (3, 128, 128) and out.dtype == torch.float32, f"{name} on {h}x{w}: {out.shape} {out.dtype}"
        assert torch.isfinite(out).all()
        assert_normalized_range(out, f"{name} on {h}x{w}")


@pytest.mark.parametrize(("h", "w"), [(128, 128), (100, 180), (300, 150)])
def test_val_equals_resize_shorter_side_144_centre_crop_128_normalize(h: int, w: int) -> None:
    image = random_image(h, w, seed=h + w)
    scale = 144 / min(h, w)
    size = (144, round(w * scale)) if h <= w else (round(h * scale), 144)
    resized = F.interpolate(image[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    top, left = round((size[0] - 128) / 2), round((size[1] - 128) / 2)
    crop = resized[:, top : top + 128, left : left + 128].round().clamp(0, 255) / 255  # (3, 128, 128)
    expected = (crop - MEAN) / STD
    out = val_transform()(image)
    err = (out - expected).abs().max().item()
    # torchvision resizes uint8 in integer arithmetic: allow 2 grey levels, in normalized units
    assert err <= 2 / 255 / min(IMAGENET_STD), f"val on {h}x{w}: max abs err {err:.4f} against the oracle"


def test_val_is_deterministic_whatever_the_seed() -> None:
    image = random_image(150, 170, seed=1)
    outs = []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        outs.append(val_transform()(image))
    assert all(torch.equal(outs[0], o) for o in outs[1:])


def test_denormalize_inverts_the_normalization() -> None:
    image = random_image(128, 128, seed=4)
    out = denormalize(val_transform()(image))
    expected = v2.Resize(144, antialias=True)(image)[:, 8:136, 8:136].float() / 255
    err = (out - expected).abs().max().item()
    assert err < 1e-5, f"max abs err {err}"


def test_train_is_random_but_follows_the_torch_seed() -> None:
    image = random_image(128, 128, seed=2)
    transform = train_transform()
    torch.manual_seed(5)
    a = transform(image)
    b = transform(image)
    torch.manual_seed(5)
    c = transform(image)
    assert not torch.equal(a, b), "two draws of the train augmentation gave the same output"
    assert torch.equal(a, c), "the same torch seed gave different train augmentations"


def test_train_is_the_course_recipe_in_the_course_order() -> None:
    steps = train_transform().transforms
    kinds = [type(t) for t in steps]
    assert kinds == [
        v2.Resize,
        v2.RandomHorizontalFlip,
        RandomColorScale,
        v2.RandomRotation,
        v2.RandomResizedCrop,
        v2.ToDtype,
        v2.Normalize,
    ], kinds
    resize, flip, colour, rotate, crop, _, normalize = steps
    assert list(resize.size) == [144] and flip.p == 0.5 and colour.strength == 0.15
    assert list(rotate.degrees) == [-15.0, 15.0]
    assert tuple(crop.size) == (128, 128) and tuple(crop.scale) == (0.25, 1.0) and tuple(crop.ratio) == (0.8, 1.2)
    assert tuple(normalize.mean) == IMAGENET_MEAN and tuple(normalize.std) == IMAGENET_STD


def test_colour_scale_multiplies_each_channel_by_its_own_factor_in_range() -> None:
    torch.manual_seed(0)
    image = torch.full((3, 4, 4), 100, dtype=torch.uint8)
    factors = torch.stack([RandomColorScale(0.15)(image)[:, 0, 0].float() / 100 for _ in range(200)])  # (200, 3)
    assert factors.min() >= 0.85 - 0.005 and factors.max() <= 1.15 + 0.005, (factors.min(), factors.max())
    assert factors.min() < 0.87 and factors.max() > 1.13, "factors do not cover [0.85, 1.15]"
    assert (factors[:, 0] != factors[:, 1]).float().mean() > 0.9, "channels share one factor"


def test_colour_scale_clips_to_the_valid_range() -> None:
    torch.manual_seed(0)
    for _ in range(20):
        bright = RandomColorScale(0.15)(torch.full((3, 2, 2), 250, dtype=torch.uint8))
        assert bright.dtype == torch.uint8 and bright.max() <= 255 and bright.min() >= 212
        unit = RandomColorScale(0.15)(torch.full((3, 2, 2), 0.95))
        assert unit.dtype == torch.float32 and unit.max() <= 1.0 and unit.min() >= 0.95 * 0.85 - 1e-6


def test_colour_scale_rejects_a_strength_outside_0_1() -> None:
    with pytest.raises(ValueError, match="strength"):
        RandomColorScale(1.5)
