"""The seed report's experiments, rerun (`pytest -m training`; `nox -s training` runs the reduced programme).

Reduced runs use the real-image subset at `../shared/miniplaces` (10 classes, 64 px, a few epochs, one CPU thread) and
assert floors measured from our own runs, each with its reason (`Recipe.reason`); full runs need the full data
(`MINIPLACES_ROOT`) and a CUDA device, and assert the seed's numbers minus the stated tolerance. Every run writes
`reports/raw/accuracy-<scale>-<name>.json`; `python -m impl.accuracy_report` turns them into reports/accuracy.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

from impl.data import IMAGENET_STD
from impl.experiments import EXPERIMENTS, RAW_DIR, Experiment, Scale, default_data, run_experiment

pytestmark = pytest.mark.training

# Course PGD starts at the clean image (no random start) and fixes its target, so PGD-20 continues PGD-10; accuracy on
# the true label is still not monotone by construction, so a sweep may rise by at most 1 point (5 of 500 images).
SWEEP_SLACK = 1.0
# The custom convolution sums in another order than oneDNN. After one epoch the losses agree to 1e-5 (measured:
# identical to 4 decimals); SGD then amplifies the float32 rounding step by step (measured over the 12 reduced epochs
# at ae339e6, 6f6fd77 and d162ba4: train loss within 1.3 / 1.4 / 2.5 %, val loss within 1.9 / 3.1 / 3.1 %; over 6
# epochs 1.5 % and 3.7 %, the val loss swinging most near the learning-rate peak; by d162ba4 the fast conv's column
# budget had shrunk from 16 to 4 MiB, so its batch chunks, and the order it sums in, had changed).
CURVE_TOLERANCE = {"epoch1_loss_rel_diff": 1e-3, "train_loss_rel_diff": 0.03, "val_loss_rel_diff": 0.06}
# Top-1 points the course's PGD-10 and the stronger attacks of its sweeps (PGD-20, PGD-10 at ε × 1½) must cost. Full
# scale: the seed's 43.75 -> 14.89. Reduced: measured on the 12-epoch SimpleNet's first 500 val images, clean 34.2 %,
# PGD-10 27.4, PGD-20 25.6, ε × 1½ 20.2; the floor is about half the PGD-10 drop. The weak rows (PGD-5, ε × ½: half the
# course's movement) sit at clean (measured 34.4, 34.4): the least-confident target is out of their reach, and pushing
# toward it lowers the top class, which is as often a wrong one as the true one; they may exceed clean by SWEEP_SLACK.
PGD_DROP = {"full": 10.0, "reduced": 3.5}
# The course's normalized ε; the chance probe (ε 1.0, same target) must reach its least-confident target on at least
# this % of the images (measured at the reduced scale: 95 %; an attack that does nothing: 0 %).
EPS_COURSE = 0.1
PROBE_TARGET_HIT = 50.0
# PGD-10 (pixel, ε 8/255) accuracy the adversarially trained SimpleNet must keep above the natural one's, in points.
ROBUST_MARGIN = 3.0


def _out(tmp_path_factory: pytest.TempPathFactory, scale: Scale) -> Path:
    return tmp_path_factory.getbasetemp() / f"reproduce-{scale}"  # shared by the session: bases run once


def _run(exp: Experiment, scale: Scale, out: Path) -> dict[str, Any]:
    device = "cuda" if scale == "full" else "cpu"
    return run_experiment(exp.name, None, scale == "reduced", device, out, raw_dir=RAW_DIR, workers=0 if scale ==
                          "reduced" else 8, threads=1 if scale == "reduced" else None)  # fmt: skip


def check_floors(exp: Experiment, scale: Scale, metrics: Mapping[str, float]) -> None:
    recipe = exp.recipe(scale)
    for metric, floor in recipe.floors.items():
        got = metrics[metric]
        assert got >= floor, f"{exp.name} ({scale}): {metric} {got:.2f} % < floor {floor:.2f} % ({recipe.reason})"


def check_claims(exp: Experiment, scale: Scale, result: Mapping[str, Any]) -> None:
    """What each kind of experiment must show besides its floors."""
    m = result["metrics"]
    if exp.kind == "attack":
        clean = m["clean_top1"]
        rows = {str(r["attack"]): r for r in result["robustness"]}
        # an attack that returns its input fails first: the course's PGD-10 moves pixels by half its budget at least
        course = rows[f"pgd-10 eps={EPS_COURSE:g}"]
        budget_px = EPS_COURSE * min(IMAGENET_STD)  # normalized ε in pixel units, the smallest channel's
        moved = course["max |δ|∞ (pixel)"]
        assert moved >= 0.5 * budget_px, f"the course's PGD-10 moved pixels by {moved:.4g}, budget {budget_px:.4g}"
        ceiling = clean - PGD_DROP[scale]
        strong = {"PGD-10": m["top1"], "PGD-20": m["steps20_top1"], "PGD-10 at eps x1.5": m["eps_hi_top1"]}
        for name, top1 in strong.items() if scale == "reduced" else [("PGD-10", m["top1"])]:
            assert top1 <= ceiling, f"{name} top-1 {top1:.2f} % above {ceiling:.2f} % (clean {clean:.2f} %, {scale})"
        for name, top1 in (("PGD-5", m["steps5_top1"]), ("PGD-10 at eps x0.5", m["eps_lo_top1"])):
            assert top1 <= clean + SWEEP_SLACK, f"{name} top-1 {top1:.2f} % rises above clean {clean:.2f} %"
        probe = next(r for name, r in rows.items() if "chance probe" in name)
        assert probe["top1 (%)"] <= clean - 10, f"the ε 1.0 probe leaves {probe['top1 (%)']:.2f} % (clean {clean:.2f})"
        hit = probe["least-confident target hit (%)"]
        assert hit >= PROBE_TARGET_HIT, f"the ε 1.0 probe hit its target on {hit} % of images (< {PROBE_TARGET_HIT})"
        steps = [m["steps5_top1"], m["top1"], m["steps20_top1"]]
        eps = [m["eps_lo_top1"], m["top1"], m["eps_hi_top1"]]
        for name, sweep in (("steps 5/10/20", steps), ("eps x0.5/1/1.5", eps)):
            rises = [b - a for a, b in zip(sweep, sweep[1:], strict=False)]
            assert max(rises) <= SWEEP_SLACK, f"{name}: top-1 {sweep} rises by {max(rises):.2f} points"
    if exp.kind == "adversarial":
        adv, nat = m["pgd10_top1"], m["natural_pgd10_top1"]
        assert adv >= nat + ROBUST_MARGIN, (
            f"adversarial training: PGD-10 top-1 {adv:.2f} % is not {ROBUST_MARGIN} points above the natural "
            f"SimpleNet's {nat:.2f} % under the same attack"
        )
    if exp.custom_conv and exp.needs_base(scale):
        for key, tolerance in CURVE_TOLERANCE.items():
            assert m[key] <= tolerance, (
                f"custom-conv loss curve vs the native one: {key} {100 * m[key]:.3f} % > {100 * tolerance:g} %"
            )


@pytest.mark.parametrize("exp", EXPERIMENTS, ids=lambda e: e.name)
def test_reduced_experiment_meets_its_floors(exp: Experiment, tmp_path_factory: pytest.TempPathFactory) -> None:
    if default_data("reduced") is None:
        pytest.skip("the real-image subset is not at ../shared/miniplaces (next to the checkout)")
    result = _run(exp, "reduced", _out(tmp_path_factory, "reduced"))
    check_floors(exp, "reduced", result["metrics"])
    check_claims(exp, "reduced", result)


@pytest.mark.gpu
@pytest.mark.parametrize("exp", EXPERIMENTS, ids=lambda e: e.name)
def test_full_experiment_reaches_the_seed(exp: Experiment, tmp_path_factory: pytest.TempPathFactory) -> None:
    if not os.environ.get("MINIPLACES_ROOT"):
        pytest.skip("the full scale needs MINIPLACES_ROOT: the full MiniPlaces folder (100,000 training images)")
    if not torch.cuda.is_available():
        pytest.skip("the full scale needs a CUDA device (SimpleNet's 60 epochs alone would take days on this CPU)")
    result = _run(exp, "full", _out(tmp_path_factory, "full"))
    check_floors(exp, "full", result["metrics"])
    check_claims(exp, "full", result)


def test_the_attack_claims_reject_an_attack_that_does_nothing() -> None:
    """The recorded reduced course-PGD run passes check_claims; the same record with every PGD row replaced by what an
    identity attack records (no movement, clean accuracy, no target hit) fails it, and so does one whose attack moves
    pixels but leaves top-1 at clean (what the 6-epoch SimpleNet recorded): the reduced claims have teeth."""
    import copy
    import json

    path = RAW_DIR / "accuracy-reduced-pgd-course.json"
    if not path.is_file():
        pytest.skip(f"{path} not recorded yet (`miniplaces reproduce pgd-course --reduced`)")
    recorded = json.loads(path.read_text())
    exp = next(e for e in EXPERIMENTS if e.name == "pgd-course")
    check_claims(exp, "reduced", recorded)
    clean = recorded["metrics"]["clean_top1"]
    flat = copy.deepcopy(recorded)
    flat["metrics"].update({k: clean for k in ("top1", "steps5_top1", "steps20_top1", "eps_lo_top1", "eps_hi_top1")})
    with pytest.raises(AssertionError, match="PGD-10 top-1 .* above"):
        check_claims(exp, "reduced", flat)
    identity = copy.deepcopy(flat)
    for row in identity["robustness"]:
        if str(row["attack"]).startswith("pgd"):
            row.update({"max |δ|∞ (pixel)": 0.0, "top1 (%)": clean, "least-confident target hit (%)": 0.0})
    with pytest.raises(AssertionError, match="moved pixels by 0"):
        check_claims(exp, "reduced", identity)
