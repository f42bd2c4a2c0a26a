"""`--attack-early-stop` (on `miniplaces attack` and `train -a`): the pixel-mode PGD early-stops, and the report and
the printed summary say so; in course mode it is a one-line usage error naming the flag."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from impl import attack
from impl.cli import main
from impl.models import SimpleNet
from impl.robustness import EARLY_STOP_NOTE

ARGS = ["--attack-steps", "2", "--attack-figures", "0", "-j", "0", "--no-progress"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A course-style checkpoint of an untrained 3-class SimpleNet: the flag is what is tested, not the model."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "simplenet.pth.tar"
    state = SimpleNet(num_classes=3).state_dict()
    torch.save({"epoch": 1, "model_arch": "CNN", "state_dict": state, "best_acc1": 0.0}, path)
    return path


@pytest.mark.parametrize("early", [True, False], ids=["flag", "no-flag"])
def test_attack_early_stop_runs_early_stopped_pgd_and_the_report_says_so(
    tiny_data, checkpoint, tmp_path, capsys, monkeypatch, early
):
    calls: list[bool] = []  # early_stop of each PGD-2 call (FGSM calls pgd too, with steps=1)
    real_pgd = attack.pgd

    def recording_pgd(*args, **kwargs):
        if kwargs.get("steps") == 2:
            calls.append(kwargs.get("early_stop", False))
        return real_pgd(*args, **kwargs)

    monkeypatch.setattr(attack, "pgd", recording_pgd)
    flag = ["--attack-early-stop"] if early else []
    argv = ["attack", tiny_data, "--resume", checkpoint, "--attack-mode", "pixel", "--out", tmp_path, *flag, *ARGS]
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert calls and set(calls) == {early}, f"early_stop passed to pixel PGD per batch {calls}, flag given: {early}"
    summary = next(line for line in out.splitlines() if line.startswith("adversarial val top-1"))
    assert ("(early stop)" in summary) == early, f"summary line {summary!r} with the flag {'on' if early else 'off'}"
    (markdown,) = tmp_path.rglob("attack.md")
    assert (EARLY_STOP_NOTE in markdown.read_text()) == early, f"{markdown} with the flag {'on' if early else 'off'}"


def test_attack_early_stop_in_course_mode_exits_2_naming_the_flag(tiny_data, checkpoint, capsys):
    status = main([str(a) for a in ["attack", tiny_data, "--resume", checkpoint, "--attack-early-stop", *ARGS]])
    err = capsys.readouterr().err
    assert status == 2 and "--attack-early-stop needs --attack-mode pixel" in err, f"status {status}, stderr {err!r}"


def test_attack_help_names_the_early_stop_flag(capsys):
    with pytest.raises(SystemExit):
        main(["attack", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--attack-early-stop" in text and "once it is misclassified" in text, text
