"""One SimpleNet SGD step with a chosen conv op and layout, importable by a memory-probe subprocess."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from impl.conv import CustomConv2d
from impl.models import SimpleNet

CONV_OPS: dict[str, Callable[..., nn.Module]] = {
    "native": nn.Conv2d,
    "unfold": partial(CustomConv2d, algorithm="unfold"),
    "fast": CustomConv2d,  # CustomConv2d's default algorithm
}


def make_step(
    candidate: str, device: str, batch: int = 32, size: int = 128, channels_last: bool = False
) -> Callable[[], None]:
    """A closure running one forward/backward/SGD step of SimpleNet(CONV_OPS[candidate]) on fixed random data,
    NCHW (the course's layout) or channels_last (model and input)."""
    torch.manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = SimpleNet(CONV_OPS[candidate], 100).to(device, memory_format=layout)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=layout)
    y = torch.randint(0, 100, (batch,), device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    return step
