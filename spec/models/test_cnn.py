"""Spec of §3.1.2: SimpleNet (exactly the course network) and the two skip-connection CNNs.

The custom convolution must be a drop-in: SimpleNet built with it equals SimpleNet built with nn.Conv2d given the
same weights — outputs, every parameter gradient, and a 20-step SGD loss curve.
"""

from __future__ import annotations

from types import ModuleType

import pytest
import torch
from torch import nn

import impl.models
from spec.attack.toys import random_images
from spec.subject import need

pytestmark = pytest.mark.course("readme §3.1.2 and the starter's SimpleNet (given code, trained by main.py)")

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


@pytest.mark.advised("the starter's SimpleNet as given; the bonus may modify it (readme §3.3)")
def test_simplenet_has_the_course_parameter_count(subject: ModuleType) -> None:
    SimpleNet = need(subject, "SimpleNet")
    assert _param_count(100) == 365_028
    for classes in (100, 10):
        assert _n_params(SimpleNet(nn.Conv2d, classes)) == _param_count(classes), f"{classes} classes"


@pytest.mark.advised("the starter's SimpleNet as given; the bonus may modify it (readme §3.3)")
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


# main.py builds the CNN as `default_cnn_model(conv_op=..., num_classes=100)` and feeds it 128×128 crops: that call is
# the course's. Other input sizes are good practice (AdaptiveAvgPool2d makes them work); CustomNet and CustomNet2 are
# miniplaces-lab's names for its two designs (the skip CNNs are ~10x SimpleNet's cost: 96×96 shows the same logic).
_OTHER_SIZES = pytest.mark.advised("any input size through AdaptiveAvgPool2d; main.py feeds only 128×128 crops")
CNN_CASES = [
    pytest.param("SimpleNet", (128, 128), id="SimpleNet-128x128"),
    pytest.param("SimpleNet", (64, 48), marks=_OTHER_SIZES, id="SimpleNet-64x48"),
    pytest.param("SimpleNet", (33, 47), marks=_OTHER_SIZES, id="SimpleNet-33x47"),
    *(
        pytest.param(name, hw, marks=pytest.mark.extension, id=f"{name}-{hw[0]}x{hw[1]}")
        for name in ("CustomNet", "CustomNet2")
        for hw in ((96, 96), (64, 48), (33, 47))
    ),
]


@pytest.mark.parametrize(("name", "hw"), CNN_CASES)
def test_cnn_output_shape_and_gradients_reach_every_parameter(subject: ModuleType, name: str, hw) -> None:
    model = need(subject, name)(conv_op=nn.Conv2d, num_classes=100).eval()  # eval: a bonus SimpleNet attacks in train
    out = model(torch.randn(2, 3, *hw))
    assert out.shape == (2, 100), f"{name} at {hw}: {tuple(out.shape)}"
    out.logsumexp(1).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}: no finite gradient for {pname}"
        assert p.grad.abs().sum() > 0, f"{name}: zero gradient for {pname}"


@pytest.mark.extension("miniplaces-lab's CustomNet / CustomNet2 designs")
def test_skip_cnns_are_distinct_designs(subject: ModuleType) -> None:
    """CustomNet opens with a 7×7 skip block (two 7×7 convs); CustomNet2 with a single 7×7 conv and then 3×3 blocks."""
    net1, net2 = need(subject, "CustomNet")(nn.Conv2d, 100), need(subject, "CustomNet2")(nn.Conv2d, 100)
    sevens1 = [m for m in net1.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (7, 7)]
    sevens2 = [m for m in net2.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (7, 7)]
    assert len(sevens1) == 2 and len(sevens2) == 1, (len(sevens1), len(sevens2))
    assert _n_params(net1) != _n_params(net2)


def _pair_of_simplenets(subject: ModuleType, algorithm: str | None):
    """The course network (ours: a bonus-modified SimpleNet of the subject would attack inside forward) with
    nn.Conv2d and with the subject's CustomConv2d, sharing weights."""
    SimpleNet, CustomConv2d = impl.models.SimpleNet, need(subject, "CustomConv2d")

    def conv_op(*args, **kwargs):
        return (
            CustomConv2d(*args, **kwargs) if algorithm is None else CustomConv2d(*args, algorithm=algorithm, **kwargs)
        )

    native, custom = SimpleNet(nn.Conv2d, 10), SimpleNet(conv_op, 10)
    custom.load_state_dict(native.state_dict())
    return native.double(), custom.double()


@pytest.fixture(params=[None, pytest.param("unfold", marks=pytest.mark.extension)], ids=["default", "unfold"])
def algorithm(request: pytest.FixtureRequest, subject: ModuleType) -> str | None:
    """The subject's CustomConv2d as it comes (ours defaults to "fast"), and our seed "unfold" algorithm by name."""
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


def _bonus_model(subject: ModuleType):
    """The subject's bonus model (`default_cnn_model`). `impl` builds its adversarial training differently
    (impl/adversarial.py), so for it: the readme's bonus made of its course parts, a SimpleNet whose training forward
    attacks its input with the course PGDAttack (as the starter's comment suggests)."""
    if subject.__name__ != "impl":
        return need(subject, "default_cnn_model")
    SimpleNet, PGDAttack = need(subject, "SimpleNet"), need(subject, "PGDAttack")

    class CourseBonusSimpleNet(SimpleNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.training:
                x = PGDAttack(nn.CrossEntropyLoss(), num_steps=2, step_size=0.01, epsilon=0.03).perturb(self, x)
            return super().forward(x)

    return CourseBonusSimpleNet


def _first_layer_calls(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """model(x) and how often its first parametrized layer ran: more than once means an attack inside forward."""
    layer = next(m for m in model.modules() if not list(m.children()) and list(m.parameters(recurse=False)))
    calls = []
    handle = layer.register_forward_hook(lambda *_: calls.append(1))
    try:
        return model(x), len(calls)
    finally:
        handle.remove()


@pytest.mark.part("bonus")
@pytest.mark.course(
    "readme §3.3 bonus: PGD attached to SimpleNet's forward; main.py train(): model.train() once per epoch, "
    "then zero_grad → model(input) → loss.backward() → step, and validate() in eval mode"
)
def test_adversarial_training_forward_keeps_the_training_loop_intact(subject: ModuleType) -> None:
    """The bonus model attacks its input inside a training-mode forward; afterwards the model must still be in
    training mode, every parameter still trainable, and no attack gradient left for main.py's backward to add to."""
    model = _bonus_model(subject)(num_classes=10).train()
    x, y = random_images(4, seed=0, size=32), torch.tensor([0, 1, 2, 3])  # what main.py feeds: normalized images
    trainable = {n: p.requires_grad for n, p in model.named_parameters()}
    out, calls = _first_layer_calls(model, x)
    if calls <= 1:
        pytest.skip("default_cnn_model's training forward runs no attack: no adversarial training (bonus) found")
    evaluating = [n or "the model" for n, m in model.named_modules() if not m.training]
    assert not evaluating, f"a training-mode forward left {evaluating[:3]} in eval mode (next iterations train in eval)"
    frozen = [n for n, p in model.named_parameters() if p.requires_grad != trainable[n]]
    assert not frozen, f"the forward changed requires_grad of {frozen[:3]} (the optimizer then skips them)"
    stale = [n for n, p in model.named_parameters() if p.grad is not None and p.grad.any()]
    assert not stale, f"the forward left attack gradients in {stale[:3]}: main.py's loss.backward() adds to them"
    assert out.shape == (4, 10), f"logits {tuple(out.shape)}"
    nn.functional.cross_entropy(out, y).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not dead, f"no finite training gradient for {dead[:3]} after the adversarial forward"


@pytest.mark.part("bonus")
@pytest.mark.course("main.py validate(): model.eval(), then clean forwards; the bonus attack is for training only")
def test_adversarial_training_model_evaluates_clean_inputs_in_eval_mode(subject: ModuleType) -> None:
    model = _bonus_model(subject)(num_classes=10)
    _, calls = _first_layer_calls(model.train(), random_images(2, seed=0, size=32))
    if calls <= 1:
        pytest.skip("default_cnn_model's training forward runs no attack: no adversarial training (bonus) found")
    model.eval()
    with torch.no_grad():
        out, calls = _first_layer_calls(model, random_images(2, seed=1, size=32))
    assert calls == 1, f"an eval-mode forward ran the first layer {calls} times: it attacks at evaluation too"
    assert not model.training and out.shape == (2, 10), f"eval forward: training={model.training}, {tuple(out.shape)}"
