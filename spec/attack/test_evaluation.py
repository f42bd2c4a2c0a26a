"""Robustness evaluation: accuracies counted right, the seed's sweep tables, a sanity report that catches failures."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from impl.attack import (
    AttackResult,
    AttackSpec,
    PGDAttack,
    RobustnessReport,
    default_specs,
    evaluate_robustness,
    sanity_checks,
    sweep_specs,
)
from spec.attack.toys import accuracy


def _loader(images: Tensor, labels: Tensor, batch_size: int = 50) -> DataLoader:
    return DataLoader(TensorDataset(images, labels), batch_size=batch_size)


def test_clean_and_adversarial_accuracy_are_counted_over_every_batch(trained):
    model, images, labels = trained
    specs = [AttackSpec("noise", "pixel", 0.0), AttackSpec("pgd", "pixel", 8 / 255, 5, 2 / 255, random_start=False)]
    report = evaluate_robustness(model, _loader(images, labels), specs)  # 256 examples in uneven batches of 50
    assert report.n == images.shape[0] and report.num_classes == 4
    clean = accuracy(model, images, labels)
    assert report.clean_top1 == pytest.approx(clean), f"clean top-1 {report.clean_top1} vs recomputed {clean}"
    assert report.result("noise eps=0/255").top1 == pytest.approx(clean), "ε = 0 noise must equal clean accuracy"
    assert report.clean_top5 == 100.0, "4 classes: the label is always within the top 5"
    assert report.result("pgd-5 eps=8/255").top1 < clean - 20


def test_course_mode_target_hits_are_the_least_confident_clean_labels(trained):
    """Recomputed independently: the share of adversarial predictions equal to argmin of the clean logits."""
    model, images, labels = trained
    spec = AttackSpec("pgd", "course", 0.3, 10, 0.05)
    report = evaluate_robustness(model, _loader(images, labels), [spec])
    adv = PGDAttack(nn.CrossEntropyLoss(), num_steps=10, step_size=0.05, epsilon=0.3).perturb(model, images)
    with torch.no_grad():
        expected = 100 * (model(adv).argmax(1) == model(images).argmin(1)).float().mean().item()
    got = report.result(spec.name).target_hit
    assert expected > 10, f"the attack should hit its targets at this budget ({expected:.1f}%)"
    assert got == pytest.approx(expected, abs=100 / images.shape[0]), f"target hits {got} vs recomputed {expected}"


def test_sweep_has_the_seeds_tables_and_baselines():
    names = {s.name for s in sweep_specs("course", eps=0.1)}
    expected = {"pgd-5 eps=0.1", "pgd-10 eps=0.1", "pgd-20 eps=0.1", "pgd-10 eps=0.05", "pgd-10 eps=0.15"}
    expected |= {f"{k} eps={e}" for k in ("fgsm", "noise") for e in ("0.05", "0.1", "0.15")}
    assert expected <= names, f"missing {sorted(expected - names)}"
    probes = [s for s in sweep_specs("pixel") if s.chance_probe]
    assert len(probes) == 1 and probes[0].steps * probes[0].step_size >= probes[0].eps, "the probe cannot reach ε"


@pytest.mark.parametrize("mode", ["course", "pixel"])
def test_sweep_eps_rows_scale_the_step_so_each_ball_is_spanned_alike(mode):
    specs = [s for s in sweep_specs(mode) if s.kind == "pgd" and not s.chance_probe and s.steps == 10]
    assert len(specs) == 3, [s.name for s in specs]
    reach = {s.name: s.steps * s.step_size / s.eps for s in specs}
    assert max(reach.values()) == pytest.approx(min(reach.values())), f"steps·α/ε differs across the ε rows: {reach}"


def test_report_rows_show_the_step_size_each_attack_ran_with():
    specs = [s for s in sweep_specs("course") if s.kind == "pgd" and not s.chance_probe]
    rows = {r["attack"]: r["step α"] for r in _report([(s, 50.0) for s in specs]).rows()}
    assert rows["pgd-10 eps=0.15"] == "0.015" and rows["pgd-10 eps=0.1"] == "0.01", rows
    assert rows["clean"] == "", rows


@pytest.mark.parametrize("mode", ["course", "pixel"])
def test_sanity_report_passes_on_a_trained_model(trained, mode):
    model, images, labels = trained
    eps = 0.15 if mode == "course" else 8 / 255
    specs = sweep_specs(mode, eps=eps, steps=10, alpha=eps / 4, steps_sweep=(5, 10), eps_scales=(0.5, 1.0))
    torch.manual_seed(0)
    report = evaluate_robustness(model, _loader(images[:128], labels[:128], 128), specs)
    assert not report.failed, "sanity checks failed on a sound attack:\n" + report.to_markdown()
    names = {c.name for c in report.checks}
    assert {"no NaN/inf", "perturbation within ε", "accuracy non-increasing in ε"} <= names
    assert any("near chance" in n for n in names) and any(n.startswith("PGD ≥ FGSM ≥ noise") for n in names)


def _report(rows: list[tuple[AttackSpec, float]], nan: int = 0, pert: float | None = None) -> RobustnessReport:
    results = tuple(AttackResult(s, top1, top1, s.eps if pert is None else pert, s.eps, nan, 0.0) for s, top1 in rows)
    return RobustnessReport(n=100, num_classes=10, clean_top1=90.0, clean_top5=99.0, clean_seconds=0.0, results=results)


def _failed(report: RobustnessReport) -> set[str]:
    return {c.name.split(" at ")[0] for c in sanity_checks(report) if not c.passed}


def test_sanity_checks_flag_each_symptom():
    pgd, fgsm, noise = (AttackSpec(k, "course", 0.1, alpha=0.02) for k in ("pgd", "fgsm", "noise"))
    big_pgd = AttackSpec("pgd", "course", 0.2, alpha=0.02)
    probe = AttackSpec("pgd", "course", 1.0, 10, 0.25, chance_probe=True)
    sound = [(pgd, 10.0), (fgsm, 30.0), (noise, 85.0), (big_pgd, 5.0), (probe, 9.0)]
    assert _failed(_report(sound)) == set(), "a sound report was flagged"
    assert _failed(_report([(pgd, 40.0), *sound[1:]])) == {"PGD ≥ FGSM ≥ noise"}
    assert _failed(_report([*sound[:3], (big_pgd, 20.0), (probe, 9.0)])) == {"accuracy non-increasing in ε"}
    assert _failed(_report([*sound[:4], (probe, 40.0)])) == {f"{probe.name} is near chance"}
    assert _failed(_report([(pgd, 95.0), *sound[1:]])) >= {"attacks do not raise accuracy", "PGD ≥ FGSM ≥ noise"}
    assert "no NaN/inf" in _failed(_report(sound, nan=3))
    assert "perturbation within ε" in _failed(_report(sound, pert=0.5))


def test_early_stopped_pgd_is_judged_apart_from_full_pgd_at_the_same_budget():
    """Early stopping keeps the first image that fooled the model, so at the same budget it may rightly score lower
    than full PGD; neither ordering check may read that as a weaker attack or as accuracy rising with ε."""
    full = AttackSpec("pgd", "pixel", 8 / 255, 10)
    early = AttackSpec("pgd", "pixel", 8 / 255, 10, early_stop=True)
    fgsm, noise = AttackSpec("fgsm", "pixel", 8 / 255), AttackSpec("noise", "pixel", 8 / 255)
    for rows in ([(early, 5.0), (full, 20.0)], [(full, 20.0), (early, 5.0)]):
        checks = sanity_checks(_report([*rows, (fgsm, 30.0), (noise, 80.0)]))
        flagged = [(c.name, c.detail) for c in checks if not c.passed]
        assert not flagged, f"order {[r[0].name for r in rows]}: flagged {flagged}"


def test_a_failed_check_is_logged_as_a_warning(trained, caplog):
    model, images, labels = trained
    broken = nn.Sequential(model, nn.Threshold(1e9, float("nan")))  # every logit NaN
    with caplog.at_level(logging.WARNING, logger="impl.attack"):
        report = evaluate_robustness(broken, _loader(images[:16], labels[:16]), default_specs("pixel"))
    assert any(c.name == "no NaN/inf" for c in report.failed)
    assert any("no NaN/inf" in r.getMessage() for r in caplog.records), "the failed check was not logged"


def test_evaluation_restores_the_models_mode(untrained):
    images, labels = torch.zeros(4, 3, 12, 12), torch.tensor([0, 1, 2, 3])
    evaluate_robustness(untrained, _loader(images, labels), default_specs("course", steps=1))
    assert all(m.training for m in untrained.modules()), "evaluation left modules in eval mode"


def test_empty_loader_and_bad_specs_raise():
    model = nn.Linear(1, 1)
    with pytest.raises(ValueError, match="no examples"):
        evaluate_robustness(model, [], default_specs())
    with pytest.raises(ValueError, match="duplicate"):
        evaluate_robustness(model, [], default_specs() * 2)
    with pytest.raises(ValueError, match="kind"):
        AttackSpec("cw")  # type: ignore[arg-type]
