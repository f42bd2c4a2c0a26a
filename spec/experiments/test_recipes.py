"""The table of experiments is consistent, the CLI lists and refuses clearly, the data subset and the accuracy report
are what they claim. Fast (no training): the reruns themselves are `test_reproduce.py`, marker `training`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from impl import accuracy_report, experiments
from impl.adversarial import AdvTrainConfig
from impl.cli import MODELS, main
from impl.experiments import (
    BY_NAME,
    EXPERIMENTS,
    DataSpec,
    Experiment,
    ExperimentError,
    curve_difference,
    prepare_data,
    select_classes,
    train_config,
)
from impl.train import ConfigError, TrainConfig

KNOWN_METRICS = {
    "train": {"top1", "top5", "flip_top1", "flip_top5"},
    "attack": {"top1", "top5", "clean_top1", "steps5_top1", "steps20_top1", "eps_lo_top1", "eps_hi_top1"},
    "adversarial": {"top1", "top5", "pgd10_top1", "pgd10_top5", "natural_pgd10_top1", "steps5_top1"},
}


@pytest.mark.parametrize("exp", EXPERIMENTS, ids=lambda e: e.name)
def test_every_experiment_names_a_known_model_and_valid_settings(exp: Experiment) -> None:
    assert exp.model in MODELS, f"{exp.name}: unknown model {exp.model!r}"
    for scale in ("full", "reduced"):
        cfg = train_config(exp, scale)  # raises on an unknown field or a bad value
        assert isinstance(cfg, TrainConfig) and cfg.model_arch == exp.model
        recipe = exp.recipe(scale)
        assert set(recipe.floors) <= KNOWN_METRICS[exp.kind], f"{exp.name} ({scale}) floors {set(recipe.floors)}"
        assert recipe.reason or scale == "full", f"{exp.name}: a reduced floor needs its reason"
        assert recipe.image_size % 16 == 0, f"{exp.name}: {recipe.image_size} px does not fit the ViT's 16 px patches"
    if exp.adversarial:
        AdvTrainConfig(**exp.adversarial)
    assert exp.kind != "adversarial" or exp.adversarial, f"{exp.name}: adversarial training without its settings"
    assert exp.seed, f"{exp.name}: no seed numbers"


def test_names_are_unique_and_bases_come_first() -> None:
    names = [e.name for e in EXPERIMENTS]
    assert len(set(names)) == len(names), names
    for i, exp in enumerate(EXPERIMENTS):
        if exp.base is not None:
            assert exp.base in names[:i], f"{exp.name}'s base {exp.base} must come earlier in the table"


@pytest.mark.parametrize("exp", [e for e in EXPERIMENTS if e.base], ids=lambda e: e.name)
def test_an_experiment_uses_its_base_data_where_it_compares_with_it(exp: Experiment) -> None:
    base = BY_NAME[exp.base]  # type: ignore[index]
    for scale in ("full", "reduced"):
        if exp.needs_base(scale):
            mine, theirs = exp.recipe(scale), base.recipe(scale)
            assert (mine.data, mine.image_size) == (theirs.data, theirs.image_size), f"{exp.name} ({scale})"


def test_the_custom_conv_compares_its_curve_only_on_the_native_recipe() -> None:
    conv = BY_NAME["simplenet-custom-conv"]
    assert conv.custom_conv and conv.needs_base("reduced"), "reduced: same recipe as SimpleNet, so curves compare"
    assert not conv.needs_base("full"), "full: the seed's 10 epochs against SimpleNet's 60 cannot be compared"


def test_full_scale_is_the_seed_configuration() -> None:
    assert BY_NAME["simplenet"].full.epochs == 60 and BY_NAME["vit"].full.epochs == 90
    vit = train_config(BY_NAME["vit"], "full")
    assert (vit.optimizer, vit.lr, vit.weight_decay, vit.clip_grad) == ("adamw", 0.01, 0.05, 1.0)
    assert train_config(BY_NAME["customnet"], "full").optimizer == "adam"
    assert AdvTrainConfig(**BY_NAME["adv-pgd3"].adversarial).steps == 3
    for exp in EXPERIMENTS:
        assert exp.full.data.min_train_images == 100_000 and exp.full.image_size == 128, exp.name
        for metric, floor in exp.full.floors.items():
            assert floor < exp.seed[metric], f"{exp.name}: full floor {floor} is not below the seed's {exp.seed}"


def test_reproduce_list_prints_every_experiment(capsys) -> None:
    assert main(["reproduce", "--list", "--reduced"]) == 0
    out = capsys.readouterr().out
    for exp in EXPERIMENTS:
        assert exp.name in out, f"{exp.name} missing from --list:\n{out}"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["reproduce", "no-such-experiment", "--reduced"], "unknown experiment 'no-such-experiment'"),
        (["reproduce"], "give an experiment NAME"),
        (["reproduce", "simplenet", "--reduced", "--data", "/nonexistent/miniplaces"], "/nonexistent/miniplaces"),
    ],
)
def test_reproduce_errors_are_one_line(argv, needle, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err


def test_full_scale_without_data_names_miniplaces_root(capsys, monkeypatch) -> None:
    monkeypatch.delenv("MINIPLACES_ROOT", raising=False)
    assert main(["reproduce", "simplenet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "MINIPLACES_ROOT" in err and len(err.splitlines()) == 1, err


def _fake_miniplaces(root: Path, classes: int = 6, train: int = 4, val: int = 3) -> Path:
    root.mkdir()
    (root / "images").mkdir()
    (root / "categories.txt").write_text("".join(f"/c/class{c} {c}\n" for c in range(classes)))
    (root / "train.txt").write_text(
        "".join(f"train/c/class{c}/{i:08d}.jpg {c}\n" for i in range(train) for c in range(classes))
    )
    (root / "val.txt").write_text(
        "".join(f"val/{c * val + i:08d}.jpg {c}\n" for c in range(classes) for i in range(val))
    )
    return root


def test_prepare_data_keeps_a_relabelled_class_subset_and_links_the_images(tmp_path) -> None:
    source = _fake_miniplaces(tmp_path / "src")
    dest = prepare_data(source, DataSpec(classes=3, train_per_class=2, val_per_class=1), tmp_path / "subset")
    assert select_classes(6, 3) == [0, 2, 4]
    train = [line.split() for line in (dest / "train.txt").read_text().splitlines()]
    assert len(train) == 6 and sorted(int(y) for _, y in train) == [0, 0, 1, 1, 2, 2]
    assert all(path.startswith(f"train/c/class{2 * int(y)}/") for path, y in train), train
    val = [line.split() for line in (dest / "val.txt").read_text().splitlines()]
    assert val == [["val/00000000.jpg", "0"], ["val/00000006.jpg", "1"], ["val/00000012.jpg", "2"]]
    assert (dest / "categories.txt").read_text() == "/c/class0 0\n/c/class2 1\n/c/class4 2\n"
    assert (dest / "images").resolve() == (source / "images").resolve()
    assert prepare_data(source, DataSpec(), tmp_path / "unused") == source, "everything asked: the source itself"


def test_full_scale_refuses_a_subset_by_its_size(tmp_path) -> None:
    source = _fake_miniplaces(tmp_path / "src")
    with pytest.raises(ExperimentError, match=r"has 24 training images; the full scale needs the full set \(100,000\)"):
        prepare_data(source, DataSpec(min_train_images=100_000), tmp_path / "x")


def test_the_course_sweeps_eps_rows_can_reach_their_edge() -> None:
    """With α fixed at the course's 0.01, ten steps never leave the ε 0.1 ball, so the ε × 1½ row would repeat the
    course's attack; the sweep scales α with ε so that each PGD-10 row spans its own ball, and keeps the course's
    PGD-5/10/20 at α 0.01 (PGD-5 reaches half the ball, as in the seed)."""
    specs = experiments.course_sweep_specs()
    names = [s.name for s in specs]
    assert len(set(names)) == len(names), names
    pgd10 = sorted((round(s.eps, 9), round(s.step_size, 9)) for s in specs if s.kind == "pgd" and s.steps == 10)
    assert pgd10 == [(0.05, 0.005), (0.1, 0.01), (0.15, 0.015), (1.0, 0.25)], pgd10  # the last: the chance probe
    steps = sorted((s.steps, s.step_size, s.reaches_edge) for s in specs if s.kind == "pgd" and s.eps == 0.1)
    assert steps == [(5, 0.01, False), (10, 0.01, True), (20, 0.01, True)], steps
    assert all(s.reaches_edge for s in specs if s.kind == "pgd" and s.steps == 10), "an ε row cannot reach its edge"
    assert {(s.kind, round(s.eps, 9)) for s in specs if s.kind != "pgd"} == {
        (k, e) for k in ("fgsm", "noise") for e in (0.05, 0.1, 0.15)
    }, "FGSM and noise baselines at every ε"


def test_curve_difference_reports_epoch_one_and_the_largest_gaps() -> None:
    a = [{"train_loss": 2.0, "val_loss": 1.0}, {"train_loss": 1.5, "val_loss": 0.8}]
    b = [{"train_loss": 2.0, "val_loss": 1.01}, {"train_loss": 1.47, "val_loss": 0.8}]
    gaps = curve_difference(a, b)
    assert gaps == pytest.approx(
        {"epoch1_loss_rel_diff": 0.01 / 1.01, "train_loss_rel_diff": 0.03 / 1.47, "val_loss_rel_diff": 0.01 / 1.01}
    )
    with pytest.raises(ExperimentError, match="2 and 1 epochs"):
        curve_difference(a, b[:1])


def _raw(scale: str, name: str, **metrics: float) -> dict:
    exp = BY_NAME[name]
    return {
        "experiment": name, "scale": scale, "kind": exp.kind, "seed": dict(exp.seed), "metrics": metrics,
        "floors": dict(exp.recipe(scale).floors), "epochs": exp.recipe(scale).epochs, "wall_time_s": 90.0,
        "device": "cpu model", "threads": 1, "commit": "abc1234", "note": "", "image_size": 64,
        "data": {"classes": ["a", "b"], "train_images": 400, "val_images": 200},
    }  # fmt: skip


def test_accuracy_report_puts_the_seed_beside_ours_per_scale(tmp_path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    runs = [
        _raw("reduced", "simplenet", top1=31.25, top5=77.5, flip_top1=32.5),
        _raw("full", "simplenet", top1=42.125, top5=72.0, flip_top1=43.0),
        _raw("reduced", "pgd-course", top1=3.5, top5=40.0, clean_top1=30.0, steps5_top1=6.0, steps20_top1=1.5),
    ]
    for r in runs:
        (raw / f"accuracy-{r['scale']}-{r['experiment']}.json").write_text(json.dumps(r))
    out = tmp_path / "accuracy.md"
    assert accuracy_report.main(["--raw", str(raw), "--out", str(out)]) == 0
    text = out.read_text()
    assert "generated — do not edit" in text
    full, reduced = text.split("## Reduced scale")
    assert "| simplenet" in full and "43.75 / 73.44" in full and "42.12 / 72.00" in full
    assert "31.25 / 77.50" in reduced and "31.25" not in full, "each scale's runs in its own table"
    floor = BY_NAME["simplenet"].reduced.floors["top1"]
    assert f"top1 ≥ {floor:g}: {'yes' if floor <= 31.25 else 'NO'}" in reduced, "the floor column"
    sweep = reduced.split("### Course PGD")[1]
    assert "| PGD-5" in sweep and "18.50" in sweep and "6.00" in sweep and "| PGD-20" in sweep and "1.50" in sweep


def test_accuracy_report_without_raw_results_is_an_error(tmp_path, capsys) -> None:
    assert accuracy_report.main(["--raw", str(tmp_path), "--out", str(tmp_path / "a.md")]) == 2
    assert "no accuracy-*.json" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------------
# `miniplaces reproduce` around the run: where results go, what it refuses, what it never destroys. The training and
# the attack are stubbed (their reruns are test_reproduce.py); the data is a fake MiniPlaces folder of 12 classes.


@pytest.fixture
def stubbed(tmp_path, monkeypatch) -> dict:
    """Stub the runners (each call is counted, its run folder marked) and point RAW_DIR at an empty folder."""
    calls: dict = {"train": [], "attack": [], "options": [], "repo_raw": tmp_path / "repo-raw"}

    def runner(kind: str):
        def run(exp, scale, root, device, run_dir, base, *options) -> dict:
            calls[kind].append((exp.name, base is not None))
            calls["options"].append((exp.name, options))
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "marker").write_text(f"{exp.name} {len(calls[kind])}")
            return {"metrics": {"top1": 50.0}}

        return run

    monkeypatch.setattr(experiments, "_run_training", runner("train"))
    monkeypatch.setattr(experiments, "_run_attack", runner("attack"))
    monkeypatch.setattr(experiments, "RAW_DIR", calls["repo_raw"])
    return calls


def _reproduce(name: str, data: Path, out: Path, *extra: str) -> int:
    return main(["reproduce", name, "--reduced", "--data", str(data), "--out", str(out), "-j", "0", *extra])


def test_reproduce_writes_raw_results_under_out_and_only_record_writes_reports_raw(tmp_path, stubbed, capsys) -> None:
    """A review run on other data overwrote the committed reports/raw row: without --record nothing goes there."""
    data, out = _fake_miniplaces(tmp_path / "src", classes=12), tmp_path / "out"
    assert _reproduce("simplenet", data, out) == 0, capsys.readouterr().err
    assert (out / "raw" / "accuracy-reduced-simplenet.json").is_file()
    assert not stubbed["repo_raw"].exists(), f"wrote into reports/raw: {list(stubbed['repo_raw'].iterdir())}"
    assert _reproduce("simplenet", data, out, "--record") == 0, capsys.readouterr().err
    assert [p.name for p in stubbed["repo_raw"].iterdir()] == ["accuracy-reduced-simplenet.json"]


def test_reproduce_refuses_data_with_fewer_classes_than_the_recipe_before_writing(tmp_path, stubbed, capsys) -> None:
    data, out = _fake_miniplaces(tmp_path / "src", classes=4), tmp_path / "out"
    assert _reproduce("simplenet", data, out, "--record") == 2
    err = capsys.readouterr().err.strip()
    assert "simplenet: the recipe takes 10 classes, but the data has only 4" in err and len(err.splitlines()) == 1, err
    assert not stubbed["repo_raw"].exists() and not stubbed["train"], "refused, yet it ran or recorded"


def test_select_classes_refuses_more_classes_than_the_data_has() -> None:
    assert select_classes(10, 10) == list(range(10))
    with pytest.raises(ExperimentError, match="takes 11 classes, but the data has only 10"):
        select_classes(10, 11)


def test_recording_is_refused_when_the_data_lacks_the_recipes_classes(tmp_path) -> None:
    """The full recipe takes every class: a 12-class folder must not land in the committed table."""
    data = _fake_miniplaces(tmp_path / "src", classes=12)
    with pytest.raises(ExperimentError, match="its data has 12 classes, the recipe 100; drop --record"):
        experiments._check_recordable(BY_NAME["simplenet"], "full", data)


@pytest.mark.parametrize(("flags", "needle"), [(["-j", "-1"], "-j must be >= 0"), (["--threads", "0"], "--threads")])
def test_a_bad_flag_is_refused_before_the_earlier_run_is_touched(tmp_path, stubbed, capsys, flags, needle) -> None:
    data, out = _fake_miniplaces(tmp_path / "src", classes=12), tmp_path / "out"
    assert _reproduce("simplenet", data, out) == 0
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert _reproduce("simplenet", data, out, *flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "TrainConfig" not in err[0], err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before, "a refused run changed the out folder"


def test_an_earlier_run_is_moved_aside_not_deleted(tmp_path, stubbed, capsys) -> None:
    data, out = _fake_miniplaces(tmp_path / "src", classes=12), tmp_path / "out"
    assert _reproduce("simplenet", data, out) == 0
    assert _reproduce("simplenet", data, out) == 0
    aside = sorted(out.glob("reduced-simplenet.old-*"))
    assert len(aside) == 1 and (aside[0] / "marker").read_text() == "simplenet 1", aside
    assert (out / "reduced-simplenet" / "marker").read_text() == "simplenet 2"


def test_a_second_reproduce_into_a_busy_out_folder_is_refused(tmp_path, stubbed, capsys) -> None:
    from impl.train import hold_lock

    data, out = _fake_miniplaces(tmp_path / "src", classes=12), tmp_path / "out"
    with hold_lock(out, "held by the test"):
        assert _reproduce("simplenet", data, out) == 2
    err = capsys.readouterr().err
    assert "is in use by another run" in err and not stubbed["train"], err


def test_the_base_run_is_reused_only_on_the_same_data(tmp_path, stubbed, capsys) -> None:
    """pgd-course attacks simplenet's model: a finished base run is reused, unless the data's split files differ."""
    data, out = _fake_miniplaces(tmp_path / "src", classes=12), tmp_path / "out"
    assert _reproduce("pgd-course", data, out) == 0
    assert _reproduce("pgd-course", data, out) == 0
    assert stubbed["train"] == [("simplenet", False)], "the base ran again on the same data"
    with (data / "train.txt").open("a") as fh:
        fh.write("train/c/class0/00000099.jpg 0\n")
    assert _reproduce("pgd-course", data, out) == 0
    assert stubbed["train"] == [("simplenet", False)] * 2, "the base was reused on other data"
    assert stubbed["attack"] == [("pgd-course", True)] * 3
    result = json.loads((out / "reduced-simplenet" / "result.json").read_text())
    assert {"source", "splits_sha256", "recipe", "commit"} <= result["fingerprint"].keys(), result["fingerprint"]


def test_reproduce_all_names_the_experiment_that_failed(tmp_path, stubbed, monkeypatch, capsys) -> None:
    from impl.data import DataError

    def broken(exp, *args) -> dict:
        raise DataError(f"bad image for {exp.name}")

    monkeypatch.setattr(experiments, "_run_attack", broken)
    data, out = _fake_miniplaces(tmp_path / "src", classes=12), tmp_path / "out"
    assert _reproduce("all", data, out) == 2
    err = capsys.readouterr().err.strip()
    assert err == "miniplaces reproduce: error: pgd-course: bad image for pgd-course", err


def test_reproduce_lets_a_bug_raise_instead_of_calling_it_a_usage_error(tmp_path, stubbed, monkeypatch) -> None:
    """Only our own error types become one-line usage errors; a ValueError from a bug keeps its traceback."""

    def buggy(*args) -> dict:
        raise ValueError("a bug")

    monkeypatch.setattr(experiments, "_run_training", buggy)
    with pytest.raises(ValueError, match="a bug"):
        _reproduce("simplenet", _fake_miniplaces(tmp_path / "src", classes=12), tmp_path / "out")


def test_data_on_device_reaches_the_training_run_and_keeps_bases_apart(tmp_path, stubbed, capsys) -> None:
    """--data-on-device is the training runner's last option, the result names the loader, and a base trained by
    the course DataLoader is not reused for a run that asks for the DeviceLoader (their augmentation draws differ)."""
    data, out = _fake_miniplaces(tmp_path / "src", classes=12), tmp_path / "out"
    assert _reproduce("pgd-course", data, out) == 0, capsys.readouterr().err
    assert _reproduce("pgd-course", data, out, "--data-on-device") == 0, capsys.readouterr().err
    assert stubbed["train"] == [("simplenet", False)] * 2, "the course-loader base was reused for --data-on-device"
    train_options = [opts for name, opts in stubbed["options"] if name == "simplenet"]
    assert [opts[-1] for opts in train_options] == [False, True], train_options
    assert [opts for name, opts in stubbed["options"] if name == "pgd-course"] == [(), ()], "the attack got options"
    result = json.loads((out / "reduced-simplenet" / "result.json").read_text())
    assert result["fingerprint"]["data_on_device"] is True and result["loader"].startswith("DeviceLoader"), result
    assert _reproduce("pgd-course", data, out, "--data-on-device") == 0
    assert len(stubbed["train"]) == 2, "the DeviceLoader base was not reused on the same request"


def test_data_on_device_is_refused_under_torchrun(tmp_path, stubbed, capsys, monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    data, out = _fake_miniplaces(tmp_path / "src", classes=12), tmp_path / "out"
    assert _reproduce("simplenet", data, out, "--data-on-device") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--data-on-device runs in one process" in err[0], err
    assert not stubbed["train"] and not out.exists(), "refused, yet it ran or wrote"


def test_the_device_train_loader_gives_the_recipes_batches_from_the_split(tmp_path, monkeypatch) -> None:
    """On real image files: every drop-last batch is (B, 3, s, s) at the recipe's crop, float, on the device, with
    labels drawn from the split without repeats in an epoch; a batch larger than the split is one error naming it.
    The cache goes where $MINIPLACES_CACHE says (never into the user's home from a test)."""
    from impl.data import make_synthetic

    monkeypatch.setenv("MINIPLACES_CACHE", str(tmp_path / "cache"))

    root = make_synthetic(tmp_path / "syn", num_classes=3, train_per_class=5, val_per_class=1, image_size=32)
    cfg = experiments.train_config(BY_NAME["simplenet"], "reduced", batch_size=4, workers=0)
    loader = experiments.device_train_loader(root, cfg, 24, torch.device("cpu"))
    batches = list(loader)
    assert len(batches) == 15 // 4, len(batches)
    for x, _ in batches:
        assert x.shape == (4, 3, 24, 24) and x.dtype == torch.float32 and x.device.type == "cpu", (x.shape, x.dtype)
    assert len(list((tmp_path / "cache").glob("train-*.npy"))) == 2, list((tmp_path / "cache").iterdir())
    labels = torch.cat([y for _, y in batches])
    assert len(set(labels.tolist()) - {0, 1, 2}) == 0 and torch.bincount(labels, minlength=3).max() <= 5, labels
    too_big = experiments.train_config(BY_NAME["simplenet"], "reduced", batch_size=16, workers=0)
    with pytest.raises(ConfigError, match=r"15 images \(.*train\.txt\)") as info:
        experiments.device_train_loader(root, too_big, 24, torch.device("cpu"))
    assert "\n" not in str(info.value), str(info.value)


def test_the_raw_record_says_what_ran_where_on_what_and_for_how_long(tmp_path, stubbed) -> None:
    """The issue's provenance: device, data used, epochs, wall time, commit, and which loader made the batches."""
    import subprocess

    data, out = _fake_miniplaces(tmp_path / "src", classes=12, train=4, val=3), tmp_path / "out"
    assert _reproduce("simplenet", data, out) == 0
    record = json.loads((out / "raw" / "accuracy-reduced-simplenet.json").read_text())
    recipe = BY_NAME["simplenet"].reduced
    classes = recipe.data.classes
    assert (record["experiment"], record["scale"], record["epochs"]) == ("simplenet", "reduced", recipe.epochs), record
    assert record["data"]["source"] == str(data)
    assert len(record["data"]["classes"]) == classes, record["data"]
    assert (record["data"]["train_images"], record["data"]["val_images"]) == (4 * classes, 3 * classes), record["data"]
    assert record["device"] and record["torch"] == torch.__version__ and record["threads"] >= 1, record
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=experiments.REPO)
    assert head.returncode != 0 or record["commit"].split("-")[0] == head.stdout.strip(), record["commit"]
    assert 0 <= record["wall_time_s"] < 60, record["wall_time_s"]
    assert record["loader"] == "course DataLoader: per-image transforms, 0 worker processes", record["loader"]
    assert record["fingerprint"]["data_on_device"] is False, record["fingerprint"]


def test_committed_accuracy_report_is_what_the_generator_makes_of_the_committed_raw_files() -> None:
    results = accuracy_report.load(experiments.RAW_DIR)
    if not results:
        pytest.skip(f"no accuracy-*.json in {experiments.RAW_DIR}")
    committed = (experiments.REPO / "reports" / "accuracy.md").read_text()
    assert committed == accuracy_report.render(results), "reports/accuracy.md differs: rerun `nox -s reports`"
