"""One training step of each network of the seed, on fixed random data, importable by a worker subprocess.

Optimizers as the course sets them up (impl.train.make_optimizer's choice): SGD with momentum for the CNNs and
ResNet18, AdamW for the ViT. SimpleNet runs twice here, with nn.Conv2d and with CustomConv2d (the "fast"
algorithm); `make_simplenet_step` builds it with any of the conv ops of the conv benchmark.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from impl.conv import CustomConv2d
from impl.models import CustomNet, CustomNet2, SimpleNet, SimpleViT, resnet18

CONV_OPS: dict[str, Callable[..., nn.Module]] = {
    "native": nn.Conv2d,
    "unfold": partial(CustomConv2d, algorithm="unfold"),
    "fast": CustomConv2d,  # CustomConv2d's default algorithm
}
BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "SimpleNet (native conv)": lambda: SimpleNet(CONV_OPS["native"], 100),
    "SimpleNet (custom conv)": lambda: SimpleNet(CONV_OPS["fast"], 100),
    "CustomNet": lambda: CustomNet(num_classes=100),
    "CustomNet2": lambda: CustomNet2(num_classes=100),
    "ResNet18": lambda: resnet18(num_classes=100),
    "SimpleViT": lambda: SimpleViT(),
}
MODELS = tuple(BUILDERS)


def make_train_step(
    name: str, device: str | torch.device, batch: int = 32, size: int = 128, channels_last: bool = False
) -> Callable[[], None]:
    """A closure running one forward/backward/optimizer step of model `name` on a fixed random batch."""
    if name not in BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose from {MODELS}")
    return _train_step(BUILDERS[name], name == "SimpleViT", device, batch, size, channels_last)


def make_simplenet_step(
    conv: str, device: str | torch.device, batch: int = 32, size: int = 128, channels_last: bool = False
) -> Callable[[], None]:
    """One SGD step of SimpleNet(CONV_OPS[conv]), NCHW (the course's layout) or channels_last (model and input)."""
    if conv not in CONV_OPS:
        raise ValueError(f"unknown conv op {conv!r}; choose from {tuple(CONV_OPS)}")
    return _train_step(lambda: SimpleNet(CONV_OPS[conv], 100), False, device, batch, size, channels_last)


def _train_step(
    build: Callable[[], nn.Module], adamw: bool, device: str | torch.device, batch: int, size: int, channels_last: bool
) -> Callable[[], None]:
    torch.manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = build().to(device, memory_format=layout).train()
    if adamw:
        opt: torch.optim.Optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=layout)
    y = torch.randint(0, 100, (batch,), device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step
