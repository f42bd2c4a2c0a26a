"""The batch transforms (impl/data/batch_transforms.py) against the per-image course transforms they stand in for.

Two oracles: torchvision's functional chain with the same parameters (resize → flip → rotate → resized crop) for the
geometry, and torchvision's own parameter samplers (`make_params` of the transforms `train_transform` uses) for the
distributions, compared by two-sample Kolmogorov-Smirnov distances. Everything runs on CPU; seeds are fixed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from impl.data import IMAGENET_MEAN, IMAGENET_STD, RandomColorScale, train_transform, val_transform
from impl.data.batch_transforms import (
    AugmentConfig,
    AugmentParams,
    apply,
    canvas_size,
    sample_params,
    train_batch,
    val_batch,
)

STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)
N = 4000  # samples per distribution
KS_LIMIT = 1.95 * math.sqrt(2 / N)  # two-sample KS critical distance at α = 0.001


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Hundreds of tiny per-image ops: one thread is faster, far faster on a shared, loaded CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def smooth_image(h: int = 128, w: int = 128) -> Tensor:
    """A low-frequency RGB uint8 image: interpolation differences stay small, geometry differences do not."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    rgb = torch.stack([xx, 0.1 + 0.7 * yy, 0.5 + 0.4 * torch.sin(6 * xx + 3 * yy)])
    return rgb.mul(255).round().to(torch.uint8)


def reference_chain(image: Tensor, flip: bool, angle: float, box: tuple[int, int, int, int]) -> Tensor:
    """torchvision's per-image ops with fixed parameters, in the course order (colour left out)."""
    x = TF.resize(image, [144], antialias=True)
    x = TF.horizontal_flip(x) if flip else x
    x = TF.rotate(x, angle, interpolation=v2.InterpolationMode.BILINEAR)
    x = TF.resized_crop(x, *box, [128, 128], antialias=True)
    return TF.normalize(TF.to_dtype(x, torch.float32, scale=True), IMAGENET_MEAN, IMAGENET_STD)


def params(flip: bool, angle: float, box: tuple[int, int, int, int], color=(1.0, 1.0, 1.0)) -> AugmentParams:
    top, left, h, w = (torch.tensor([float(v)]) for v in box)
    return AugmentParams(torch.tensor([flip]), torch.tensor([color]), torch.tensor([float(angle)]), top, left, h, w)


def ks_distance(a: Tensor, b: Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs."""
    a, b = a.double().sort().values, b.double().sort().values
    grid = torch.cat([a, b])
    cdf_a = torch.searchsorted(a, grid, right=True) / a.numel()
    cdf_b = torch.searchsorted(b, grid, right=True) / b.numel()
    return float((cdf_a - cdf_b).abs().max())


@pytest.mark.parametrize(
    ("flip", "angle", "box"),
    [
        (False, 0.0, (0, 0, 144, 144)),
        (True, 0.0, (10, 5, 100, 120)),
        (False, 12.0, (0, 0, 144, 144)),
        (True, -14.0, (20, 30, 90, 80)),
        (False, 7.0, (3, 9, 130, 110)),
    ],
)
def test_fixed_parameters_reproduce_the_per_image_chain(flip, angle, box):
    image = smooth_image()
    ours = apply(image[None], params(flip, angle, box), AugmentConfig())[0]
    ref = reference_chain(image, flip, angle, box)
    err = ((ours - ref) * STD).abs().mean().item()  # pixel units; a mirrored rotation or crop gives ~0.1
    assert err < 0.005, f"flip={flip} angle={angle} box={box}: mean pixel difference {err:.4f} from torchvision"


def test_a_non_square_image_keeps_its_aspect_through_rotation():
    image = smooth_image(96, 160)
    canvas = canvas_size(96, 160, 144)
    assert canvas == (144, 240), canvas
    ours = apply(image[None], params(True, 10.0, (8, 40, 120, 130)), AugmentConfig())[0]
    ref = reference_chain(image, True, 10.0, (8, 40, 120, 130))
    err = ((ours - ref) * STD).abs().mean().item()
    assert err < 0.005, f"non-square canvas {canvas}: mean pixel difference {err:.4f} from torchvision"


def test_colour_scale_is_rounded_and_clipped_like_the_course():
    image = smooth_image()
    color = (1.15, 0.85, 1.0)
    ours = apply(image[None], params(False, 0.0, (0, 0, 144, 144), color), AugmentConfig())[0]
    scaled = RandomColorScale(0.15).transform(image, {"factors": torch.tensor(color)})
    ref = reference_chain(scaled, False, 0.0, (0, 0, 144, 144))
    err = ((ours - ref) * STD).abs().mean().item()
    assert err < 0.002, f"colour {color}: mean pixel difference {err:.4f} from the course's RandomColor"


def test_val_batch_matches_val_transform():
    image = smooth_image()
    err = ((val_batch(image[None])[0] - val_transform()(image)) * STD).abs().max().item()
    assert err < 0.01, f"val_batch differs from val_transform by up to {err:.4f} pixel units"


def _torchvision_samples(n: int) -> dict[str, Tensor]:
    """Parameters drawn by the transforms `train_transform` is built of, on a 144 × 144 canvas."""
    torch.manual_seed(0)
    canvas = [torch.empty(3, 144, 144)]
    crop = v2.RandomResizedCrop(128, scale=(0.25, 1.0), ratio=(0.8, 1.2))
    rot, flip, color = v2.RandomRotation(15), v2.RandomHorizontalFlip(), RandomColorScale(0.15)
    boxes = torch.tensor([list(crop.make_params(canvas).values()) for _ in range(n)], dtype=torch.float64)
    return {
        "top": boxes[:, 0],
        "left": boxes[:, 1],
        "height": boxes[:, 2],
        "width": boxes[:, 3],
        "angle": torch.tensor([rot.make_params(canvas)["angle"] for _ in range(n)]),
        "flip": torch.tensor([not bool(torch.rand(1) >= flip.p) for _ in range(n)]),
        "color": torch.stack([color.make_params(canvas)["factors"] for _ in range(n)]),
    }


@pytest.fixture(scope="module")
def both() -> tuple[dict[str, Tensor], AugmentParams]:
    ours = sample_params(N, (144, 144), AugmentConfig(), torch.Generator().manual_seed(1), torch.device("cpu"))
    return _torchvision_samples(N), ours


@pytest.mark.parametrize("name", ["area", "aspect", "top", "left", "angle", "color"])
def test_parameter_distributions_match_torchvisions(both, name):
    tv, ours = both

    def derived(p) -> Tensor:
        get = p.get if isinstance(p, dict) else lambda k: getattr(p, k)
        if name == "area":
            return get("height") * get("width") / 144**2
        if name == "aspect":
            return get("width") / get("height")
        if name == "color":
            return get("color").flatten()
        return get(name)

    d = ks_distance(derived(tv), derived(ours))
    assert d < KS_LIMIT, f"{name}: KS distance {d:.4f} from torchvision's sampler (limit {KS_LIMIT:.4f})"


def test_flip_rate_and_mean_colour_match(both):
    tv, ours = both
    rates = (tv["flip"].double().mean().item(), ours.flip.double().mean().item())
    colours = (tv["color"].mean().item(), ours.color.mean().item())
    assert abs(rates[0] - rates[1]) < 0.04 and abs(rates[1] - 0.5) < 0.03, f"flip rates (tv, ours): {rates}"
    assert abs(colours[1] - 1.0) < 0.005 and abs(colours[0] - colours[1]) < 0.007, f"mean colour (tv, ours): {colours}"


def test_crop_boxes_fit_the_canvas_and_fall_back_to_the_centre():
    g = torch.Generator().manual_seed(2)
    p = sample_params(2000, (144, 144), AugmentConfig(), g, torch.device("cpu"))
    assert (p.top >= 0).all() and (p.left >= 0).all(), "negative crop offsets"
    assert (p.top + p.height <= 144).all() and (p.left + p.width <= 144).all(), "crop boxes leave the canvas"
    impossible = AugmentConfig(scale=(2.0, 3.0), ratio=(0.8, 1.2))  # never fits: torchvision's fallback (whole image)
    f = sample_params(50, (144, 144), impossible, g, torch.device("cpu"))
    assert (f.height == 144).all() and (f.width == 144).all() and (f.top == 0).all() and (f.left == 0).all()
    wide = sample_params(50, (144, 240), impossible, g, torch.device("cpu"))  # too wide: h = H, w = round(H · 1.2)
    assert (wide.height == 144).all() and (wide.width == 173).all() and (wide.left == 33).all(), wide


def test_mean_augmented_image_matches_the_per_image_pipeline(one_thread):
    """Image-level statistics over many draws: the average output (on an 8 × 8 grid) and the rotation-fill fraction."""
    image, n = smooth_image(), 300
    torch.manual_seed(0)
    per_image = torch.stack([train_transform()(image) for _ in range(n)]) * STD  # normalized -> pixel scale
    batch = train_batch(image.expand(n, -1, -1, -1), torch.Generator().manual_seed(3)) * STD
    coarse = [F.avg_pool2d(x.mean(0), 16) for x in (per_image, batch)]  # (3, 8, 8)
    mean_gap = (coarse[0] - coarse[1]).abs().max().item()
    black = [((x + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)).abs().amax(1) < 0.01).double().mean().item()
             for x in (per_image, batch)]  # fmt: skip
    assert mean_gap < 0.03, f"average augmented images differ by up to {mean_gap:.4f} on an 8 × 8 grid"
    assert abs(black[0] - black[1]) < 0.005, f"fraction of rotation fill (per image, batch): {black}"


def test_a_seeded_generator_reproduces_the_batch_and_another_seed_does_not():
    images = smooth_image().expand(4, -1, -1, -1)
    a = train_batch(images, torch.Generator().manual_seed(5))
    b = train_batch(images, torch.Generator().manual_seed(5))
    c = train_batch(images, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (4, 3, 128, 128) and a.dtype == torch.float32


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (torch.zeros(2, 3, 8, 8), "uint8 images"),
        (torch.zeros(2, 1, 8, 8, dtype=torch.uint8), r"\(B, 3, H, W\), got torch.uint8 \(2, 1, 8, 8\)"),
        (torch.zeros(3, 8, 8, dtype=torch.uint8), r"got torch.uint8 \(3, 8, 8\)"),
    ],
)
def test_bad_batches_are_named(images, match):
    with pytest.raises(ValueError, match=match):
        train_batch(images)


def test_bad_config_is_named():
    with pytest.raises(ValueError, match="flip_p"):
        AugmentConfig(flip_p=1.5)
    with pytest.raises(ValueError, match="scale"):
        AugmentConfig(scale=(0.5, 0.1))
