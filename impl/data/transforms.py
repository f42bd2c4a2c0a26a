"""The course's train and val transforms rebuilt with torchvision.transforms.v2. Spec: spec/data/.

Both map an RGB uint8 image (3, H, W) to a float32 ImageNet-normalized (3, 128, 128) tensor. Train follows the course
order: resize shorter side to 144 -> horizontal flip -> per-channel colour scale in [0.85, 1.15] -> rotation ±15° ->
random resized crop to 128 (area 0.25-1, aspect 0.8-1.2) -> float -> normalize. Val is resize 144 -> centre crop 128 ->
normalize and is deterministic (the course samples a random interpolation in val; this does not). Randomness comes from
torch's generator, so `torch.manual_seed` and DataLoader worker seeding control it.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


class RandomColorScale(v2.Transform):
    """Multiply each colour channel by its own factor drawn from [1 - strength, 1 + strength] (the course's
    RandomColor), clipping to the valid range: [0, 255] for uint8 (rounded), [0, 1] for float images."""

    def __init__(self, strength: float = 0.15) -> None:
        super().__init__()
        if not 0.0 <= strength < 1.0:
            raise ValueError(f"strength must be in [0, 1), got {strength}")
        self.strength = strength

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        factors = 1.0 + (torch.rand(3) * 2.0 - 1.0) * self.strength  # (3,) one per channel
        return {"factors": factors}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, torch.Tensor) or isinstance(inpt, tv_tensors.BoundingBoxes | tv_tensors.Mask):
            return inpt
        if inpt.shape[-3] != 3:
            raise ValueError(f"RandomColorScale needs 3 channels at dim -3, got shape {tuple(inpt.shape)}")
        factors = params["factors"].view(3, 1, 1)
        if inpt.dtype == torch.uint8:
            scaled = (inpt.float() * factors).round_().clamp_(0, 255).to(torch.uint8)
        else:
            scaled = (inpt * factors.to(inpt.dtype)).clamp_(0.0, 1.0)
        return tv_tensors.wrap(scaled, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else scaled


def train_transform(size: int = 128, resize: int = 144) -> v2.Compose:
    """The course's training augmentation: uint8 (3, H, W) -> float32 normalized (3, size, size)."""
    return v2.Compose(
        [
            v2.Resize(resize, antialias=True),
            v2.RandomHorizontalFlip(),
            RandomColorScale(0.15),
            v2.RandomRotation(15, interpolation=v2.InterpolationMode.BILINEAR),
            v2.RandomResizedCrop(size, scale=(0.25, 1.0), ratio=(0.8, 1.2), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def val_transform(size: int = 128, resize: int = 144) -> v2.Compose:
    """The course's evaluation transform, deterministic: uint8 (3, H, W) -> float32 normalized (3, size, size)."""
    return v2.Compose(
        [
            v2.Resize(resize, interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
            v2.CenterCrop(size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Undo the ImageNet normalization: (..., 3, H, W) normalized -> pixel values in [0, 1] (not clipped)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return x * std + mean
