"""Data loader throughput: images/s of a DataLoader over MiniPlaces train with the course's training transforms
(decode, resize 144, flip, colour scale, rotation, random resized crop, normalize), per worker count.

Real images when the MiniPlaces folder is there (`--root`, default the shared subset next to the repository), else a
synthetic set written to a temporary folder (same layout, 128 px). Worker counts alternate in
rounds (each round times `batches` batches of every worker count in turn, after a fresh iterator's first batch,
so worker start-up is not counted). reports/speed.md sets these rates against each model's training rate.

    python -m bench.data.loader [--out reports/raw/cpu-data.json]   # DATA_BENCH_* env vars
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from statistics import median

import torch
from torch.utils.data import DataLoader

from bench.device import bench_device
from bench.interleaved import entry, env_int, raw_file, write
from impl.data import MiniPlaces, make_synthetic, train_transform

TABLE = "data"
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "miniplaces"


def loader(root: Path, batch: int, workers: int) -> DataLoader:
    dataset = MiniPlaces(root, "train", transform=train_transform(), check_files=False)
    return DataLoader(
        dataset, batch_size=batch, shuffle=True, num_workers=workers, generator=torch.Generator().manual_seed(0)
    )


def time_batches(data: DataLoader, batches: int) -> float:
    """Seconds to draw `batches` batches from a fresh iterator, after its first batch (worker start-up)."""
    it = iter(data)
    next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return time.perf_counter() - t0


def run(root: Path, real: bool, batch: int, workers: list[int], batches: int, rounds: int) -> dict:
    """Rounds alternate the worker counts (workers that prefetch while another loader is timed would be free
    throughput, so each count is timed alone, on a fresh iterator)."""
    loaders = {f"{w} workers": loader(root, batch, w) for w in workers}
    times: dict[str, list[float]] = {name: [] for name in loaders}
    for _ in range(rounds):
        for name, data in loaders.items():
            times[name].append(time_batches(data, batches))
    case = f"train transforms b{batch} ({'MiniPlaces' if real else 'synthetic'} JPEGs)"
    records = [
        entry(TABLE, case, name, s, name == f"{workers[0]} workers", images_per_s=batch * batches / median(s))
        for name, s in times.items()
    ]
    return raw_file(bench_device(), records, data="real" if real else "synthetic", batches_per_round=batches)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(f"reports/raw/{bench_device().type}-data.json"))
    parser.add_argument("--root", type=Path, default=Path(os.environ.get("DATA_BENCH_ROOT", SHARED)))
    parser.add_argument("--batch", type=int, default=env_int("DATA_BENCH_BATCH", 32))
    parser.add_argument("--workers", type=int, nargs="+", default=[0, os.cpu_count() or 1])
    parser.add_argument("--batches", type=int, default=env_int("DATA_BENCH_BATCHES", 8), help="batches per round")
    parser.add_argument("--rounds", type=int, default=env_int("DATA_BENCH_ROUNDS", 3))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        real = (args.root / "train.txt").is_file()
        root = args.root if real else make_synthetic(Path(tmp), num_classes=10, train_per_class=40, val_per_class=1)
        raw = run(root, real, args.batch, args.workers, args.batches, args.rounds)
    write(raw, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
