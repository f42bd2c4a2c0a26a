"""`miniplaces demo`'s errors (impl/demo.py, impl/cli.py run_demo): what its inputs get wrong is one line naming the
culprit; anything else is a bug and keeps its traceback, a ValueError included."""

from __future__ import annotations

import pytest

from impl.cli import main
from impl.data import make_synthetic

QUICK = ["--epochs", "1", "-b", "8", "-j", "0", "--no-progress", "--attack-images", "0"]


def _one_line_error(capsys: pytest.CaptureFixture[str], *argv: object) -> str:
    status = main(["demo", *(str(a) for a in argv), *QUICK])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and "Traceback" not in err, f"status {status}, stderr:\n{err}"
    return lines[0]


def test_a_synth_root_that_is_a_file_is_one_line_naming_it(tmp_path, capsys):
    culprit = tmp_path / "notes.txt"
    culprit.write_text("not a dataset")
    line = _one_line_error(capsys, "--synth-root", culprit, "--out", tmp_path / "runs")
    assert f"{culprit} exists and is not a folder" in line, line
    assert culprit.read_text() == "not a dataset" and not (tmp_path / "runs").exists()


def test_a_foreign_synth_root_is_one_line_and_left_alone(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("mine")
    line = _one_line_error(capsys, "--synth-root", mine, "--out", tmp_path / "runs")
    assert f"{mine} is not empty and holds no synthetic set" in line, line
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"], "the demo wrote into a folder it does not own"


def test_negative_attack_images_is_refused_naming_the_flag(tmp_path, capsys):
    status = main(["demo", "--synth-root", str(tmp_path / "s"), "--out", str(tmp_path), "--attack-images", "-1"])
    err = capsys.readouterr().err
    assert status == 2 and "--attack-images must be >= 0" in err and "got -1" in err, err
    assert not (tmp_path / "s").exists(), "nothing may be made before the flags are checked"


@pytest.mark.parametrize("stage", ["_train", "_report"])
def test_a_value_error_from_a_bug_keeps_its_traceback(stage, tmp_path, monkeypatch):
    """A ValueError raised by the demo's own code is not dressed up as a bad-input line (exit 2)."""
    import impl.demo

    def buggy(*args, **kwargs):
        raise ValueError(f"a bug in {stage}")

    monkeypatch.setattr(impl.demo, stage, buggy)
    if stage == "_report":  # get past the training without running it
        monkeypatch.setattr(impl.demo, "_train", lambda cfg, data: tmp_path / "run")
    root = make_synthetic(tmp_path / "s", num_classes=2, train_per_class=1, val_per_class=1, image_size=16)
    with pytest.raises(ValueError, match=f"a bug in {stage}"):
        main(["demo", "--synth-root", str(root), "--out", str(tmp_path / "runs"), *QUICK])


def test_a_missing_data_folder_is_one_line_naming_it(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    line = _one_line_error(capsys, "--data", missing, "--out", tmp_path / "runs")
    assert f"{missing} does not exist" in line, line
