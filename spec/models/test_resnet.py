"""Spec of the ResNet18 builder: a new head, weights only from local files, never a download."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.models import resnet18 as tv_resnet18

from impl.conv import CustomConv2d
from impl.models import resnet18


def test_head_is_replaced_and_backbone_loaded_from_a_local_state_dict(tmp_path: Path) -> None:
    source = tv_resnet18(weights=None, num_classes=1000)
    path = tmp_path / "imagenet_like.pth"
    torch.save(source.state_dict(), path)
    model = resnet18(num_classes=100, weights=path)
    assert model.fc.out_features == 100
    for name, tensor in source.state_dict().items():
        if not name.startswith("fc."):
            assert torch.equal(model.state_dict()[name], tensor), f"{name} was not loaded"


def test_a_course_checkpoint_with_module_prefix_loads(tmp_path: Path) -> None:
    source = resnet18(num_classes=100)
    path = tmp_path / "checkpoint.pth.tar"
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    torch.save({"epoch": 3, "model_arch": "resnet18", "state_dict": state, "best_acc1": 1.0}, path)
    model = resnet18(num_classes=100, weights=path)
    assert torch.equal(model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)


def test_imagenet_weights_absent_raise_a_clear_error_without_downloading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", _no_download)
    with pytest.raises(FileNotFoundError, match=r"never downloads.*resnet18-f37072fd\.pth"):
        resnet18(weights="imagenet")


def test_imagenet_weights_are_read_from_the_local_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    source = tv_resnet18(weights=None)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(source.state_dict(), tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    model = resnet18(num_classes=10, weights="imagenet")
    assert torch.equal(model.conv1.weight, source.conv1.weight)


def test_not_a_resnet_state_dict_is_rejected_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="other.pth is not a ResNet18"):
        resnet18(weights=path)


def test_custom_conv_resnet_equals_native() -> None:
    torch.manual_seed(0)
    native = resnet18(num_classes=10).eval()
    custom = resnet18(num_classes=10, conv_op=CustomConv2d).eval()
    custom.load_state_dict(native.state_dict())
    assert not any(isinstance(m, torch.nn.Conv2d) for m in custom.modules())
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(custom(x), native(x), rtol=1e-4, atol=1e-4)


def _no_download(*args: object, **kwargs: object) -> None:
    raise AssertionError("resnet18 tried to download weights")
