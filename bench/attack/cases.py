"""SimpleNet attack and adversarial-training workloads, importable by a memory-probe subprocess."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from impl.adversarial import AdvTrainConfig, make_perturb
from impl.attack import PGDAttack, fgsm, pgd
from impl.data import IMAGENET_MEAN, IMAGENET_STD
from impl.models import SimpleNet

BATCH = 8  # small batch: the course evaluates attacks per validation batch; CPU here
SIZE = 128  # the course's image size


def batch(device: str | torch.device, n: int = BATCH, size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Valid normalized images (uniform pixels) and labels, fixed by seed."""
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(n, 3, size, size, generator=g)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((pixels - mean) / std).to(device), torch.randint(0, 100, (n,), generator=g).to(device)


def model(device: str | torch.device) -> nn.Module:
    torch.manual_seed(0)
    return SimpleNet(num_classes=100).to(device).eval()


def eval_step(
    candidate: str, device: str | torch.device, steps: int = 10, n: int = BATCH, size: int = SIZE
) -> Callable[[], object]:
    """One validation batch: clean forward, or attack + forward (pixel PGD, course PGD, FGSM)."""
    net, (x, y) = model(device), batch(device, n, size)
    course = PGDAttack(nn.CrossEntropyLoss(), num_steps=steps)
    attacks: dict[str, Callable[[], torch.Tensor]] = {
        "clean": lambda: x,
        "pgd": lambda: pgd(net, x, y, eps=8 / 255, alpha=2 / 255, steps=steps),
        "course-pgd": lambda: course.perturb(net, x),
        "fgsm": lambda: fgsm(net, x, y),
    }
    attack = attacks[candidate]

    def step() -> object:
        adv = attack()
        with torch.no_grad():
            return net(adv).argmax(1)

    return step


def train_step(candidate: str, device: str | torch.device, n: int = BATCH, size: int = SIZE) -> Callable[[], None]:
    """One SGD step on a natural, PGD-3 (the seed: ε 8/255, α 0.01) or FGSM-RS batch."""
    net, (x, y) = model(device).train(), batch(device, n, size)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    perturbs = {"natural": None, "pgd-3": AdvTrainConfig("pgd", steps=3), "fgsm-rs": AdvTrainConfig("fgsm-rs")}
    cfg = perturbs[candidate]
    perturb = make_perturb(cfg) if cfg is not None else None

    def step() -> None:
        images = perturb(net, x, y) if perturb is not None else x
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(images), y).backward()
        opt.step()

    return step
