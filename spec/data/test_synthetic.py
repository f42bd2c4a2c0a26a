"""The synthetic stand-in set: exact MiniPlaces layout, clearly named synthetic, byte-identical for a seed, never
written over real data, and its classes differ in structure rather than colour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from impl.data import MiniPlaces, is_synthetic, make_synthetic, render
from impl.data.synthetic import CLASSES, MARKER_FILE
from spec.data.conftest import SYNTH


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_is_the_miniplaces_layout_and_says_synthetic(synthetic_root: Path) -> None:
    assert is_synthetic(synthetic_root) and "SYNTHETIC" in (synthetic_root / MARKER_FILE).read_text()
    categories = (synthetic_root / "categories.txt").read_text().splitlines()
    assert categories == [f"{CLASSES[i][0]} {i}" for i in range(SYNTH["num_classes"])]
    assert all(line.startswith("/s/synthetic_") for line in categories), categories
    train = (synthetic_root / "train.txt").read_text().splitlines()
    assert train[0] == "train/s/synthetic_stripes/00000001.jpg 0", train[0]
    val = (synthetic_root / "val.txt").read_text().splitlines()
    assert [line.split()[0] for line in val] == [f"val/{i:08d}.jpg" for i in range(1, len(val) + 1)]
    val_labels = [int(line.split()[1]) for line in val]
    assert val_labels != sorted(val_labels), "val images are grouped by class; the official val set is shuffled"
    listed = {line.split()[0] for line in train + val}
    on_disk = {str(p.relative_to(synthetic_root / "images")) for p in (synthetic_root / "images").rglob("*.jpg")}
    assert listed == on_disk, f"listed but missing: {listed - on_disk}; on disk but unlisted: {on_disk - listed}"


def test_same_seed_gives_byte_identical_files_and_another_seed_differs(tmp_path: Path, synthetic_root: Path) -> None:
    again = tree_bytes(make_synthetic(tmp_path / "again", seed=0, **SYNTH))
    first = tree_bytes(synthetic_root)
    assert again.keys() == first.keys()
    differing = [name for name in first if first[name] != again[name]]
    assert not differing, f"{len(differing)} files differ between two runs with seed 0, e.g. {differing[:3]}"
    other = tree_bytes(make_synthetic(tmp_path / "other", seed=1, **SYNTH))
    jpegs = [name for name in first if name.endswith(".jpg")]
    assert all(other[name] != first[name] for name in jpegs), "seed 1 repeated images of seed 0"


def test_refuses_to_write_over_a_folder_that_is_not_synthetic(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("train/a/abbey/00000001.jpg 0\n")
    with pytest.raises(ValueError, match=f"no {MARKER_FILE}: refusing"):
        make_synthetic(tmp_path, **SYNTH)
    assert (tmp_path / "train.txt").read_text() == "train/a/abbey/00000001.jpg 0\n"
    assert not (tmp_path / "images").exists()


def test_rewriting_a_synthetic_folder_replaces_the_old_set(tmp_path: Path) -> None:
    make_synthetic(tmp_path, num_classes=3, train_per_class=4, val_per_class=2, image_size=32)
    make_synthetic(tmp_path, num_classes=2, train_per_class=2, val_per_class=1, image_size=32)
    ds = MiniPlaces(tmp_path, "train")
    assert ds.num_classes == 2 and len(ds) == 4
    assert len(list((tmp_path / "images").rglob("*.jpg"))) == 2 * 2 + 2 * 1, "stale images of the old set remain"


@pytest.mark.parametrize(
    "kwargs",
    [{"num_classes": 0}, {"num_classes": len(CLASSES) + 1}, {"train_per_class": 0}, {"image_size": 4}, {"seed": -1}],
    ids=["no-class", "too-many-classes", "no-train-image", "tiny", "negative-seed"],
)
def test_rejects_impossible_arguments(tmp_path: Path, kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        make_synthetic(tmp_path, **kwargs)


def test_render_gives_rgb_uint8_chw_and_rejects_unknown_labels() -> None:
    image = render(3, seed=7, image_size=48)
    assert image.shape == (3, 48, 48) and image.dtype == torch.uint8
    assert torch.equal(image, render(3, seed=7, image_size=48))
    assert image.float().std() > 10, "a flat image carries no class structure"
    with pytest.raises(ValueError, match="got 10"):
        render(len(CLASSES), seed=0)


def test_mean_colour_does_not_tell_the_classes_apart() -> None:
    """A nearest-class-mean classifier on the average RGB of each image stays near chance (10%): the classes are
    shapes and textures, not colours."""
    per_class, fit = 30, 20
    feats = torch.stack(
        [
            torch.stack([render(c, seed=[99, c, i], image_size=32).float().mean(dim=(1, 2)) for i in range(per_class)])
            for c in range(len(CLASSES))
        ]
    )  # (classes, per_class, 3)
    centroids = feats[:, :fit].mean(dim=1)  # (classes, 3)
    test = feats[:, fit:].reshape(-1, 3)
    truth = torch.arange(len(CLASSES)).repeat_interleave(per_class - fit)
    accuracy = (torch.cdist(test, centroids).argmin(dim=1) == truth).float().mean().item()
    assert accuracy < 0.3, f"mean colour classifies {accuracy:.0%} of synthetic images (chance is 10%)"


def test_every_class_is_drawn_differently_from_every_other() -> None:
    """Same seed, different class: the pictures differ (no two drawing functions coincide)."""
    images = np.stack([render(c, seed=5, image_size=32).numpy() for c in range(len(CLASSES))]).astype(np.int16)
    for a in range(len(CLASSES)):
        for b in range(a + 1, len(CLASSES)):
            diff = np.abs(images[a] - images[b]).mean()
            assert diff > 5, f"classes {CLASSES[a][0]} and {CLASSES[b][0]} draw nearly the same image ({diff:.1f})"


def test_an_interrupted_rewrite_leaves_no_split_files_to_pass_for_a_complete_set(tmp_path: Path, monkeypatch) -> None:
    from impl.data import synthetic

    make_synthetic(tmp_path, num_classes=2, train_per_class=2, val_per_class=1, image_size=32)
    real_write, written = synthetic._write_jpeg, []

    def write_then_die(path: Path, pixels: np.ndarray) -> None:
        if len(written) == 2:
            raise KeyboardInterrupt("interrupted while writing images")
        written.append(path)
        real_write(path, pixels)

    monkeypatch.setattr(synthetic, "_write_jpeg", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        make_synthetic(tmp_path, num_classes=3, train_per_class=2, val_per_class=1, image_size=32)
    left = [name for name in ("train.txt", "val.txt", "categories.txt") if (tmp_path / name).exists()]
    assert not left, f"{left} survive an interrupted rewrite, so the half-written set passes for a complete one"
    monkeypatch.undo()
    make_synthetic(tmp_path, num_classes=3, train_per_class=2, val_per_class=1, image_size=32)
    assert len(MiniPlaces(tmp_path, "train")) == 6
