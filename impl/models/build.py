"""`build_model`: a network of the seed by name, with a `num_classes`-way head. Spec: spec/cli/test_cli.py."""

from __future__ import annotations

from torch import nn

MODELS = ("simplenet", "customnet", "customnet2", "resnet18", "vit")


def build_model(name: str, num_classes: int, *, custom_conv: bool = False, weights: str | None = None) -> nn.Module:
    """The network called `name` (one of MODELS) with a `num_classes`-way head; `custom_conv` (SimpleNet only) uses
    the course's CustomConv2d, `weights` (resnet18 only) names its initial weights."""
    import impl.models as models

    if name == "simplenet":
        if custom_conv:
            from impl.conv import CustomConv2d

            return models.SimpleNet(conv_op=CustomConv2d, num_classes=num_classes)
        return models.SimpleNet(num_classes=num_classes)
    if name == "customnet":
        return models.CustomNet(num_classes=num_classes)
    if name == "customnet2":
        return models.CustomNet2(num_classes=num_classes)
    if name == "resnet18":
        return models.resnet18(num_classes=num_classes, weights=weights)
    if name == "vit":
        return models.SimpleViT(num_classes=num_classes)
    raise UnknownModel(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")


class UnknownModel(ValueError):
    """`build_model` was asked for a name outside MODELS."""
