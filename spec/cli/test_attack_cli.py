"""`miniplaces train -a` (robustness report, sweep, pixel mode, figures, -v grids) and `--adv-train`, end to end."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
import torch

from impl.cli import main
from impl.train import BEST_NAME, CHECKPOINT_NAME

FAST = ["-j", "0", "-b", "8", "--warmup", "0", "--no-progress", "-p", "100"]


def _run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def checkpoint(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    assert main(["train", str(tiny_data), "--epochs", "1", "--lr", "0.01", "--out", str(out), *FAST]) == 0
    (run_dir,) = out.iterdir()
    return run_dir / "models" / CHECKPOINT_NAME


@pytest.mark.slow
def test_attack_sweep_prints_the_seeds_tables_figures_and_tensorboard_grids(tiny_data, checkpoint, capsys):
    status, out, _ = _run(capsys, "train", tiny_data, "-a", "-v", "--resume", checkpoint, "--attack-sweep",
                          "--attack-steps", "5", "--attack-figures", "2", *FAST)  # fmt: skip
    assert status == 0
    for row in ("| clean |", "pgd-5 eps=0.1", "pgd-10 eps=0.1", "pgd-20 eps=0.1", "pgd-5 eps=0.05", "pgd-5 eps=0.15",
                "fgsm eps=0.1", "noise eps=0.1", "(chance probe)"):  # fmt: skip
        assert row in out, f"{row!r} missing from the printed table:\n{out}"
    assert re.search(r"adversarial val top-1 [\d.]+%", out) and "no NaN/inf" in out
    run_dir = checkpoint.parent.parent
    assert [p.name for p in sorted((run_dir / "attack").glob("*.png"))] == ["attack_0.png", "attack_1.png"]
    assert "attack_0.png" in (run_dir / "attack.md").read_text()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"images": 0}).Reload()
    assert {"Image/Org_Image", "Image/Adv_Image"} <= set(events.Tags()["images"]), events.Tags()["images"]


@pytest.mark.slow
def test_pixel_mode_reports_its_budget_in_pixel_units(tiny_data, checkpoint, capsys):
    status, out, _ = _run(capsys, "train", tiny_data, "-a", "--resume", checkpoint, "--attack-mode", "pixel",
                          "--attack-eps", "4/255", "--attack-steps", "2", "--attack-figures", "0", *FAST)  # fmt: skip
    assert status == 0
    line = re.search(r"adversarial val top-1 ([\d.]+)%.*\((pgd-2 eps=4/255), pixel mode\)", out)
    assert line, f"no pixel-mode summary line in:\n{out}"
    clean = float(re.search(r"clean val top-1 ([\d.]+)%", out).group(1))
    assert float(line.group(1)) <= clean


@pytest.mark.slow
def test_adversarial_training_selects_model_best_by_pgd_accuracy(tiny_data, tmp_path, capsys):
    status, _, _ = _run(capsys, "train", tiny_data, "--epochs", "2", "--lr", "0.01", "--out", tmp_path,
                        "--adv-train", "pgd", "--adv-steps", "1", "--adv-val-images", "6", *FAST)  # fmt: skip
    assert status == 0
    (run_dir,) = tmp_path.iterdir()
    with (run_dir / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert all(r.get("val_pgd_top1") not in (None, "") for r in rows), f"columns: {list(rows[0])}"
    best = torch.load(run_dir / "models" / BEST_NAME, weights_only=True)
    scores = [float(r["val_pgd_top1"]) for r in rows]
    assert best["best_acc1"] == pytest.approx(max(scores)) and best["epoch"] == 1 + scores.index(max(scores))


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--adv-train", "pgd", "--adv-eps", "8"], "pixel units"),
        (["--adv-train", "fgsm-rs", "-e", "--resume", "x.pth.tar"], "--adv-train"),
        (["-a", "--resume", "x.pth.tar", "--attack-steps", "-1"], "--attack-steps"),
    ],
)
def test_bad_attack_flags_exit_2_naming_the_flag(tiny_data, capsys, argv, match):
    status, _, err = _run(capsys, "train", tiny_data, *argv, *FAST)
    assert status == 2 and match in err, f"status {status}, stderr {err!r}"


def test_attack_subcommand_is_train_dash_a(tiny_data, checkpoint, capsys):
    status, out, _ = _run(capsys, "attack", tiny_data, "--resume", checkpoint, "--attack-steps", "1",
                          "--attack-figures", "0", "-j", "0", "--no-progress")  # fmt: skip
    assert status == 0 and re.search(r"adversarial val top-1 [\d.]+%.*\(pgd-1 eps=0.1, course mode\)", out), out
