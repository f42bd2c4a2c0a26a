"""The course transforms on whole batches, on any device: one `affine_grid`/`grid_sample` per batch. Spec:
spec/data/test_batch_transforms.py.

`train_batch(images_uint8, generator)` draws, per image, the parameters the per-image course chain of
`impl.data.transforms.train_transform` draws (resize shorter side to 144 → horizontal flip p = ½ → per-channel colour
scale in [0.85, 1.15] → rotation ±15° → random resized crop to 128, area 0.25-1 and aspect 0.8-1.2 of the 144 canvas
with torchvision's 10 tries and centre-crop fallback → normalize) from the same distributions, then applies the whole
geometric chain as ONE affine map from output to input coordinates: the resize is free in normalized coordinates, the
flip, rotation and crop compose into a (B, 2, 3) matrix, and one bilinear `grid_sample` reads the uint8 source.
`val_batch` is resize 144 → centre crop 128 → normalize, the same way.

Differences from the per-image chain, stated: one bilinear interpolation instead of three (resize, rotate, crop), and
no antialiasing when the crop is shrunk to 128 (a crop is at most 144 px, so at most 1.125× down); the colour scale
is applied to the source and rounded like uint8, so the rotation's zero fill stays black as in the course. Randomness
comes from `generator` on the images' device (no host sync, no CPU round trip): seed it per epoch for a reproducible
run.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from impl.data.transforms import IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class AugmentConfig:
    """The course's training augmentation, parameter by parameter (defaults: `train_transform`)."""

    size: int = 128  # output side (px)
    resize: int = 144  # shorter side of the canvas the crop is taken from (px)
    flip_p: float = 0.5  # probability of a horizontal flip
    color_strength: float = 0.15  # each channel scaled by a factor in [1 - s, 1 + s]
    degrees: float = 15.0  # rotation angle uniform in [-degrees, degrees], counter-clockwise positive
    scale: tuple[float, float] = (0.25, 1.0)  # crop area as a fraction of the canvas
    ratio: tuple[float, float] = (0.8, 1.2)  # crop aspect ratio w / h
    tries: int = 10  # torchvision's rejection-sampling attempts before the centre-crop fallback

    def __post_init__(self) -> None:
        if self.size < 1 or self.resize < 1:
            raise ValueError(f"AugmentConfig needs size >= 1 and resize >= 1, got {self.size}, {self.resize}")
        if not 0 <= self.flip_p <= 1 or not 0 <= self.color_strength < 1 or self.degrees < 0:
            raise ValueError(
                f"AugmentConfig needs flip_p in [0, 1], color_strength in [0, 1), degrees >= 0; got {self.flip_p}, "
                f"{self.color_strength}, {self.degrees}"
            )
        if not (0 < self.scale[0] <= self.scale[1] and 0 < self.ratio[0] <= self.ratio[1]) or self.tries < 1:
            raise ValueError(f"AugmentConfig: bad scale {self.scale}, ratio {self.ratio} or tries {self.tries}")


@dataclass(frozen=True)
class AugmentParams:
    """Per-image parameters of one batch, all tensors of length B on the batch's device."""

    flip: Tensor  # bool
    color: Tensor  # (B, 3) channel factors
    angle: Tensor  # degrees, counter-clockwise
    top: Tensor  # crop box in canvas pixels (float, integral values)
    left: Tensor
    height: Tensor
    width: Tensor


def canvas_size(height: int, width: int, resize: int) -> tuple[int, int]:
    """The size after `Resize(resize)`: shorter side `resize`, aspect kept (torchvision's rounding down)."""
    if height <= width:
        return resize, int(resize * width / height)
    return int(resize * height / width), resize


def sample_params(
    n: int, canvas: tuple[int, int], cfg: AugmentConfig, generator: torch.Generator | None, device: torch.device
) -> AugmentParams:
    """Draw the parameters of `n` images, from the distributions of torchvision's per-image transforms."""
    H, W = canvas

    def u(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=generator, device=device)

    flip = u(n) < cfg.flip_p
    color = 1.0 + (u(n, 3) * 2.0 - 1.0) * cfg.color_strength
    angle = (u(n) * 2.0 - 1.0) * cfg.degrees
    # RandomResizedCrop: `tries` proposals of area and log-aspect; the first that fits wins, else the centre fallback
    area = H * W * (cfg.scale[0] + (cfg.scale[1] - cfg.scale[0]) * u(n, cfg.tries))
    lo, hi = math.log(cfg.ratio[0]), math.log(cfg.ratio[1])
    aspect = torch.exp(lo + (hi - lo) * u(n, cfg.tries))
    w, h = torch.sqrt(area * aspect).round(), torch.sqrt(area / aspect).round()  # round half to even, like round()
    fits = (w > 0) & (w <= W) & (h > 0) & (h <= H)  # (n, tries)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # index of the first fitting try (0 when none fits)
    any_fit = fits.any(dim=1)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    fw, fh = _fallback(H, W, cfg.ratio)
    w, h = torch.where(any_fit, w, fw), torch.where(any_fit, h, fh)
    top = torch.where(any_fit, (u(n) * (H - h + 1)).floor(), (H - h).div(2, rounding_mode="floor"))
    left = torch.where(any_fit, (u(n) * (W - w + 1)).floor(), (W - w).div(2, rounding_mode="floor"))
    return AugmentParams(flip, color, angle, top, left, h, w)


def _fallback(H: int, W: int, ratio: tuple[float, float]) -> tuple[float, float]:
    """torchvision's centre-crop fallback size (w, h) when no proposal fits."""
    in_ratio = W / H
    if in_ratio < min(ratio):
        return float(W), float(round(W / min(ratio)))
    if in_ratio > max(ratio):
        return float(round(H * max(ratio))), float(H)
    return float(W), float(H)


def affine_theta(params: AugmentParams, canvas: tuple[int, int]) -> Tensor:
    """(B, 2, 3) map from output to source normalized coordinates: crop box → undo rotation → undo flip.

    Normalized coordinates (align_corners=False) are the same in the source and in the resized canvas, so the resize
    costs nothing. Rotation is about the canvas centre, in pixel units (so it stays a rotation on non-square canvases).
    """
    H, W = canvas
    cx = (2 * params.left + params.width) / W - 1  # crop centre and half-extent, canvas normalized
    cy = (2 * params.top + params.height) / H - 1
    sx, sy = params.width / W, params.height / H
    rad = torch.deg2rad(params.angle)
    cos, sin = torch.cos(rad), torch.sin(rad)
    k = H / W  # pixel aspect between the normalized axes
    f = 1.0 - 2.0 * params.flip.to(cos.dtype)  # -1 flips x
    row_x = torch.stack([f * cos * sx, -f * sin * sy * k, f * (cos * cx - sin * cy * k)], dim=1)
    row_y = torch.stack([sin * sx / k, cos * sy, sin * cx / k + cos * cy], dim=1)
    return torch.stack([row_x, row_y], dim=1)  # (B, 2, 3)


@functools.lru_cache(maxsize=8)
def _mean_std(device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The normalization constants on `device`, made once per (device, dtype), not copied over for every batch."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=dtype).view(1, 3, 1, 1).to(device)
    return mean, torch.tensor(IMAGENET_STD, dtype=dtype).view(1, 3, 1, 1).to(device)


def _normalize(pixels: Tensor) -> Tensor:
    mean, std = _mean_std(pixels.device, pixels.dtype)
    return pixels.sub_(mean).div_(std)  # in place: `pixels` is grid_sample's fresh output, used only here


def _check(images: Tensor) -> None:
    if images.dim() != 4 or images.shape[1] != 3 or images.dtype != torch.uint8:
        raise ValueError(f"batch transforms need uint8 images (B, 3, H, W), got {images.dtype} {tuple(images.shape)}")


def apply(images: Tensor, params: AugmentParams, cfg: AugmentConfig) -> Tensor:
    """The course chain with these parameters: uint8 (B, 3, H, W) → float32 normalized (B, 3, size, size)."""
    _check(images)
    canvas = canvas_size(images.shape[2], images.shape[3], cfg.resize)
    # colour first, rounded and clipped like the course's uint8 RandomColor; the zero fill of the rotation stays 0
    src = (images.float() * params.color.view(-1, 3, 1, 1)).round_().clamp_(0, 255).div_(255)
    grid = F.affine_grid(affine_theta(params, canvas), [images.shape[0], 3, cfg.size, cfg.size], align_corners=False)
    return _normalize(F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False))


def train_batch(
    images: Tensor, generator: torch.Generator | None = None, cfg: AugmentConfig = AugmentConfig()
) -> Tensor:
    """Augment a uint8 batch like `train_transform` does each image; returns float32 normalized (B, 3, size, size)."""
    _check(images)
    canvas = canvas_size(images.shape[2], images.shape[3], cfg.resize)
    return apply(images, sample_params(images.shape[0], canvas, cfg, generator, images.device), cfg)


def val_batch(images: Tensor, size: int = 128, resize: int = 144) -> Tensor:
    """`val_transform` on a uint8 batch: resize shorter side to `resize`, centre crop `size`, normalize."""
    _check(images)
    if resize < size:
        raise ValueError(f"val_batch crops {size} px from a canvas resized to {resize}: need resize >= size")
    n, device = images.shape[0], images.device
    H, W = canvas_size(images.shape[2], images.shape[3], resize)
    side = torch.full((n,), float(size), device=device)
    params = AugmentParams(
        flip=torch.zeros(n, dtype=torch.bool, device=device),
        color=torch.ones(n, 3, device=device),
        angle=torch.zeros(n, device=device),
        top=(H - side) / 2,
        left=(W - side) / 2,
        height=side,
        width=side,
    )
    return apply(images, params, AugmentConfig(size=size, resize=resize))
