"""The seed's networks (§3.1.2 CNNs, ResNet18 fine-tuning, §3.2 SimpleViT). Spec: spec/models/."""

from impl.models.build import MODELS, UnknownModel, build_model
from impl.models.cnn import CustomNet, CustomNet2, SimpleNet
from impl.models.resnet import resnet18
from impl.models.vit import SimpleViT

__all__ = [
    "MODELS",
    "CustomNet",
    "CustomNet2",
    "SimpleNet",
    "SimpleViT",
    "UnknownModel",
    "build_model",
    "resnet18",
]
