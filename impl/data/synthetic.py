"""SYNTHETIC MiniPlaces stand-in: procedurally drawn scenes in the exact MiniPlaces layout. Spec: spec/data/.

The project's embedded default data, for machines without the real set: up to 10 classes (`/s/synthetic_stripes`,
`/s/synthetic_rings`, ...) that differ in shape, texture and layout, never in colour. Every image draws its own random
palette, position, scale, orientation and noise, so no class is "one colour", and the structure survives the course
train augmentation (flip, colour scale, rotation ±15°, crop to a quarter of the area). SimpleNet learns them in a few
CPU minutes, which is what the demo and the CLI tests need. Output is deterministic: the same arguments give
byte-identical files (each image has its own generator seeded by (seed, split, class, index)).
"""

from __future__ import annotations

import functools
import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from impl.data.miniplaces import DataError

log = logging.getLogger(__name__)

MARKER_FILE = "SYNTHETIC.md"  # its presence says "this folder is a synthetic set; make_synthetic may rewrite it"
JPEG_QUALITY = 90

Image = np.ndarray  # (H, W, 3) float32 in [0, 1]
Grid = tuple[np.ndarray, np.ndarray]  # (y, x), each (H, W) in [0, 1)


def _palette(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """n random colours; the first two differ in luminance by at least 0.25 so the structure is visible."""
    lum = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    while True:
        colours = rng.uniform(0.0, 1.0, size=(n, 3)).astype(np.float32)
        if abs(float(colours[0] @ lum - colours[1] @ lum)) >= 0.25:
            return list(colours)


def _mix(a: np.ndarray, b: np.ndarray, m: np.ndarray) -> Image:
    """Blend colour/image a into b by mask m (H, W) in [0, 1]."""
    m = m[..., None]
    return a * (1.0 - m) + b * m


def _hard(field: np.ndarray, sharpness: float = 6.0) -> np.ndarray:
    """A signed field -> a mask with slightly soft (anti-aliased) edges."""
    return np.clip(0.5 + field * sharpness, 0.0, 1.0)


def _rotated(g: Grid, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    y, x = g
    theta = rng.uniform(0.0, np.pi)
    c, s = np.cos(theta), np.sin(theta)
    return x * c + y * s, -x * s + y * c


def _stripes(g: Grid, rng: np.random.Generator) -> Image:
    c = _palette(rng, 2)
    u, _ = _rotated(g, rng)
    period = rng.uniform(0.08, 0.2)
    return _mix(c[0], c[1], _hard(np.sin(2 * np.pi * u / period + rng.uniform(0, 2 * np.pi))))


def _checkerboard(g: Grid, rng: np.random.Generator) -> Image:
    c = _palette(rng, 2)
    u, v = _rotated(g, rng)
    period = rng.uniform(0.12, 0.25)
    field = np.sin(2 * np.pi * u / period) * np.sin(2 * np.pi * v / period)
    return _mix(c[0], c[1], _hard(field, 10.0))


def _dots(g: Grid, rng: np.random.Generator) -> Image:
    c = _palette(rng, 2)
    y, x = g
    n = int(rng.integers(12, 31))
    cy, cx = rng.uniform(0, 1, (2, n, 1, 1)).astype(np.float32)
    radius = rng.uniform(0.025, 0.06, (n, 1, 1)).astype(np.float32)
    inside = radius - np.sqrt((y - cy) ** 2 + (x - cx) ** 2)  # (n, H, W) signed distance, > 0 inside a dot
    return _mix(c[0], c[1], _hard(inside.max(axis=0), 60.0))


def _rings(g: Grid, rng: np.random.Generator) -> Image:
    c = _palette(rng, 2)
    y, x = g
    cy, cx = rng.uniform(0.2, 0.8, 2)
    r = np.sqrt((y - cy) ** 2 + (x - cx) ** 2)
    period = rng.uniform(0.07, 0.15)
    return _mix(c[0], c[1], _hard(np.sin(2 * np.pi * r / period + rng.uniform(0, 2 * np.pi))))


def _sunburst(g: Grid, rng: np.random.Generator) -> Image:
    c = _palette(rng, 2)
    y, x = g
    cy, cx = rng.uniform(0.2, 0.8, 2)
    rays = int(rng.integers(5, 11))
    angle = np.arctan2(y - cy, x - cx)
    return _mix(c[0], c[1], _hard(np.sin(rays * angle + rng.uniform(0, 2 * np.pi)), 4.0))


def _sky(g: Grid, top: np.ndarray, bottom: np.ndarray) -> Image:
    y, _ = g
    return _mix(top, bottom, y)


def _sunset(g: Grid, rng: np.random.Generator) -> Image:
    ground, sky_low, sky_top, sun = _palette(rng, 4)
    y, x = g
    horizon = rng.uniform(0.45, 0.75) + rng.uniform(-0.1, 0.1) * (x - 0.5)
    image = _mix(_sky(g, sky_top, sky_low), ground, _hard(y - horizon, 60.0))
    cy, cx, radius = rng.uniform(0.15, 0.35), rng.uniform(0.2, 0.8), rng.uniform(0.07, 0.14)
    return _mix(image, sun, _hard(radius - np.sqrt((y - cy) ** 2 + (x - cx) ** 2), 60.0))


def _mountains(g: Grid, rng: np.random.Generator) -> Image:
    rock, sky_top, sky_low = _palette(rng, 3)
    y, x = g
    n = int(rng.integers(3, 7))
    knots_x = np.linspace(-0.1, 1.1, 2 * n + 1)
    knots_y = np.where(np.arange(2 * n + 1) % 2 == 1, rng.uniform(0.15, 0.45, 2 * n + 1), rng.uniform(0.6, 0.9))
    ridge = np.interp(x[0], knots_x, knots_y).astype(np.float32)[None, :]  # (1, W) peaks and valleys
    rocks = _mix(rock, rock * 0.6, y)
    return _mix(_sky(g, sky_top, sky_low), rocks, _hard(y - ridge, 60.0))


def _windows(g: Grid, rng: np.random.Generator) -> Image:
    wall, glass, sky = _palette(rng, 3)
    y, x = g
    rows, cols = int(rng.integers(3, 7)), int(rng.integers(3, 7))
    left, right, top = rng.uniform(0.0, 0.2), rng.uniform(0.8, 1.0), rng.uniform(0.0, 0.25)
    fy, fx = rng.uniform(0.35, 0.7, 2)  # window size as a fraction of its cell
    u = (x - left) / (right - left) * cols
    v = (y - top) / (1.0 - top) * rows
    in_window = np.minimum(fx / 2 - np.abs(u % 1.0 - 0.5), fy / 2 - np.abs(v % 1.0 - 0.5))
    in_building = np.minimum(np.minimum(x - left, right - x), y - top)
    facade = _mix(wall, glass, _hard(in_window, 8.0) * (in_building > 0))
    return _mix(sky, facade, _hard(in_building, 60.0))


def _clouds(g: Grid, rng: np.random.Generator) -> Image:
    sky, cloud = _palette(rng, 2)
    y, x = g
    n = int(rng.integers(6, 12))
    cy, cx = rng.uniform(-0.1, 1.1, (2, n, 1, 1)).astype(np.float32)
    sigma = rng.uniform(0.06, 0.15, (n, 1, 1)).astype(np.float32)
    field = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma**2)).sum(axis=0)  # (H, W) smooth blobs
    return _mix(sky, cloud, np.clip(field, 0.0, 1.0))


def _forest(g: Grid, rng: np.random.Generator) -> Image:
    back, bark, ground = _palette(rng, 3)
    y, x = g
    n = int(rng.integers(5, 11))
    base = rng.uniform(0, 1, (n, 1, 1)).astype(np.float32)
    lean = rng.uniform(-0.15, 0.15, (n, 1, 1)).astype(np.float32)
    half_width = rng.uniform(0.012, 0.035, (n, 1, 1)).astype(np.float32)
    trunks = (half_width - np.abs(x - base - lean * (1.0 - y))).max(axis=0)  # (H, W) > 0 inside a trunk
    image = _mix(back, bark, _hard(trunks, 60.0))
    return _mix(image, ground, _hard(y - rng.uniform(0.75, 0.9), 60.0))


# (category as written in categories.txt, drawing function); the order fixes the labels.
CLASSES: tuple[tuple[str, Callable[[Grid, np.random.Generator], Image]], ...] = (
    ("/s/synthetic_stripes", _stripes),
    ("/s/synthetic_checkerboard", _checkerboard),
    ("/s/synthetic_dots", _dots),
    ("/s/synthetic_rings", _rings),
    ("/s/synthetic_sunburst", _sunburst),
    ("/s/synthetic_sunset", _sunset),
    ("/s/synthetic_mountains", _mountains),
    ("/s/synthetic_windows", _windows),
    ("/s/synthetic_clouds", _clouds),
    ("/s/synthetic_forest", _forest),
)
_SPLIT_IDS = {"train": 0, "val": 1}


def render(label: int, seed: int | Sequence[int], image_size: int = 128) -> torch.Tensor:
    """Draw one synthetic image of class `label` from its own `seed`: RGB uint8 (3, image_size, image_size)."""
    return torch.from_numpy(_draw(label, seed, image_size)).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)


def _draw(label: int, seed: int | Sequence[int], image_size: int) -> np.ndarray:
    if not 0 <= label < len(CLASSES):
        raise ValueError(f"synthetic label must be in [0, {len(CLASSES)}), got {label}")
    rng = np.random.default_rng(seed)
    image = CLASSES[label][1](_grid(image_size), rng)  # (H, W, 3) in [0, 1]
    contrast, brightness, noise_std = rng.uniform(0.7, 1.1), rng.uniform(-0.1, 0.1), rng.uniform(0.01, 0.06)
    noise = rng.standard_normal(image.shape, dtype=np.float32)
    image = image * np.float32(255.0 * contrast) + np.float32(255.0 * (0.5 - 0.5 * contrast + brightness))
    image += noise * np.float32(255.0 * noise_std)
    return np.clip(np.rint(image, out=image), 0, 255, out=image).astype(np.uint8)  # (H, W, 3)


@functools.cache
def _grid(image_size: int) -> Grid:
    y, x = (np.mgrid[0:image_size, 0:image_size].astype(np.float32) + 0.5) / image_size  # (2, H, W) pixel centres
    y.flags.writeable = x.flags.writeable = False
    return y, x


def make_synthetic(
    root: str | Path,
    num_classes: int = 10,
    train_per_class: int = 100,
    val_per_class: int = 20,
    seed: int = 0,
    image_size: int = 128,
) -> Path:
    """Write a SYNTHETIC set in the MiniPlaces layout under `root` and return `root`.

    Writes `images/train/s/<class>/NNNNNNNN.jpg`, `images/val/NNNNNNNN.jpg` (classes shuffled, as in the official val
    set), `train.txt`, `val.txt`, `categories.txt` and `SYNTHETIC.md`. Refuses a non-empty folder that is not a
    synthetic set, so it never overwrites real data; an earlier synthetic set there is replaced.
    """
    if not 1 <= num_classes <= len(CLASSES):
        raise ValueError(f"num_classes must be in [1, {len(CLASSES)}] (one per synthetic scene), got {num_classes}")
    if train_per_class < 1 or val_per_class < 1:
        raise ValueError(f"need one image per class or more, got {train_per_class=} {val_per_class=}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8 pixels, got {image_size}")
    root = Path(root)
    _claim(root)
    for listing in ("train.txt", "val.txt", "categories.txt"):  # written last: an interrupted rewrite is incomplete
        (root / listing).unlink(missing_ok=True)
    images = root / "images"
    if images.exists():
        shutil.rmtree(images)

    train_lines = []
    for label in range(num_classes):
        name = CLASSES[label][0].lstrip("/")  # `s/synthetic_stripes`
        folder = images / "train" / name
        folder.mkdir(parents=True)
        for i in range(train_per_class):
            _write_jpeg(folder / f"{i + 1:08d}.jpg", _draw(label, _image_seed(seed, "train", label, i), image_size))
            train_lines.append(f"train/{name}/{i + 1:08d}.jpg {label}")

    val_folder = images / "val"
    val_folder.mkdir(parents=True)
    order = np.random.default_rng([seed, 2]).permutation(num_classes * val_per_class)
    val_lines = []
    for position, item in enumerate(order.tolist()):
        label, i = divmod(item, val_per_class)
        filename = f"{position + 1:08d}.jpg"
        _write_jpeg(val_folder / filename, _draw(label, _image_seed(seed, "val", label, i), image_size))
        val_lines.append(f"val/{filename} {label}")

    (root / "train.txt").write_text("\n".join(train_lines) + "\n", encoding="utf-8")
    (root / "val.txt").write_text("\n".join(val_lines) + "\n", encoding="utf-8")
    categories = "".join(f"{CLASSES[i][0]} {i}\n" for i in range(num_classes))
    (root / "categories.txt").write_text(categories, encoding="utf-8")
    log.info("wrote synthetic set to %s: %d classes, %d+%d images", root, num_classes, len(train_lines), len(val_lines))
    return root


def is_synthetic(root: str | Path) -> bool:
    """Whether `root` holds a set written by make_synthetic."""
    return (Path(root) / MARKER_FILE).is_file()


def _claim(root: Path) -> None:
    """Refuse a root that is a file or holds something else (a DataError: bad input, not a bug)."""
    if root.exists() and not root.is_dir():
        raise DataError(f"{root} exists and is not a folder (the synthetic set needs a folder)")
    if root.is_dir() and any(root.iterdir()) and not is_synthetic(root):
        raise DataError(f"{root} is not empty and holds no synthetic set, i.e. no {MARKER_FILE}: refusing to write one")
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER_FILE).write_text(
        "# SYNTHETIC data: not MiniPlaces images\n\n"
        "Procedurally drawn scenes written by `miniplaces synth` (impl.data.make_synthetic) in the MiniPlaces layout,\n"
        "so that the code can be run and tested without the real data set. Accuracy on it says nothing about\n"
        "MiniPlaces. Rerunning `miniplaces synth` on this folder replaces it.\n",
        encoding="utf-8",
    )


def _image_seed(seed: int, split: str, label: int, index: int) -> list[int]:
    return [seed, _SPLIT_IDS[split], label, index]


def _write_jpeg(path: Path, pixels: np.ndarray) -> None:
    # PIL takes (H, W, 3) as drawn; torchvision's encoder would first permute with torch threads, 10x slower here.
    PIL.Image.fromarray(pixels, mode="RGB").save(path, format="JPEG", quality=JPEG_QUALITY)
