"""Adversarial training (§3.3.2): the perturbations, robust model selection, the catastrophic-overfitting guard."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from impl.adversarial import AdvTrainConfig, CatastrophicOverfitting, CatastrophicOverfittingMonitor, make_perturb
from impl.attack import pgd
from impl.train import load_checkpoint
from spec.attack.toys import TinyNet, quadrant_data, random_images, to_pixels


@pytest.mark.parametrize(
    ("cfg", "steps", "alpha"),
    [
        (AdvTrainConfig("pgd"), 3, 0.01),  # the seed: 3 steps, ε 8/255, α 0.01
        (AdvTrainConfig("pgd", eps=4 / 255, steps=5, alpha=1 / 255), 5, 1 / 255),
        (AdvTrainConfig("fgsm-rs"), 1, 1.25 * 8 / 255),  # Wong et al.: α = 1.25 ε
    ],
)
def test_perturbation_is_pgd_with_a_random_start_at_the_configured_budget(cfg, steps, alpha):
    model = TinyNet().eval()
    images, labels = random_images(8, seed=0), torch.randint(0, 4, (8,))
    torch.manual_seed(3)
    ours = make_perturb(cfg)(model, images, labels)
    torch.manual_seed(3)
    ref = pgd(model, images, labels, eps=cfg.eps, alpha=alpha, steps=steps, random_start=True)
    assert torch.equal(ours, ref), f"{cfg.method}: differs from pgd(steps={steps}, alpha={alpha:.4g}, random start)"
    delta = (to_pixels(ours) - to_pixels(images)).abs().max().item()
    assert 0 < delta <= cfg.eps + 1e-6, f"{cfg.method}: |δ|∞ = {delta:.4g} for ε = {cfg.eps:.4g}"


def test_perturbation_leaves_the_training_state_alone():
    model = TinyNet()  # train mode, as the engine calls it
    images, labels = random_images(8, seed=1), torch.randint(0, 4, (8,))
    F.cross_entropy(model(images), labels).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    make_perturb(AdvTrainConfig("pgd"))(model, images, labels)
    assert all(m.training for m in model.modules()), "the perturbation left the model in eval mode"
    assert all(torch.equal(p.grad, grads[n]) for n, p in model.named_parameters()), "parameter grads changed"
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers()), "BN statistics changed"


@pytest.mark.parametrize(
    ("cfg", "k"), [(AdvTrainConfig("pgd"), 3), (AdvTrainConfig("fgsm-rs"), 1)], ids=["pgd-3", "fgsm-rs"]
)
def test_perturbation_costs_k_eval_forwards_and_k_input_only_backwards(cfg, k, monkeypatch):
    """The floor of bench/attack/floor.py and no more: k forwards in eval mode (BN and dropout off, as the module
    states), each followed by one backward to the batch alone, no extra forward, and a batch that needs no grad
    (else the training step's backward would also pay the first layer's input gradient)."""
    model = TinyNet()  # train mode, as the engine calls it
    images, labels = random_images(8, seed=4), torch.randint(0, 4, (8,))
    forwards: list[tuple[bool, bool]] = []
    model.register_forward_hook(lambda m, args, out: forwards.append((m.training, args[0].requires_grad)))
    backwards: list[list[tuple[int, ...]]] = []
    real_grad = torch.autograd.grad

    def counting_grad(outputs, inputs, *args, **kwargs):
        backwards.append([tuple(t.shape) for t in (inputs if isinstance(inputs, tuple | list) else (inputs,))])
        return real_grad(outputs, inputs, *args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    adv = make_perturb(cfg)(model, images, labels)
    assert forwards == [(False, True)] * k, f"{cfg.method}: (training, input requires grad) per forward {forwards}"
    assert backwards == [[tuple(images.shape)]] * k, f"{cfg.method}: the shapes differentiated per backward {backwards}"
    assert not adv.requires_grad and adv.grad_fn is None, f"{cfg.method}: the batch returned is part of a graph"


def test_perturbation_under_bf16_autocast_stays_in_budget():
    model = TinyNet().eval()
    images, labels = random_images(8, seed=2), torch.randint(0, 4, (8,))
    adv = make_perturb(AdvTrainConfig("pgd", amp="bf16"))(model, images, labels)
    delta = (to_pixels(adv) - to_pixels(images)).abs().max().item()
    assert adv.dtype == images.dtype and 0 < delta <= 8 / 255 + 1e-6, f"dtype {adv.dtype}, |δ|∞ {delta:.4g}"


@pytest.mark.slow
def test_pgd_training_raises_pgd_accuracy_over_natural_training(natural_run, pgd_run):
    natural, robust = natural_run.history[-1], pgd_run.history[-1]
    assert robust["val_pgd_top1"] >= natural["val_pgd_top1"] + 10, (
        f"PGD accuracy: natural {natural['val_pgd_top1']:.1f}%, PGD-3 trained {robust['val_pgd_top1']:.1f}%"
    )
    assert robust["val_top1"] >= 90, f"PGD-3 training lost clean accuracy: {robust['val_top1']:.1f}%"
    assert natural["val_pgd_top1"] < natural["val_top1"] - 30, "the attack is too weak to tell the models apart"


@pytest.mark.slow
def test_fgsm_rs_training_raises_pgd_accuracy_over_natural_training(natural_run, fgsm_rs_run):
    natural, fast = natural_run.history[-1], fgsm_rs_run.history[-1]
    assert fast["val_pgd_top1"] > natural["val_pgd_top1"], (
        f"PGD accuracy: natural {natural['val_pgd_top1']:.1f}%, FGSM-RS trained {fast['val_pgd_top1']:.1f}%"
    )
    assert all("fixed_pgd_top1" in row for row in fgsm_rs_run.history), "the FGSM-RS run was not monitored"


@pytest.mark.slow
def test_every_epoch_reports_clean_and_pgd_accuracy_and_best_is_chosen_by_pgd(pgd_run):
    rows = pgd_run.history
    assert all({"val_top1", "val_pgd_top1", "val_pgd_top5"} <= set(r) for r in rows), f"row keys: {list(rows[0])}"
    best_epoch = max(range(len(rows)), key=lambda i: rows[i]["val_pgd_top1"])
    best = load_checkpoint(pgd_run.best)
    assert best["epoch"] == best_epoch + 1 and best["best_acc1"] == pytest.approx(rows[best_epoch]["val_pgd_top1"]), (
        f"model_best is epoch {best['epoch']} ({best['best_acc1']:.1f}), the best PGD accuracy is epoch "
        f"{best_epoch + 1} ({rows[best_epoch]['val_pgd_top1']:.1f})"
    )


def test_monitor_stops_on_a_drop_of_more_than_co_drop_points():
    images, labels = quadrant_data(4, seed=0)
    monitor = CatastrophicOverfittingMonitor(images, labels, AdvTrainConfig("fgsm-rs", co_drop=20))
    for acc in (30.0, 45.0, 26.0):  # 19 points below the best: still fine
        monitor.update(acc)
    with pytest.raises(CatastrophicOverfitting, match=r"45\.0% to 24\.0%"):
        monitor.update(24.0)


def test_monitor_measures_a_seeded_pgd_accuracy():
    images, labels = quadrant_data(32, seed=0)
    model = TinyNet().eval()
    monitor = CatastrophicOverfittingMonitor(images, labels, AdvTrainConfig("fgsm-rs"))
    first, second = monitor(model)["fixed_pgd_top1"], monitor(model)["fixed_pgd_top1"]
    g = torch.Generator().manual_seed(0)
    cfg = AdvTrainConfig("fgsm-rs")
    adv = pgd(model, images, labels, eps=cfg.eps, alpha=cfg.eval_alpha, steps=cfg.eval_steps, generator=g)
    with torch.no_grad():
        expected = 100 * float((model(adv).argmax(1) == labels).float().mean())
    assert first == second == pytest.approx(expected), f"monitor {first}, {second}; recomputed {expected}"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "trades"}, "method"),
        ({"eps": 8.0}, "pixel units"),
        ({"alpha": 0.0}, "alpha"),
        ({"steps": 0}, "steps"),
        ({"co_drop": 0}, "co_drop"),
    ],
)
def test_bad_config_raises_naming_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdvTrainConfig(**kwargs)


def test_training_perturbation_reads_nothing_back_to_the_host(monkeypatch):
    """No .item(), bool(), float() or .tolist() in the perturbation: on CUDA each would stall every training step."""
    model = TinyNet().eval()
    images, labels = random_images(8, seed=4), torch.randint(0, 4, (8,))
    calls: list[str] = []
    for name in ("item", "tolist", "__bool__", "__int__", "__float__"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(
            torch.Tensor, name, lambda self, *a, _n=name, _o=original: (calls.append(_n), _o(self, *a))[1]
        )
    for cfg in (AdvTrainConfig("pgd"), AdvTrainConfig("fgsm-rs")):
        make_perturb(cfg)(model, images, labels)
    monkeypatch.undo()
    assert not calls, f"host reads in the training perturbation: {sorted(set(calls))}"
    with pytest.raises(ValueError, match="span pixels"):  # the direct call still checks the range
        pgd(model, images * 255, labels)


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["pgd", "fgsm-rs"])
def test_training_perturbation_makes_no_host_sync_on_cuda(method):
    """torch's sync debug mode raises on any implicit synchronization, blocking copies from host memory too."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    cuda = torch.device("cuda")
    model = TinyNet().to(cuda).eval()
    images, labels = random_images(64, seed=5).to(cuda), torch.randint(0, 4, (64,), device=cuda)
    perturb = make_perturb(AdvTrainConfig(method))
    perturb(model, images, labels)  # warm-up: lazy initialization may sync once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        adv = perturb(model, images, labels)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert adv.is_cuda and adv.shape == images.shape


@pytest.mark.parametrize(
    ("method", "n", "val_images", "attacked", "monitored"),
    [("fgsm-rs", 300, 280, 280, 256), ("fgsm-rs", 40, 280, 40, 40), ("pgd", 300, 100, 100, None)],
)
def test_adversarial_training_on_a_val_set_validates_on_its_first_images(
    monkeypatch, method, n, val_images, attacked, monitored
):
    """What `--adv-train` wires: robust validation over the first --adv-val-images val images (fewer when val is
    smaller), and for FGSM-RS the monitor's fixed batch, the first MONITOR_IMAGES of them in order."""
    from torch.utils.data import TensorDataset

    from impl import adversarial

    seen: list[int] = []
    real = adversarial.make_eval_loader

    def recording(dataset, *args, **kwargs):
        seen.append(len(dataset))
        return real(dataset, *args, **kwargs)

    monkeypatch.setattr(adversarial, "make_eval_loader", recording)
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 2, 2)
    val_set = TensorDataset(images, torch.arange(n) % 4)
    hooks = adversarial.adversarial_training_on(AdvTrainConfig(method), val_set, torch.device("cpu"),
                                                val_images=val_images, batch_size=64)  # fmt: skip
    assert seen == [attacked], f"robust validation over {seen} images, expected {attacked}"
    monitors = [e for e in hooks.extra_evals if isinstance(e, CatastrophicOverfittingMonitor)]
    if monitored is None:
        assert not monitors and len(hooks.extra_evals) == 1, hooks.extra_evals
        return
    (monitor,) = monitors
    assert torch.equal(monitor.images[:, 0, 0, 0], torch.arange(monitored, dtype=torch.float32)), monitor.images.shape
    assert torch.equal(monitor.labels, torch.arange(monitored) % 4)
