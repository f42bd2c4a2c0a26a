"""The main job behind `miniplaces demo` and `nox -s demo`: data, a short training, the best checkpoint evaluated with
flip averaging, and `report.md` with its curves and a course-mode PGD section. Spec: spec/cli/test_cli.py, spec/demo/.

    from impl.demo import DemoConfig, run_demo
    report = run_demo(DemoConfig(epochs=2, workers=0))     # <out>/<run>/report.md

The training is the `train` command itself (`impl.cli.train_command`: the same flags, checks, run folder and log),
so the demo shows what a user's own run does. Like the command line it sits in the top room: it may import every
other one, the CLI included (which imports it only inside `run_demo`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


class DemoTrainingFailed(RuntimeError):
    """The training step stopped (diverged, or catastrophic overfitting); it printed why; `status` is its exit code."""

    def __init__(self, status: int) -> None:
        super().__init__(f"the demo's training exited with status {status}")
        self.status = status


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs (the `miniplaces demo` flags)."""

    data: Path | None = None  # a real MiniPlaces root; None: the synthetic set in synth_root
    synth_root: Path = Path("data/miniplaces-synthetic")  # where the synthetic set lives, or is made when absent
    model: str = "simplenet"  # one of impl.models.MODELS
    epochs: int = 6
    warmup: int = 1  # epochs
    batch_size: int = 32
    lr: float = 0.02
    workers: int = 2  # data-loading processes
    device: str | None = None  # a torch device; None: cuda if available
    seed: int = 2022
    out: Path = Path("logs")  # parent of the run folder
    attack_images: int = 64  # val images attacked (course-mode PGD-10) for the robustness section; 0 skips it
    progress: bool = True  # progress bars


def run_demo(cfg: DemoConfig) -> Path:
    """Make the synthetic set if needed, train, evaluate, write the report; returns `<run>/report.md`.

    Bad data raises the data room's `DataError` naming the folder or file, an unwritable output folder `OSError`, bad
    flags the command line's `UsageError`, a checkpoint that does not load `CheckpointError`; a training that stops
    raises `DemoTrainingFailed`. Anything else (a plain ValueError included) is a bug and keeps its traceback.
    """
    from impl.data import DataError, make_synthetic

    synthetic = cfg.data is None
    data = cfg.synth_root if cfg.data is None else cfg.data
    if synthetic and not (data / "train.txt").is_file():  # make_synthetic refuses a file or a foreign folder
        log.info("making the SYNTHETIC dataset in %s", data)
        make_synthetic(data)
    elif not synthetic and not data.is_dir():
        raise DataError(f"{data} does not exist (give a MiniPlaces folder, or no --data for the synthetic set)")
    run_dir = _train(cfg, data)
    return _report(cfg, data, synthetic, run_dir)


def _train(cfg: DemoConfig, data: Path) -> Path:
    """The `train` command with the demo's settings; returns the run folder it made."""
    from impl.cli import build_parser, train_command

    argv = ["train", str(data), "--model", cfg.model, "--epochs", str(cfg.epochs), "--warmup", str(cfg.warmup),
            "-b", str(cfg.batch_size), "--lr", str(cfg.lr), "-j", str(cfg.workers), "--seed", str(cfg.seed),
            "--out", str(cfg.out)]  # fmt: skip
    argv += ["--device", cfg.device] if cfg.device else []
    argv += [] if cfg.progress else ["--no-progress"]
    status, run_dir = train_command(build_parser().parse_args(argv))
    if status or run_dir is None:
        raise DemoTrainingFailed(status)
    return run_dir


def _report(cfg: DemoConfig, data: Path, synthetic: bool, run_dir: Path) -> Path:
    from impl.data import MiniPlaces, val_transform
    from impl.demo_report import write_report
    from impl.models import build_model
    from impl.train import evaluate, load_checkpoint, load_weights, make_eval_loader

    best = run_dir / "models" / "model_best.pth.tar"
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    val_set = MiniPlaces(data, "val", transform=val_transform())
    model = build_model(cfg.model, val_set.num_classes).to(device)
    load_weights(model, load_checkpoint(best, device), best)
    log.info("evaluating %s with flip averaging", best)
    final = evaluate(model, make_eval_loader(val_set, 100, workers=cfg.workers), device=device, flip=True)
    report = write_report(
        run_dir,
        data=data,
        synthetic=synthetic,
        model_arch=cfg.model,
        flip_eval=final,
        classes=val_set.classes,
        device=str(device),
    )
    if cfg.attack_images > 0:
        _attack_section(report, model, val_set, device, run_dir, cfg.attack_images, cfg.workers)
    return report


def _attack_section(
    report: Path, model: nn.Module, val_set: Any, device: torch.device, run_dir: Path, n: int, workers: int
) -> None:
    """Append the robustness table, its sanity checks and a 4-panel figure to the demo's report.md."""
    from torch.utils.data import Subset

    from impl.robustness import robustness_report
    from impl.train import make_eval_loader

    subset = Subset(val_set, range(min(n, len(val_set))))
    loader = make_eval_loader(subset, 64, workers=workers)
    result, main, markdown = robustness_report(model, loader, device, run_dir, figures=2, class_names=val_set.classes)
    section = [
        "",
        f"## Robustness: course-mode PGD on {result.n} val images",
        "",
        "PGD-10 toward each image's least confident class, eps = 0.1 in normalized units (about 6/255 in pixels), "
        "with FGSM and uniform noise in the same ball as baselines; the checks are the Carlini et al. (2019) "
        f"sanity list. Full table: `{markdown.name}`.",
        "",
        result.to_markdown(),
        "",
        f"![{main}: original, adversarial, perturbation x20, heatmap]({markdown.stem}/attack_0.png)",
        "",
    ]
    with report.open("a") as fh:
        fh.write("\n".join(section))
