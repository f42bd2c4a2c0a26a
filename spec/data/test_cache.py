"""The decoded uint8 cache (impl/data/cache.py): same pixels as the reader, memory-mapped, keyed by the split file's
content, rebuilt when it changes, never half-written. A tiny synthetic set, copied per test (the cache writes)."""

from __future__ import annotations

import builtins
import io
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

from impl.data import DataError, MiniPlaces
from impl.data.cache import build_cache, cache_paths, load_cache
from spec.data.conftest import jpeg_bytes, write_set


@pytest.fixture
def root(synthetic_root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(synthetic_root, tmp_path / "set"))


def test_cached_images_and_labels_equal_the_readers(root, tmp_path):
    images, labels = load_cache(root, "train", size=64, cache_dir=tmp_path / "cache")
    dataset = MiniPlaces(root, "train")
    assert images.dtype == torch.uint8 and images.shape == (len(dataset), 3, 64, 64), (images.dtype, images.shape)
    assert labels.tolist() == dataset.targets()
    for i in (0, len(dataset) // 2, len(dataset) - 1):
        assert torch.equal(images[i], dataset[i][0]), f"cached image {i} differs from the decoded JPEG"


def test_the_cache_is_memory_mapped_and_reused(root, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    load_cache(root, "val", size=64, cache_dir=cache)
    images_path, _ = cache_paths(root, "val", 64, cache)
    mtime = images_path.stat().st_mtime_ns

    def no_decode(self, index):
        raise AssertionError(f"image {index} was decoded although the cache is current")

    monkeypatch.setattr(MiniPlaces, "__getitem__", no_decode)
    images, _ = load_cache(root, "val", size=64, cache_dir=cache)
    assert images_path.stat().st_mtime_ns == mtime
    assert _mapped_file(images.data_ptr()) == str(images_path.resolve()), "the images are not mapped from the file"


def test_a_second_load_reads_the_split_once_and_stats_each_image_once(root, tmp_path, monkeypatch):
    """An existing cache costs one read of train.txt and one os.stat per listed image (the key's staleness check)."""
    cache = tmp_path / "cache"
    load_cache(root, "train", size=64, cache_dir=cache)
    listed = [os.fspath(path) for path, _ in MiniPlaces(root, "train", check_files=False).samples]
    split_file, images_dir = os.fspath(root / "train.txt"), os.fspath(root / "images")
    opens: list[str] = []
    stats: Counter[str] = Counter()
    real_open, real_stat = io.open, os.stat

    def counted_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.fspath(file) == split_file:
            opens.append(args[0] if args else kwargs.get("mode", "r"))
        return real_open(file, *args, **kwargs)

    def counted_stat(path, *args, **kwargs):
        if isinstance(path, (str, os.PathLike)) and os.fspath(path).startswith(images_dir):
            stats[os.fspath(path)] += 1
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(io, "open", counted_open)  # what pathlib's read_text/read_bytes/open call
    monkeypatch.setattr(builtins, "open", counted_open)
    monkeypatch.setattr(os, "stat", counted_stat)
    load_cache(root, "train", size=64, cache_dir=cache)
    monkeypatch.undo()
    assert len(opens) == 1, f"train.txt was opened {len(opens)} times on a cached load (modes {opens})"
    assert sorted(stats) == sorted(listed), f"{len(stats)} of the {len(listed)} listed images were stat-ed"
    worst = stats.most_common(1)[0]
    assert worst[1] == 1, f"{worst[0]} was stat-ed {worst[1]} times on one cached load"


def test_the_key_does_not_depend_on_how_the_root_is_spelled(root, tmp_path, monkeypatch):
    absolute = cache_paths(root, "val", 64, tmp_path / "cache")
    monkeypatch.chdir(root.parent)
    assert cache_paths(Path(root.name), "val", 64, tmp_path / "cache") == absolute, (
        "a relative root selects another cache"
    )


def test_a_missing_image_is_named_with_its_line(root, tmp_path):
    path, _ = MiniPlaces(root, "val").samples[2]
    path.unlink()
    with pytest.raises(DataError, match=rf"val\.txt line 3: image .*{path.name} not found"):
        load_cache(root, "val", size=64, cache_dir=tmp_path / "cache")


def _mapped_file(address: int) -> str | None:
    """The file whose mapping holds `address` in this process (Linux /proc/self/maps)."""
    maps = Path("/proc/self/maps")
    if not maps.is_file():
        pytest.skip("needs Linux /proc/self/maps to see memory mappings")
    for line in maps.read_text().splitlines():
        fields = line.split(maxsplit=5)
        lo, hi = (int(v, 16) for v in fields[0].split("-"))
        if lo <= address < hi:
            return fields[5].strip() if len(fields) == 6 else None
    return None


def test_a_changed_split_file_rebuilds_and_removes_the_stale_cache(root, tmp_path):
    cache = tmp_path / "cache"
    first, _ = load_cache(root, "train", size=64, cache_dir=cache)
    old_images, old_labels = cache_paths(root, "train", 64, cache)
    lines = (root / "train.txt").read_text().splitlines()
    (root / "train.txt").write_text("\n".join(reversed(lines[:10])) + "\n")  # other images, other order
    second, labels = load_cache(root, "train", size=64, cache_dir=cache)
    new_images, _ = cache_paths(root, "train", 64, cache)
    assert new_images != old_images and new_images.is_file()
    assert not old_images.exists() and not old_labels.exists(), "the stale cache was left behind"
    assert second.shape[0] == 10 and torch.equal(second[0], first[9]), "the rebuilt cache does not follow the new file"
    assert labels.tolist() == MiniPlaces(root, "train").targets()


def test_a_regenerated_image_under_the_same_name_rebuilds(root, tmp_path):
    """Same train.txt, byte for byte; one image rewritten with other pixels: the cache must not serve the old ones."""
    cache = tmp_path / "cache"
    load_cache(root, "train", size=64, cache_dir=cache)
    old_images, _ = cache_paths(root, "train", 64, cache)
    dataset = MiniPlaces(root, "train")
    path = dataset.samples[3][0]
    path.write_bytes(jpeg_bytes(size=(64, 64), seed=7))
    images, _ = load_cache(root, "train", size=64, cache_dir=cache)
    assert cache_paths(root, "train", 64, cache)[0] != old_images, "the key ignores the images' size and mtime"
    assert not old_images.exists(), "the stale cache was left behind"
    assert torch.equal(images[3], dataset[3][0]), f"the cache serves stale pixels for {path.name}"


def test_another_size_is_resized_and_kept_beside_the_first(root, tmp_path):
    cache = tmp_path / "cache"
    load_cache(root, "val", size=64, cache_dir=cache)
    small, _ = load_cache(root, "val", size=32, cache_dir=cache)
    assert small.shape[1:] == (3, 32, 32)
    assert cache_paths(root, "val", 64, cache)[0].is_file(), "building size 32 deleted the size-64 cache"


def test_an_interrupted_build_leaves_no_cache(root, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    calls = {"n": 0}
    original = MiniPlaces.__getitem__

    def failing(self, index):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(self, index)

    monkeypatch.setattr(MiniPlaces, "__getitem__", failing)
    with pytest.raises(KeyboardInterrupt):
        build_cache(root, "train", size=64, cache_dir=cache)
    images_path, _ = cache_paths(root, "train", 64, cache)
    assert not images_path.exists() and not list(cache.glob(".*.tmp")), sorted(p.name for p in cache.iterdir())


def test_a_non_square_image_is_named(tmp_path):
    root = write_set(tmp_path / "bad", "train/a/x.jpg 0\n", images={"train/a/x.jpg": jpeg_bytes(size=(24, 16))})
    with pytest.raises(DataError, match=r"x\.jpg: the cache stores square images, this one is 24×16"):
        load_cache(root, "train", size=16, cache_dir=tmp_path / "cache")


def test_a_missing_split_file_is_named(tmp_path):
    with pytest.raises(DataError, match=r"val\.txt: split file not found"):
        load_cache(tmp_path, "val", cache_dir=tmp_path / "cache")
