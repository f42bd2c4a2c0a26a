"""ResNet18 fine-tuning (seed §3.1.2): torchvision's ResNet18 with a new head, weights from a local file only.
Spec: spec/models/test_resnet.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet18_Weights
from torchvision.models import resnet18 as tv_resnet18

from impl.models.cnn import ConvOp

log = logging.getLogger(__name__)

IMAGENET_FILE = Path(ResNet18_Weights.IMAGENET1K_V1.url).name  # resnet18-f37072fd.pth


def imagenet_weights_path() -> Path:
    """Where torchvision keeps the IMAGENET1K_V1 file (TORCH_HOME/hub/checkpoints), the only place we read it from."""
    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_FILE


def resnet18(num_classes: int = 100, weights: str | Path | None = None, conv_op: ConvOp = nn.Conv2d) -> nn.Module:
    """ResNet18 with a `num_classes` head.

    weights: None (random init), "imagenet" (torchvision's IMAGENET1K_V1, read from the local torch hub cache; never
    downloaded here), or a path to a state dict / course checkpoint. An ImageNet (1000-class) head is dropped.
    conv_op: every nn.Conv2d is rebuilt with it (same shapes, weights copied), e.g. CustomConv2d.
    """
    model = tv_resnet18(weights=None, num_classes=1000)
    if weights is not None:
        _load_backbone(model, _resolve(weights))
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    if conv_op is not nn.Conv2d:
        _swap_convs(model, conv_op)
    return model


def _resolve(weights: str | Path) -> Path:
    if str(weights) == "imagenet":
        path = imagenet_weights_path()
        if not path.is_file():
            raise FileNotFoundError(
                f"ImageNet ResNet18 weights not found at {path}. This project never downloads at run time: fetch "
                f"{ResNet18_Weights.IMAGENET1K_V1.url} on a machine with network access and place it there "
                f"(or set TORCH_HOME), or pass the file's path as weights."
            )
        return path
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"ResNet18 weights file {path} does not exist")
    return path


def _load_backbone(model: nn.Module, path: Path) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's text runs to a page (and ends in a URL); the file is the culprit either way
        raise ValueError(
            f"{path} is not a weights file torch.load(weights_only=True) can read ({type(exc).__name__})"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state:  # a course checkpoint
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict or a checkpoint with 'state_dict', got {type(state).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # the head is always new
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ValueError(f"{path} is not a ResNet18 state dict: missing {missing[:5]}, unexpected {unexpected[:5]}")
    log.info("loaded ResNet18 backbone from %s", path)


def _swap_convs(module: nn.Module, conv_op: ConvOp) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.Conv2d):
            new = conv_op(
                child.in_channels,
                child.out_channels,
                kernel_size=child.kernel_size,
                stride=child.stride,
                padding=child.padding,
                bias=child.bias is not None,
            )
            new.load_state_dict(child.state_dict())
            setattr(module, name, new)
        else:
            _swap_convs(child, conv_op)
