"""The seed's networks (§3.1.2 CNNs, ResNet18 fine-tuning, §3.2 SimpleViT). Spec: spec/models/."""

from impl.models.cnn import CustomNet, CustomNet2, SimpleNet
from impl.models.resnet import resnet18
from impl.models.vit import SimpleViT

__all__ = ["CustomNet", "CustomNet2", "SimpleNet", "SimpleViT", "resnet18"]
