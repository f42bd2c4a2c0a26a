"""The robustness report of a model on a val loader: clean vs adversarial top-1/top-5 (course-mode PGD by default,
sweeps on request), the Carlini et al. sanity checks, 4-panel figures of the first batch, and `attack.md`.

`robustness_report(model, loader, device, run_dir)` is what `miniplaces train -a` / `miniplaces attack` and the demo's
robustness section run; a test or a notebook can call it the same way. A later report of the same run folder is
written beside the earlier ones (`attack-2.md`, `attack-2/`, ...), never over them. Spec: spec/cli/.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from impl.attack import Mode, RobustnessReport

log = logging.getLogger(__name__)

EARLY_STOP_NOTE = (
    "PGD early-stopped: an input left the attack at the first step that fooled the model, so its image is the first "
    "that fooled it, not the one of highest loss. Robust accuracy is never above the full run's, up to float rounding."
)


def robustness_report(
    model: nn.Module,
    val_loader: Any,
    device: torch.device,
    run_dir: Path,
    *,
    mode: Mode = "course",
    eps: float | None = None,
    alpha: float | None = None,
    steps: int = 10,
    early_stop: bool = False,
    sweep: bool = False,
    max_batches: int | None = None,
    figures: int = 4,
    vis: bool = False,
    amp: str = "off",
    progress: bool = False,
    class_names: Sequence[str] | None = None,
) -> tuple[RobustnessReport, str, Path]:
    """Evaluate, draw the first batch's figures, write `<run_dir>/attack.md` (or the next free `attack-<n>.md`, its
    figures in `attack[-<n>]/`); returns (report, the main attack's name, the markdown file written).

    `early_stop` (pixel mode): every PGD early-stops (`impl.attack.pgd(early_stop=True)`); the report says so."""
    from impl.attack import default_specs, evaluate_robustness, sweep_specs
    from impl.train import autocast
    from impl.viz import log_image_grids, save_attack_figures

    main_spec = default_specs(mode, eps, steps, alpha, early_stop)[0]  # bad settings: a ValueError naming them
    specs = (sweep_specs if sweep else default_specs)(mode, eps, steps, alpha, early_stop=early_stop)
    classes = class_names or getattr(getattr(val_loader, "dataset", None), "classes", None)
    markdown, figure_dir = _claim_attack_names(run_dir)
    written: list[Path] = []

    def on_batch(i: int, images: torch.Tensor, labels: torch.Tensor, adversarial: dict[str, torch.Tensor]) -> None:
        if i != 0:
            return
        adv = adversarial[main_spec.name]
        with torch.no_grad():
            clean_pred, adv_pred = model(images).argmax(1), model(adv).argmax(1)
        if figures > 0:
            written.extend(save_attack_figures(figure_dir, images, adv, labels, clean_pred, adv_pred, classes, figures))
        if vis:
            from torch.utils.tensorboard import SummaryWriter

            with SummaryWriter(str(run_dir)) as writer:
                log_image_grids(writer, 0, images, adv)
            log.info("wrote Image/Org_Image and Image/Adv_Image to TensorBoard in %s", run_dir)

    log.info("Generating adversarial samples for the model ..")
    try:
        with autocast(device, amp):
            report = evaluate_robustness(
                model, val_loader, specs, device, max_batches=max_batches, progress=progress, on_batch=on_batch
            )
    except BaseException:  # a failed or interrupted attack leaves no empty report claiming its name
        markdown.unlink(missing_ok=True)
        raise
    units = "normalized units" if mode == "course" else "pixel units"
    lines = [f"# Robustness ({mode} mode, {units}), {report.n} val images", ""]
    if early_stop:
        lines += [EARLY_STOP_NOTE, ""]
    lines += [report.to_markdown(), ""]
    lines += [f"![{p.stem}]({figure_dir.name}/{p.name})" for p in written]
    markdown.write_text("\n".join(lines) + "\n")
    return report, main_spec.name, markdown


def _claim_attack_names(run_dir: Path) -> tuple[Path, Path]:
    """The first free (`attack.md`, `attack/`), (`attack-2.md`, `attack-2/`), ...: the markdown file is created
    exclusively, so two attacks of one run at once still get different names."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for n in itertools.count(1):
        stem = "attack" if n == 1 else f"attack-{n}"
        markdown, figures = run_dir / f"{stem}.md", run_dir / stem
        if figures.exists():
            continue
        try:
            markdown.open("x").close()
        except FileExistsError:
            continue
        return markdown, figures
    raise AssertionError("unreachable")
