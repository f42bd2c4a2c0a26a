"""The seed's CNNs (§3.1.2): SimpleNet exactly as the course ships it, and the two skip-connection designs of
"Design Your Own Convolutional Network". Every network takes `conv_op`, so each trains with `CustomConv2d` too.
Spec: spec/models/test_cnn.py.

Reading of the seed where it is vague (documented choices):
- a skip block is conv(k, stride s) → ReLU → conv(k) plus the input (through a 1×1 conv with stride s when the
  channels or the stride change), then ReLU; no BatchNorm, like SimpleNet;
- CustomNet's first block carries SimpleNet's stem stride 2, and every max-pool is SimpleNet's 3/2 with padding 1,
  so all three networks see the same feature-map sizes (64², 32², 16² at 128×128 input).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from impl.conv import CustomConv2d

ConvOp = Callable[..., nn.Module]


def init_conv_weights(model: nn.Module) -> None:
    """The course's initialisation: Kaiming-normal (fan_out, ReLU) for every convolution, zero conv bias kept as is."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d | CustomConv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


class SimpleNet(nn.Module):
    """The course network: 365,028 parameters at 100 classes; in-place ReLUs, no BatchNorm."""

    def __init__(self, conv_op: ConvOp = nn.Conv2d, num_classes: int = 100) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_op(3, 64, kernel_size=7, stride=2, padding=3),  # (N, 64, H/2, W/2)
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),  # (N, 64, H/4, W/4)
            conv_op(64, 64, kernel_size=1, stride=1, padding=0),
            nn.ReLU(inplace=True),
            conv_op(64, 64, kernel_size=3, stride=1, padding=1),
            nn.ReLU(inplace=True),
            conv_op(64, 256, kernel_size=1, stride=1, padding=0),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),  # (N, 256, H/8, W/8)
            conv_op(256, 128, kernel_size=1, stride=1, padding=0),
            nn.ReLU(inplace=True),
            conv_op(128, 128, kernel_size=3, stride=1, padding=1),
            nn.ReLU(inplace=True),
            conv_op(128, 512, kernel_size=1, stride=1, padding=0),
            nn.ReLU(inplace=True),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)
        init_conv_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))  # (N, 512, 1, 1)
        return self.fc(x.flatten(1))  # (N, num_classes)


class SkipBlock(nn.Module):
    """conv(k, stride) → ReLU → conv(k), plus the (projected) input, then ReLU."""

    def __init__(self, conv_op: ConvOp, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = conv_op(in_ch, out_ch, kernel_size=kernel_size, stride=stride, padding=pad)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = conv_op(out_ch, out_ch, kernel_size=kernel_size, stride=1, padding=pad)
        needs_proj = in_ch != out_ch or stride != 1
        self.shortcut = conv_op(in_ch, out_ch, kernel_size=1, stride=stride, padding=0) if needs_proj else None
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        return self.relu2(self.conv2(self.relu1(self.conv1(x))) + identity)


def _pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(kernel_size=3, stride=2, padding=1)


class _Head(nn.Module):
    """Shared tail: global average pool and a linear classifier."""

    def __init__(self, features: nn.Sequential, num_classes: int) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)
        init_conv_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))  # (N, 512, 1, 1)
        return self.fc(x.flatten(1))


class CustomNet(_Head):
    """skip(3→64, 7×7, /2) → maxpool → skip(64→256, 3×3) → maxpool → skip(256→512, 3×3) → avgpool → fc."""

    def __init__(self, conv_op: ConvOp = nn.Conv2d, num_classes: int = 100) -> None:
        super().__init__(
            nn.Sequential(
                SkipBlock(conv_op, 3, 64, 7, stride=2),  # (N, 64, H/2, W/2)
                _pool(),  # (N, 64, H/4, W/4)
                SkipBlock(conv_op, 64, 256, 3),
                _pool(),  # (N, 256, H/8, W/8)
                SkipBlock(conv_op, 256, 512, 3),
            ),
            num_classes,
        )


class CustomNet2(_Head):
    """conv 7×7/2 (3→64) → ReLU → skip(64→64, 3×3) → maxpool → skip(64→256) → maxpool → skip(256→512) → fc."""

    def __init__(self, conv_op: ConvOp = nn.Conv2d, num_classes: int = 100) -> None:
        super().__init__(
            nn.Sequential(
                conv_op(3, 64, kernel_size=7, stride=2, padding=3),  # (N, 64, H/2, W/2)
                nn.ReLU(inplace=True),
                SkipBlock(conv_op, 64, 64, 3),
                _pool(),  # (N, 64, H/4, W/4)
                SkipBlock(conv_op, 64, 256, 3),
                _pool(),  # (N, 256, H/8, W/8)
                SkipBlock(conv_op, 256, 512, 3),
            ),
            num_classes,
        )
