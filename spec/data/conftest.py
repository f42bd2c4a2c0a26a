"""Fixtures for the data spec: a small synthetic set, the shared real subset, and hand-built broken folders."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from impl.data import make_synthetic

REAL_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "miniplaces"
SYNTH = {"num_classes": 4, "train_per_class": 6, "val_per_class": 3, "image_size": 64}


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic set (4 classes, 6 train + 3 val images each, 64x64); tests must not modify it."""
    return make_synthetic(tmp_path_factory.mktemp("synthetic"), seed=0, **SYNTH)


@pytest.fixture(scope="session")
def real_root() -> Path:
    """The shared MiniPlaces subset next to the repository; the test skips when it is absent."""
    if not (REAL_ROOT / "val.txt").is_file():
        pytest.skip(f"real MiniPlaces subset not found at {REAL_ROOT} (optional; see /work/shared/miniplaces)")
    return REAL_ROOT


def jpeg_bytes(mode: str = "RGB", size: tuple[int, int] = (24, 16), seed: int = 0) -> bytes:
    """A random JPEG in PIL `mode` ("RGB", "L", "CMYK"); size is (width, height)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").convert(mode).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def write_set(
    root: Path,
    train: str,
    images: dict[str, bytes] | None = None,
    categories: str | None = "/a/alpha 0\n/b/beta 1\n/g/gamma 2\n",
) -> Path:
    """A hand-made MiniPlaces folder: `train.txt` with the given text, image files under images/ (default: a valid
    JPEG for every path named in `train`), and categories.txt unless None."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.txt").write_text(train, encoding="utf-8")
    if categories is not None:
        (root / "categories.txt").write_text(categories, encoding="utf-8")
    if images is None:
        images = {line.split()[0]: jpeg_bytes(seed=i) for i, line in enumerate(train.splitlines()) if line.split()}
    for rel, data in images.items():
        path = root / "images" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root
