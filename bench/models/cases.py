"""One training step of each network of the seed, on fixed random data, importable by a memory-probe subprocess.

Optimizers as the course sets them up (impl.train.make_optimizer's choice): SGD with momentum for the CNNs and
ResNet18, AdamW for the ViT. SimpleNet runs twice, with nn.Conv2d and with CustomConv2d (the "fast" algorithm).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from impl.conv import CustomConv2d
from impl.models import CustomNet, CustomNet2, SimpleNet, SimpleViT, resnet18

BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "SimpleNet (native conv)": lambda: SimpleNet(nn.Conv2d, 100),
    "SimpleNet (custom conv)": lambda: SimpleNet(CustomConv2d, 100),
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
    torch.manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = BUILDERS[name]().to(device, memory_format=layout).train()
    if name == "SimpleViT":
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
