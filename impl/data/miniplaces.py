"""The MiniPlaces dataset read from its official layout, with errors that name the file and line. Spec: spec/data/.

Layout (the official `data.tar.gz` plus its development kit, or `make_synthetic`):

    <root>/train.txt        `train/a/abbey/00000001.jpg 0`  one image per line: path under images/, label
    <root>/val.txt          `val/00000001.jpg 71`
    <root>/categories.txt   `/a/abbey 0`  optional: class names, labels 0..N-1 in order
    <root>/images/...       the JPEG files

The text files are UTF-8 (a leading byte-order mark is ignored). Images decode with torchvision to RGB uint8
(3, H, W); grayscale and CMYK JPEGs are converted to RGB, not rejected.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_jpeg

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
_JPEG_MAGIC = b"\xff\xd8\xff"
# categories.txt names look like `/a/abbey` or `/b/bakery/shop`: the letter folder is layout, not part of the name.
_LETTER_PREFIX = re.compile(r"^/[^/]/")


class DataError(ValueError):
    """Bad data on disk; the message names the file, the line where there is one, and the offending value."""


def class_name(category: str) -> str:
    """`/a/abbey` -> `abbey`, `/b/bakery/shop` -> `bakery/shop`; a name without the letter folder is kept as is."""
    return _LETTER_PREFIX.sub("", category, count=1)


def _records(path: Path, first_field: str) -> Iterator[tuple[int, str, str, int]]:
    """(line number, line, first field, integer label) for each non-blank `<first_field> <label>` line of `path`."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # an editor's byte-order mark is not part of the first path
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (bad byte at offset {exc.start})") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or re.fullmatch(r"[+-]?\d+", parts[1]) is None:
            raise DataError(f"{path} line {lineno}: expected '<{first_field}> <integer label>', got {line!r}")
        yield lineno, line, parts[0], int(parts[1])


def read_categories(path: Path) -> list[str]:
    """Raw category names from `categories.txt` (`/a/abbey 0` per line), indexed by label; labels must be 0..N-1."""
    names: dict[int, str] = {}
    for lineno, _, name, label in _records(path, "name"):
        if label in names:
            raise DataError(f"{path} line {lineno}: label {label} listed twice ({names[label]!r} and {name!r})")
        names[label] = name
    if not names:
        raise DataError(f"{path}: no categories")
    if sorted(names) != list(range(len(names))):
        missing = sorted(set(range(max(names) + 1)) - set(names))
        raise DataError(f"{path}: labels must be 0..{len(names) - 1} without gaps; missing {missing[:10]}")
    return [names[i] for i in range(len(names))]


def read_split(path: Path, num_classes: int | None) -> list[tuple[str, int, int]]:
    """Parse a split file into (relative image path, label, line number); labels checked against [0, num_classes)."""
    entries: list[tuple[str, int, int]] = []
    for lineno, line, image, label in _records(path, "image path"):
        if label < 0 or (num_classes is not None and label >= num_classes):
            bound = "is negative" if num_classes is None else f"outside [0, {num_classes})"
            raise DataError(f"{path} line {lineno}: label {label} {bound} in {line!r}")
        entries.append((image, label, lineno))
    if not entries:
        raise DataError(f"{path}: the split is empty (no '<image path> <label>' lines)")
    return entries


def decode_image_file(path: Path, where: str = "") -> torch.Tensor:
    """Read a JPEG file as RGB uint8 (3, H, W); `where` (e.g. 'train.txt line 7') goes into any error message."""
    suffix = f" (listed at {where})" if where else ""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found{suffix}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the image ({exc.strerror}){suffix}") from None
    if not data.startswith(_JPEG_MAGIC):
        raise DataError(f"{path}: not a JPEG file (starts with {data[:8]!r}){suffix}")
    try:
        image = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError as exc:
        reason = str(exc).rsplit(", ", 1)[-1]  # torchvision prefixes its C++ source location
        raise DataError(f"{path}: corrupt JPEG ({reason}){suffix}") from None
    return image  # (3, H, W) uint8


class MiniPlaces(Dataset):
    """MiniPlaces split as a torch Dataset of (image, label).

    `image` is an RGB uint8 tensor (3, H, W) when `transform` is None, else `transform(image)`.
    `classes` are the category names without the letter folder (`abbey`, `bakery/shop`, `synthetic_stripes`), or
    `str(label)` when `categories.txt` is absent. `num_classes` comes from `categories.txt`, else the argument, else
    the largest label in the split + 1. Malformed lines, labels outside [0, num_classes), an empty split and (with
    `check_files`) missing images fail at construction; a corrupt image fails when it is read. Every error is a
    `DataError` naming the file and line.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable[[torch.Tensor], Any] | None = None,
        *,
        num_classes: int | None = None,
        check_files: bool = True,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.root = Path(root)
        self.split = split
        self.transform = transform
        split_file = self.root / f"{split}.txt"
        if not split_file.is_file():
            raise DataError(f"{split_file}: split file not found (is {self.root} a MiniPlaces folder?)")
        categories_file = self.root / "categories.txt"
        categories = read_categories(categories_file) if categories_file.is_file() else None
        if categories is not None:
            if num_classes is not None and num_classes != len(categories):
                raise DataError(f"{categories_file}: lists {len(categories)} classes, num_classes={num_classes}")
            num_classes = len(categories)
        entries = read_split(split_file, num_classes)
        self.num_classes: int = num_classes if num_classes is not None else max(e[1] for e in entries) + 1
        self.classes: list[str] = (
            [class_name(c) for c in categories] if categories else [str(i) for i in range(self.num_classes)]
        )
        images = self.root / "images"
        self.samples: list[tuple[Path, int]] = [(images / rel, label) for rel, label, _ in entries]
        self._lines: list[int] = [lineno for _, _, lineno in entries]
        self._split_file = split_file
        if check_files:
            for (path, _), lineno in zip(self.samples, self._lines, strict=True):
                if not path.is_file():
                    raise DataError(f"{split_file} line {lineno}: image {path} not found")
        log.debug("MiniPlaces %s: %d images, %d classes from %s", split, len(self.samples), self.num_classes, root)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        image = decode_image_file(path, where=f"{self._split_file} line {self._lines[index]}")
        if self.transform is not None:
            image = self.transform(image)
        return image, label

    def targets(self) -> list[int]:
        """The labels in sample order (no image is read)."""
        return [label for _, label in self.samples]

    def __repr__(self) -> str:
        return f"MiniPlaces(root={str(self.root)!r}, split={self.split!r}, n={len(self)}, classes={self.num_classes})"
