"""Figures of §3.3: the seed's 4-panel attack figure and the course's TensorBoard grids (`-v`). Spec: spec/attack/.

`attack_figure` draws, for one example: the original, the adversarial image, the perturbation amplified ×20 around
mid-grey, and a heatmap of its per-pixel size (L∞ over channels, in pixel levels of 255), titled with the true, clean
and adversarial class names. `save_attack_figures` writes such PNGs into a run folder. `log_image_grids` writes the
course's TensorBoard tags: `Image/Image` (clean batch) or `Image/Org_Image` and `Image/Adv_Image` (attack).
Figures are drawn with matplotlib's object API (no pyplot state, no display needed).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch
from matplotlib.figure import Figure
from torch import Tensor

from impl.data import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

AMPLIFY = 20  # the seed's perturbation amplification


class ImageWriter(Protocol):
    """What `log_image_grids` needs of a `torch.utils.tensorboard.SummaryWriter`."""

    def add_image(self, tag: str, img_tensor: Tensor, global_step: int | None = None) -> None: ...


def to_pixels(images: Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> Tensor:
    """Normalized (B, C, H, W) or (C, H, W) images back to [0, 1] pixels (clamped), on the CPU, float32."""
    if images.dim() not in (3, 4) or images.shape[-3] != len(mean):
        raise ValueError(
            f"images must be (B, {len(mean)}, H, W) or ({len(mean)}, H, W) to match mean/std, got {tuple(images.shape)}"
        )
    shape = (-1, 1, 1)
    m = torch.tensor(mean).view(shape)
    s = torch.tensor(std).view(shape)
    return (images.detach().float().cpu() * s + m).clamp(0, 1)


def image_grid(
    images: Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, nrow: int = 8
) -> Tensor:
    """A (3, H', W') grid in [0, 1] of a normalized batch, as the course's `vis_grid` shows it."""
    from torchvision.utils import make_grid

    return make_grid(to_pixels(images, mean, std), nrow=nrow, padding=2)


def log_image_grids(
    writer: ImageWriter,
    step: int,
    images: Tensor,
    adversarial: Tensor | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    max_images: int = 64,
) -> list[str]:
    """Write the course's grids: `Image/Image` (clean batch), or `Image/Org_Image` and `Image/Adv_Image` (attack)."""
    images = images[:max_images]
    if adversarial is None:
        writer.add_image("Image/Image", image_grid(images, mean, std), step)
        return ["Image/Image"]
    if adversarial.shape[1:] != images.shape[1:]:
        raise ValueError(f"adversarial images {tuple(adversarial.shape)} do not match originals {tuple(images.shape)}")
    writer.add_image("Image/Org_Image", image_grid(images, mean, std), step)
    writer.add_image("Image/Adv_Image", image_grid(adversarial[:max_images], mean, std), step)
    return ["Image/Org_Image", "Image/Adv_Image"]


def attack_figure(
    original: Tensor,
    adversarial: Tensor,
    true_name: str,
    clean_name: str,
    adv_name: str,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    amplify: float = AMPLIFY,
) -> Figure:
    """The seed's 4 panels for one normalized (C, H, W) example: original, adversarial, δ×amplify, |δ| heatmap."""
    if original.shape != adversarial.shape or original.dim() != 3:
        raise ValueError(
            f"attack_figure wants one (C, H, W) example and its adversarial twin, got {tuple(original.shape)} and "
            f"{tuple(adversarial.shape)}"
        )
    x, x_adv = to_pixels(original, mean, std), to_pixels(adversarial, mean, std)
    delta = x_adv - x  # pixel units
    amplified = (0.5 + amplify * delta).clamp(0, 1)
    heat = delta.abs().amax(dim=0) * 255  # (H, W) in pixel levels
    fig = Figure(figsize=(12, 3.8), layout="constrained")
    axes = fig.subplots(1, 4)
    panels = [
        (x, f"original\ntrue: {true_name}\npredicted: {clean_name}"),
        (x_adv, f"adversarial\n\npredicted: {adv_name}"),
        (amplified, f"perturbation ×{amplify:g}\n\n(mid-grey = 0)"),
    ]
    for ax, (img, title) in zip(axes, panels, strict=False):
        ax.imshow(img.permute(1, 2, 0).numpy())
        ax.set_title(title, fontsize=9)
    im = axes[3].imshow(heat.numpy(), cmap="inferno", vmin=0)
    axes[3].set_title(f"|δ| per pixel (max over RGB)\n\nmax {heat.max():.1f}/255", fontsize=9)
    fig.colorbar(im, ax=axes[3], fraction=0.046, pad=0.04, label="pixel levels")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def save_attack_figures(
    out_dir: Path,
    images: Tensor,
    adversarial: Tensor,
    labels: Tensor,
    clean_pred: Tensor,
    adv_pred: Tensor,
    class_names: Sequence[str] | None = None,
    limit: int = 4,
    prefix: str = "attack",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> list[Path]:
    """Write `<out_dir>/<prefix>_<i>.png` for the first `limit` examples (fooled ones first); returns the paths."""
    n = images.shape[0]
    if not (adversarial.shape == images.shape and labels.shape == clean_pred.shape == adv_pred.shape == (n,)):
        raise ValueError(
            f"save_attack_figures: images {tuple(images.shape)}, adversarial {tuple(adversarial.shape)}, labels "
            f"{tuple(labels.shape)}, clean_pred {tuple(clean_pred.shape)}, adv_pred {tuple(adv_pred.shape)} disagree"
        )

    def name(k: int) -> str:
        return class_names[k] if class_names is not None and 0 <= k < len(class_names) else str(k)

    fooled = (clean_pred == labels) & (adv_pred != labels)
    order = sorted(range(n), key=lambda i: not bool(fooled[i]))[:limit]  # stable: fooled first, then the rest
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for rank, i in enumerate(order):
        fig = attack_figure(
            images[i], adversarial[i], name(int(labels[i])), name(int(clean_pred[i])), name(int(adv_pred[i])), mean, std
        )
        path = out_dir / f"{prefix}_{rank}.png"
        fig.savefig(path, dpi=110)
        paths.append(path)
    log.info("wrote %d attack figures to %s", len(paths), out_dir)
    return paths
