"""The demo's markdown report: what ran, on what data, the per-epoch table and the curves. Spec: spec/cli/.

`write_report` reads the run folder that `impl.train.fit` wrote (config.json, metrics.csv, curves.png) and adds
`report.md` beside them; it never retrains or recomputes a metric.
"""

from __future__ import annotations

import csv
import json
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch


def _table(rows: Sequence[Mapping[str, str]], columns: Sequence[tuple[str, str, str]]) -> list[str]:
    """Markdown table; columns are (csv key, header, format)."""
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "---:|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(format(float(row[k]), f) for k, _, f in columns) + " |")
    return lines


def write_report(
    run_dir: Path,
    *,
    data: Path,
    synthetic: bool,
    model_arch: str,
    flip_eval: Mapping[str, float],
    classes: Sequence[str],
    device: str,
) -> Path:
    """Write `<run_dir>/report.md` and return its path."""
    cfg = json.loads((run_dir / "config.json").read_text())
    with (run_dir / "metrics.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"{run_dir / 'metrics.csv'} has no epochs to report")
    best = max(rows, key=lambda r: float(r["val_top1"]))
    kind = "SYNTHETIC (procedurally drawn scenes, not MiniPlaces photographs)" if synthetic else "MiniPlaces images"
    lines = [
        f"# MiniPlaces demo: {model_arch}",
        "",
        f"- data: `{data}` — {kind}, {len(classes)} classes",
        f"- model: `{model_arch}`, {cfg['epochs']} epochs ({cfg['warmup']} warmup), batch {cfg['batch_size']}, "
        f"{cfg['optimizer'].upper()} lr {cfg['lr']}, weight decay {cfg['weight_decay']}, seed {cfg['seed']}",
        f"- device: {device}; torch {torch.__version__}; {platform.platform()}",
        f"- training time: {sum(float(r['seconds']) for r in rows):.1f} s",
        "",
        "## Result",
        "",
        f"Best epoch {int(float(best['epoch']))} (`models/model_best.pth.tar`), evaluated on val with the course's "
        f"horizontal-flip averaging (`-e`): **top-1 {flip_eval['top1']:.2f}%**, top-5 {flip_eval['top5']:.2f}% "
        f"(chance: {100 / len(classes):.1f}% top-1).",
        "",
        "## Per epoch",
        "",
        *_table(
            rows,
            [
                ("epoch", "epoch", ".0f"),
                ("lr", "lr (end)", ".4g"),
                ("train_loss", "train loss", ".3f"),
                ("train_top1", "train top-1 %", ".2f"),
                ("val_loss", "val loss", ".3f"),
                ("val_top1", "val top-1 %", ".2f"),
                ("val_top5", "val top-5 %", ".2f"),
                ("seconds", "time s", ".1f"),
                ("peak_mem_mib", "peak mem MiB", ".0f"),
            ],
        ),
        "",
        "## Curves",
        "",
        "![loss, learning rate and accuracy per epoch](curves.png)",
        "",
        f"TensorBoard: `tensorboard --logdir {run_dir}`. Evaluate again: "
        f"`miniplaces train {data} -e --resume {run_dir / 'models' / 'model_best.pth.tar'}`.",
        "",
    ]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
