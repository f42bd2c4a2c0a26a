"""MiniPlaces reader: lengths, labels, class names and image tensors on the synthetic and the real set; every bad
input ends in one DataError that names the file, the line and the value."""

from __future__ import annotations

import io
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from impl.data import DataError, MiniPlaces, class_name, val_transform
from impl.data.synthetic import CLASSES
from spec.data.conftest import SYNTH, jpeg_bytes, write_set


def pil_rgb(path: Path) -> torch.Tensor:
    """Oracle decoder: PIL, converted to RGB, as (3, H, W) uint8."""
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)


def assert_same_pixels(image: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert image.shape == expected.shape and image.dtype == torch.uint8, f"{what}: {image.shape} {image.dtype}"
    err = (image.int() - expected.int()).abs().max().item()
    assert err <= 2, f"{what}: max abs pixel difference {err} against PIL"


# --- the synthetic set -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "val"])
def test_synthetic_split_has_balanced_labels_and_synthetic_class_names(synthetic_root: Path, split: str) -> None:
    ds = MiniPlaces(synthetic_root, split)
    per_class = SYNTH["train_per_class"] if split == "train" else SYNTH["val_per_class"]
    assert len(ds) == SYNTH["num_classes"] * per_class
    assert ds.num_classes == SYNTH["num_classes"]
    assert Counter(ds.targets()) == dict.fromkeys(range(ds.num_classes), per_class)
    assert ds.classes == [name.removeprefix("/s/") for name, _ in CLASSES[: ds.num_classes]]
    assert all(c.startswith("synthetic_") for c in ds.classes), ds.classes
    assert all(isinstance(label, int) for _, label in ds.samples)


def test_samples_follow_the_split_file_line_by_line(synthetic_root: Path) -> None:
    lines = (synthetic_root / "val.txt").read_text().split("\n")
    ds = MiniPlaces(synthetic_root, "val")
    expected = [(synthetic_root / "images" / rel, int(label)) for rel, label in (l.split() for l in lines if l)]
    assert ds.samples == expected


def test_image_is_rgb_uint8_chw_matching_pil_and_label_matches_samples(synthetic_root: Path) -> None:
    ds = MiniPlaces(synthetic_root, "train")
    for index in (0, len(ds) - 1):
        image, label = ds[index]
        path, expected_label = ds.samples[index]
        assert label == expected_label and type(label) is int
        assert_same_pixels(image, pil_rgb(path), str(path))
        assert image.shape == (3, SYNTH["image_size"], SYNTH["image_size"])


def test_transform_is_applied_to_the_image_only(synthetic_root: Path) -> None:
    seen = []
    ds = MiniPlaces(synthetic_root, "val", transform=lambda x: seen.append(x.shape) or x.float() / 255)
    image, label = ds[2]
    assert seen == [(3, SYNTH["image_size"], SYNTH["image_size"])]
    assert image.dtype == torch.float32 and image.min() >= 0.0 and image.max() <= 1.0
    assert label == ds.samples[2][1]


def test_batches_through_a_dataloader_with_worker_processes(synthetic_root: Path) -> None:
    ds = MiniPlaces(synthetic_root, "val", transform=val_transform())
    batches = list(DataLoader(ds, batch_size=5, num_workers=2))
    images = torch.cat([x for x, _ in batches])
    labels = torch.cat([y for _, y in batches])
    assert images.shape == (len(ds), 3, 128, 128) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.tolist() == ds.targets()
    raw, _ = MiniPlaces(synthetic_root, "val")[3]
    assert torch.equal(images[3], val_transform()(raw)), "a worker process transformed image 3 differently"


def test_split_must_be_train_or_val(synthetic_root: Path) -> None:
    with pytest.raises(ValueError, match="'test'"):
        MiniPlaces(synthetic_root, "test")


@pytest.mark.parametrize(
    ("category", "name"), [("/a/abbey", "abbey"), ("/b/bakery/shop", "bakery/shop"), ("plain", "plain")]
)
def test_class_name_drops_only_the_letter_folder(category: str, name: str) -> None:
    assert class_name(category) == name


# --- the real subset (skips without it) ---------------------------------------------------------------------------


def test_real_val_is_the_full_official_split(real_root: Path) -> None:
    ds = MiniPlaces(real_root, "val")
    assert len(ds) == 10_000 and ds.num_classes == 100
    assert Counter(ds.targets()) == dict.fromkeys(range(100), 100)
    assert ds.classes[0] == "abbey" and ds.classes[99] == "yard" and "bakery/shop" in ds.classes
    assert ds.samples[0] == (real_root / "images" / "val" / "00000001.jpg", 71)  # val.txt's first line
    image, label = ds[0]
    assert label == 71
    assert_same_pixels(image, pil_rgb(ds.samples[0][0]), "val/00000001.jpg")
    assert image.shape == (3, 128, 128)


def test_real_train_subset_lists_only_present_images(real_root: Path) -> None:
    ds = MiniPlaces(real_root, "train")  # check_files=True: every listed image exists
    assert len(ds) == 20_000 and ds.num_classes == 100
    path, label = ds.samples[0]
    assert path.relative_to(real_root / "images").parts[:3] == ("train", "a", "abbey") and label == 0
    image, _ = ds[len(ds) - 1]
    assert image.shape == (3, 128, 128) and image.dtype == torch.uint8


# --- bad input: one DataError naming file, line and value ------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_line",
    ["train/a/alpha/2.jpg", "train/a/alpha/2.jpg 1 extra", "train/a/alpha/2.jpg one", "train/a/alpha/2.jpg 1.0"],
)
def test_malformed_split_line_names_file_line_and_text(tmp_path: Path, bad_line: str) -> None:
    root = write_set(tmp_path, f"train/a/alpha/1.jpg 0\n{bad_line}\n", images={"train/a/alpha/1.jpg": jpeg_bytes()})
    with pytest.raises(DataError, match=re.escape(f"{root / 'train.txt'} line 2")) as info:
        MiniPlaces(root, "train")
    assert repr(bad_line) in str(info.value)


def test_missing_image_names_split_file_line_and_path(tmp_path: Path) -> None:
    root = write_set(
        tmp_path, "train/a/alpha/1.jpg 0\ntrain/b/beta/9.jpg 1\n", images={"train/a/alpha/1.jpg": jpeg_bytes()}
    )
    with pytest.raises(DataError, match=re.escape(f"train.txt line 2: image {root / 'images/train/b/beta/9.jpg'}")):
        MiniPlaces(root, "train")


def test_missing_image_found_at_read_time_without_the_upfront_check(tmp_path: Path) -> None:
    root = write_set(tmp_path, "train/a/alpha/1.jpg 0\n", images={})
    ds = MiniPlaces(root, "train", check_files=False)
    with pytest.raises(DataError, match=r"1\.jpg: image file not found \(listed at .*train\.txt line 1\)"):
        ds[0]


def test_image_path_that_is_a_folder_is_an_error(tmp_path: Path) -> None:
    root = write_set(tmp_path, "train/a/alpha/1.jpg 0\n", images={})
    (root / "images/train/a/alpha/1.jpg").mkdir(parents=True)
    ds = MiniPlaces(root, "train", check_files=False)
    with pytest.raises(DataError, match=r"1\.jpg: cannot read the image .*train\.txt line 1"):
        ds[0]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (jpeg_bytes()[:300], "corrupt JPEG"),  # truncated
        (jpeg_bytes()[:3] + b"\x00" * 200, "corrupt JPEG"),  # JPEG magic, garbage after it
        (b"", "not a JPEG file"),
        (b"hello, not an image", "not a JPEG file"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "not a JPEG file"),
    ],
    ids=["truncated", "garbage", "empty", "text", "png"],
)
def test_corrupt_or_non_jpeg_image_names_file_and_split_line(tmp_path: Path, payload: bytes, message: str) -> None:
    root = write_set(
        tmp_path,
        "train/a/alpha/1.jpg 0\ntrain/a/alpha/2.jpg 0\n",
        images={"train/a/alpha/1.jpg": jpeg_bytes(), "train/a/alpha/2.jpg": payload},
    )
    ds = MiniPlaces(root, "train")
    ds[0]  # the good image still reads
    with pytest.raises(DataError, match=message) as info:
        ds[1]
    text = str(info.value)
    assert str(root / "images/train/a/alpha/2.jpg") in text and "train.txt line 2" in text, text


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_grayscale_and_cmyk_jpegs_are_converted_to_rgb(tmp_path: Path, mode: str) -> None:
    data = jpeg_bytes(mode, size=(20, 12), seed=3)
    assert Image.open(io.BytesIO(data)).mode == mode
    root = write_set(tmp_path, "train/a/alpha/1.jpg 0\n", images={"train/a/alpha/1.jpg": data})
    image, _ = MiniPlaces(root, "train")[0]
    assert_same_pixels(image, pil_rgb(root / "images/train/a/alpha/1.jpg"), mode)
    assert image.shape == (3, 12, 20)
    if mode == "L":
        assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


@pytest.mark.parametrize("label", [3, 17, -1])
def test_label_outside_the_categories_range_names_line_and_value(tmp_path: Path, label: int) -> None:
    root = write_set(tmp_path, f"train/a/alpha/1.jpg 0\ntrain/a/alpha/2.jpg {label}\n")  # 3 categories
    with pytest.raises(DataError, match=re.escape(f"train.txt line 2: label {label} outside [0, 3)")):
        MiniPlaces(root, "train")


def test_label_outside_an_explicit_num_classes_without_categories(tmp_path: Path) -> None:
    root = write_set(tmp_path, "train/a/alpha/1.jpg 0\ntrain/a/alpha/2.jpg 5\n", categories=None)
    with pytest.raises(DataError, match=re.escape("line 2: label 5 outside [0, 5)")):
        MiniPlaces(root, "train", num_classes=5)
    with pytest.raises(DataError, match="line 1: label -2 is negative"):
        MiniPlaces(write_set(tmp_path / "neg", "train/a/alpha/1.jpg -2\n", categories=None), "train")


def test_without_categories_classes_are_label_strings(tmp_path: Path) -> None:
    root = write_set(tmp_path, "train/a/alpha/1.jpg 0\ntrain/a/alpha/2.jpg 2\n", categories=None)
    ds = MiniPlaces(root, "train")
    assert ds.num_classes == 3 and ds.classes == ["0", "1", "2"]
    assert MiniPlaces(root, "train", num_classes=7).classes == [str(i) for i in range(7)]


@pytest.mark.parametrize("text", ["", "\n\n   \n"], ids=["empty-file", "blank-lines"])
def test_empty_split_is_an_error(tmp_path: Path, text: str) -> None:
    root = write_set(tmp_path, text, images={})
    with pytest.raises(DataError, match=re.escape(f"{root / 'train.txt'}: the split is empty")):
        MiniPlaces(root, "train")


def test_missing_split_file_is_an_error(tmp_path: Path) -> None:
    root = write_set(tmp_path, "train/a/alpha/1.jpg 0\n")
    with pytest.raises(DataError, match=re.escape(f"{root / 'val.txt'}: split file not found")):
        MiniPlaces(root, "val")


def test_split_file_that_is_not_utf8_is_an_error(tmp_path: Path) -> None:
    root = write_set(tmp_path, "train/a/alpha/1.jpg 0\n")
    (root / "train.txt").write_bytes(b"train/a/\xff\xfe.jpg 0\n")
    with pytest.raises(DataError, match="train.txt: not UTF-8"):
        MiniPlaces(root, "train")


@pytest.mark.parametrize(
    ("categories", "message"),
    [
        ("/a/alpha 0\n/b/beta\n", "line 2: expected '<name> <integer label>'"),
        ("/a/alpha 0\n/b/beta 0\n", "line 2: label 0 listed twice"),
        ("/a/alpha 0\n/b/beta 2\n", r"without gaps; missing \[1\]"),
        ("\n", "no categories"),
    ],
    ids=["malformed", "duplicate", "gap", "empty"],
)
def test_bad_categories_file_names_line(tmp_path: Path, categories: str, message: str) -> None:
    root = write_set(tmp_path, "train/a/alpha/1.jpg 0\n", categories=categories)
    with pytest.raises(DataError, match=message) as info:
        MiniPlaces(root, "train")
    assert "categories.txt" in str(info.value)


def test_num_classes_must_agree_with_categories(tmp_path: Path) -> None:
    root = write_set(tmp_path, "train/a/alpha/1.jpg 0\n")
    with pytest.raises(DataError, match="lists 3 classes, num_classes=5"):
        MiniPlaces(root, "train", num_classes=5)


def test_a_byte_order_mark_in_the_split_and_categories_files_is_ignored(tmp_path: Path) -> None:
    """Windows editors save UTF-8 with a BOM; it must not become part of the first image path or category name."""
    root = write_set(tmp_path / "bom", "train/a/one.jpg 0\ntrain/b/two.jpg 1\n")
    for name in ("train.txt", "categories.txt"):
        path = root / name
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    data = MiniPlaces(root, "train")
    assert data.samples[0][0] == root / "images" / "train/a/one.jpg" and data.classes[0] == "alpha", data.samples
    assert data[0][0].shape[0] == 3
