"""A decoded uint8 cache of a MiniPlaces split: one memory-mapped .npy, keyed by the split file's content and its
images' size and mtime. Spec: spec/data/test_cache.py.

    images, labels = load_cache(root, "train")   # uint8 (N, 3, 128, 128) memory-mapped, int64 (N,)

Decoding 100 000 JPEGs every epoch is what limits a fast GPU; decoded once, the set is 4.9 GB of uint8 that the OS
pages in on demand and `impl.data.gpu.DeviceLoader` uploads to the device whole. Files, in `cache_dir` (default
`$MINIPLACES_CACHE` or `~/.cache/miniplaces-lab`):

    <split>-<size>px-<folder>-<key>.images.npy   uint8 (N, 3, size, size), written last: present means complete
    <split>-<size>px-<folder>-<key>.labels.npy   int64 (N,)

`folder` hashes the dataset folder's path; `key` hashes the split's entries (each image path under images/ and its
label, in order), every listed image's size and modification time (os.stat, no decoding), the image size and the cache
format, so editing `train.txt` (other images, other labels, other order) or regenerating an image under the same name
selects a new cache and the stale one of that folder is deleted. Images must be square (MiniPlaces and the synthetic
set are); a square image of another size is resized to `size` (antialiased bilinear). Writes go to a temporary file
renamed into place, so an interrupted build never looks complete.

What a load costs when the cache exists: the split file is read and parsed once and each listed image is `stat`-ed
once (that stat is also the check that the image exists); no image is opened. The stats are the price of the
regenerated-image guarantee and are kept on purpose: an image rewritten in place changes only its own inode (not its
folder's mtime), so nothing cheaper than looking at every file sees it. Measured on the 20 000 train images of
../shared/miniplaces (local disk, metadata cached, a shared 2-core machine): the stats take about 67 ms (about 0.35 s
for the full 100 000), the whole key 120-300 ms, where it took 175-355 ms with the split read twice and two stats
per image.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from impl.data.miniplaces import DataError, MiniPlaces

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the layout of the files changes


def default_cache_dir() -> Path:
    """`$MINIPLACES_CACHE`, else `~/.cache/miniplaces-lab` (the dataset folder itself may be read-only)."""
    return Path(os.environ.get("MINIPLACES_CACHE") or Path.home() / ".cache" / "miniplaces-lab")


def _key(dataset: MiniPlaces, size: int) -> str:
    """16 hex digits of sha256 over the split's (image path, label) entries in order, each image's size and mtime
    (one os.stat each: a regenerated image under the same name changes the key without reading any pixels), the image
    size and the cache format."""
    images_dir = os.fspath(dataset.root / "images") + os.sep  # the names as train.txt lists them: any spelling of root
    h = hashlib.sha256(f"size={size}|format={FORMAT}".encode())
    try:
        for path, label in dataset.samples:
            st = os.stat(path)
            h.update(f"\n{os.fspath(path).removeprefix(images_dir)}\0{label}\0{st.st_size},{st.st_mtime_ns}".encode())
    except OSError:  # missing, or a listed path through a file (NotADirectoryError)
        MiniPlaces(dataset.root, dataset.split)  # raises the error naming the split file's line
        raise
    return h.hexdigest()[:16]


def _prefix(root: str | Path, split: str, size: int) -> str:
    """What every cache of this dataset folder, split and size shares: the stale ones are found by it."""
    folder = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:8]
    return f"{split}-{size}px-{folder}-"


def _locate(root: str | Path, split: str, size: int, cache_dir: str | Path | None) -> tuple[MiniPlaces, Path, Path]:
    """The split, read once (one parse, one stat per image), and its current cache's (images, labels) paths."""
    dataset = MiniPlaces(root, split, check_files=False)  # _key's stats are the existence check
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    stem = _prefix(root, split, size) + _key(dataset, size)
    return dataset, folder / f"{stem}.images.npy", folder / f"{stem}.labels.npy"


def cache_paths(
    root: str | Path, split: str, size: int = 128, cache_dir: str | Path | None = None
) -> tuple[Path, Path]:
    """(images file, labels file) of the split's current cache (they may not exist yet)."""
    return _locate(root, split, size, cache_dir)[1:]


def build_cache(
    root: str | Path, split: str, size: int = 128, cache_dir: str | Path | None = None, progress: bool = False
) -> tuple[Path, Path]:
    """Decode every image of the split into the cache files, replace the split's stale caches; return the paths."""
    dataset, images_path, labels_path = _locate(root, split, size, cache_dir)
    _write(dataset, images_path, labels_path, size, progress)
    return images_path, labels_path


def _write(dataset: MiniPlaces, images_path: Path, labels_path: Path, size: int, progress: bool) -> None:
    """Decode the split into the cache files (images last, renamed into place) and delete its stale caches."""
    images_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = images_path.with_name(f".{images_path.name}.{os.getpid()}.tmp")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(dataset), 3, size, size))
    indices = range(len(dataset))
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc=f"cache {dataset.split}", unit="img")
    try:
        for i in indices:
            out[i] = _square(dataset[i][0], size, dataset.samples[i][0]).numpy()
        out.flush()
        del out
        _atomic_save(labels_path, np.asarray(dataset.targets(), dtype=np.int64))
        os.replace(tmp, images_path)  # the commit point
    finally:
        tmp.unlink(missing_ok=True)
    for stale in images_path.parent.glob(f"{_prefix(dataset.root, dataset.split, size)}*.npy"):
        if stale not in (images_path, labels_path):
            stale.unlink()
            log.info("removed stale cache %s", stale)
    log.info("cached %d %s images at %d px in %s", len(dataset), dataset.split, size, images_path)


def load_cache(
    root: str | Path, split: str, size: int = 128, cache_dir: str | Path | None = None, progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images (N, 3, size, size) memory-mapped, int64 labels (N,)), building the cache first if needed."""
    dataset, images_path, labels_path = _locate(root, split, size, cache_dir)
    if not (images_path.is_file() and labels_path.is_file()):
        _write(dataset, images_path, labels_path, size, progress)
    images = np.load(images_path, mmap_mode="c")  # copy-on-write: writable for torch, the file is never written
    labels = np.load(labels_path)
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (3, size, size) or images.dtype != np.uint8:
        raise DataError(
            f"{images_path}: holds {images.dtype} {images.shape} for {labels.shape[0]} labels, expected uint8 "
            f"(N, 3, {size}, {size}); delete it to rebuild"
        )
    return torch.from_numpy(images), torch.from_numpy(labels)


def _square(image: torch.Tensor, size: int, path: Path) -> torch.Tensor:
    """The decoded (3, H, W) image at (3, size, size); a non-square image is an error naming the file."""
    h, w = image.shape[1:]
    if h != w:
        raise DataError(f"{path}: the cache stores square images, this one is {w}×{h}")
    return image if h == size else TF.resize(image, [size, size], antialias=True)


def _atomic_save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
