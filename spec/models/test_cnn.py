"""Spec of §3.1.2: SimpleNet (exactly the course network) and the two skip-connection CNNs.

The custom convolution must be a drop-in: SimpleNet built with it equals SimpleNet built with nn.Conv2d given the
same weights — outputs, every parameter gradient, and a 20-step SGD loss curve.
"""

from __future__ import annotations

from types import ModuleType

import pytest
import torch
from torch import nn

from spec.subject import need, ours_only

# The course network, layer by layer: (in, out, kernel, stride, padding). Its parameter count is derived from this
# table, independently of the implementation.
SIMPLENET_CONVS = [
    (3, 64, 7, 2, 3),
    (64, 64, 1, 1, 0),
    (64, 64, 3, 1, 1),
    (64, 256, 1, 1, 0),
    (256, 128, 1, 1, 0),
    (128, 128, 3, 1, 1),
    (128, 512, 1, 1, 0),
]


def _param_count(num_classes: int) -> int:
    convs = sum(o * i * k * k + o for i, o, k, _, _ in SIMPLENET_CONVS)
    return convs + 512 * num_classes + num_classes


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_simplenet_has_the_course_parameter_count(subject: ModuleType) -> None:
    SimpleNet = need(subject, "SimpleNet")
    assert _param_count(100) == 365_028
    for classes in (100, 10):
        assert _n_params(SimpleNet(nn.Conv2d, classes)) == _param_count(classes), f"{classes} classes"


def test_simplenet_layers_are_the_course_layers(subject: ModuleType) -> None:
    model = need(subject, "SimpleNet")(nn.Conv2d, 100)
    convs = [
        (m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0])
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    ]
    assert convs == SIMPLENET_CONVS
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()), "the course SimpleNet has no BatchNorm"
    pools = [(m.kernel_size, m.stride, m.padding) for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    assert pools == [(3, 2, 1), (3, 2, 1)]


CNN_NAMES = ["SimpleNet", "CustomNet", "CustomNet2"]


@pytest.mark.parametrize("name", CNN_NAMES)
@pytest.mark.parametrize("hw", [(128, 128), (64, 48), (33, 47)])
def test_cnn_output_shape_and_gradients_reach_every_parameter(subject: ModuleType, name: str, hw) -> None:
    if name != "SimpleNet" and hw == (128, 128):
        hw = (96, 96)  # the skip CNNs are ~10x SimpleNet's cost; the shape logic is the same
    model = need(subject, name)(nn.Conv2d, 7)
    out = model(torch.randn(2, 3, *hw))
    assert out.shape == (2, 7), f"{name} at {hw}: {tuple(out.shape)}"
    out.logsumexp(1).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}: no finite gradient for {pname}"
        assert p.grad.abs().sum() > 0, f"{name}: zero gradient for {pname}"


def test_skip_cnns_are_distinct_designs(subject: ModuleType) -> None:
    """CustomNet opens with a 7×7 skip block (two 7×7 convs); CustomNet2 with a single 7×7 conv and then 3×3 blocks."""
    net1, net2 = need(subject, "CustomNet")(nn.Conv2d, 100), need(subject, "CustomNet2")(nn.Conv2d, 100)
    sevens1 = [m for m in net1.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (7, 7)]
    sevens2 = [m for m in net2.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (7, 7)]
    assert len(sevens1) == 2 and len(sevens2) == 1, (len(sevens1), len(sevens2))
    assert _n_params(net1) != _n_params(net2)


def _pair_of_simplenets(subject: ModuleType, algorithm: str | None):
    SimpleNet, CustomConv2d = need(subject, "SimpleNet"), need(subject, "CustomConv2d")

    def conv_op(*args, **kwargs):
        return (
            CustomConv2d(*args, **kwargs) if algorithm is None else CustomConv2d(*args, algorithm=algorithm, **kwargs)
        )

    native, custom = SimpleNet(nn.Conv2d, 10), SimpleNet(conv_op, 10)
    custom.load_state_dict(native.state_dict())
    return native.double(), custom.double()


@pytest.fixture(params=[None, "unfold"], ids=["default", "unfold"])
def algorithm(request: pytest.FixtureRequest, subject: ModuleType) -> str | None:
    """The subject's CustomConv2d as it comes (ours defaults to "fast"), and our seed "unfold" algorithm by name."""
    if request.param is not None:
        ours_only(subject, "the conv algorithm switch")
    return request.param


def test_simplenet_with_custom_conv_equals_native(subject: ModuleType, algorithm: str | None) -> None:
    native, custom = _pair_of_simplenets(subject, algorithm)
    x = torch.randn(3, 3, 64, 56, dtype=torch.float64)
    y_native, y_custom = native(x), custom(x)
    torch.testing.assert_close(y_custom, y_native, rtol=1e-9, atol=1e-10)
    g = torch.randn_like(y_native)
    y_native.backward(g)
    y_custom.backward(g)
    for (name, p_native), p_custom in zip(native.named_parameters(), custom.parameters(), strict=True):
        err = (p_native.grad - p_custom.grad).abs().max().item()
        assert err < 1e-9, f"gradient of {name} differs by {err:.3g}"


def test_twenty_sgd_steps_give_the_native_loss_curve(subject: ModuleType, algorithm: str | None) -> None:
    native, custom = (m.float() for m in _pair_of_simplenets(subject, algorithm))
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    curves = []
    for model in (native, custom):
        opt = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9)  # a smooth, non-chaotic descent
        losses = []
        for _ in range(20):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        curves.append(torch.tensor(losses))
    assert curves[0][-1] < curves[0][0], f"native SimpleNet did not learn: {curves[0].tolist()}"
    err = (curves[0] - curves[1]).abs().max().item()
    assert err < 1e-3, f"loss curves differ by {err:.3g}:\nnative {curves[0].tolist()}\ncustom {curves[1].tolist()}"
