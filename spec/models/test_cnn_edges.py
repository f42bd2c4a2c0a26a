"""SimpleNet's layer sequence, which the course spec (convs and pools only) leaves open, written to kill mutmut's
survivors (reports/verification.md). It tests miniplaces-lab's `impl` directly (not a student's file)."""

from __future__ import annotations

from torch import nn

from impl.models import SimpleNet

# The starter's features: every conv is followed by an in-place ReLU; two max-pools.
LAYERS = ["conv", "relu", "pool", "conv", "relu", "conv", "relu", "conv", "relu", "pool"] + ["conv", "relu"] * 3


def test_simplenet_features_are_the_starters_sequence_with_in_place_relus() -> None:
    kinds = {nn.Conv2d: "conv", nn.ReLU: "relu", nn.MaxPool2d: "pool"}
    features = list(SimpleNet(nn.Conv2d, 10).features)
    got = [kinds.get(type(m), type(m).__name__) for m in features]
    assert got == LAYERS, f"SimpleNet.features is {got}"
    not_in_place = [i for i, m in enumerate(features) if isinstance(m, nn.ReLU) and not m.inplace]
    assert not not_in_place, f"ReLUs at {not_in_place} are not in place (the starter's are: the conv output is reused)"


def test_simplenet_defaults_to_the_starters_100_classes_and_nn_conv2d() -> None:
    convs = [m for m in SimpleNet().modules() if isinstance(m, nn.Conv2d)]
    assert SimpleNet().fc.out_features == 100 and len(convs) == 7, "SimpleNet() is not 7 nn.Conv2d layers, 100 classes"
