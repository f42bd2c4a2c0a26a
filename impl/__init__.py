"""miniplaces-lab: the reference implementation of the CS 771 MiniPlaces assignment.

The course interface (`CustomConv2DFunction`, `CustomConv2d`, `SimpleNet`, `Attention`, `TransformerBlock`,
`SimpleViT`, `PGDAttack`, ...) is importable from here, so `impl` can stand where a student's `student_code.py`
stands. Names load lazily: `import impl` does not pull in torchvision, matplotlib or the data pipeline.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    # §3.1.1 convolution
    "CustomConv2DFunction": "impl.conv",
    "CustomConv2d": "impl.conv",
    "custom_conv2d": "impl.conv",
    # §3.1.2 CNNs and §3.2 ViT
    "SimpleNet": "impl.models",
    "CustomNet": "impl.models",
    "CustomNet2": "impl.models",
    "resnet18": "impl.models",
    "SimpleViT": "impl.models",
    # §3.2.1 attention
    "Attention": "impl.attention",
    "TransformerBlock": "impl.attention",
    "window_partition": "impl.attention",
    "window_unpartition": "impl.attention",
    "DropPath": "impl.attention",
    "MLP": "impl.attention",
    "PatchEmbed": "impl.attention",
    # §3.3 attacks
    "PGDAttack": "impl.attack",
    "pgd": "impl.attack",
    "fgsm": "impl.attack",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'impl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
