"""`download` without the network: an archive already in ROOT is unpacked, a file:// mirror after a dead URL is
used, and every failure (offline, truncated archive, checksum, unsafe member, missing dev-kit file) is one
DownloadError that says what to do by hand. Nothing here reaches the internet: dead URLs are refused local ports."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from impl.data import DownloadError, MiniPlaces, download
from spec.data.conftest import jpeg_bytes

DEAD = "http://127.0.0.1:9/"  # the discard port: connection refused at once


def make_archive(path: Path, top: str = "", extra: dict[str, bytes] | None = None) -> Path:
    """A tiny data.tar.gz shaped like the official one: images/ (optionally under a top folder) and the txt files."""
    files = {
        "images/train/a/alpha/00000001.jpg": jpeg_bytes(seed=1),
        "images/val/00000001.jpg": jpeg_bytes(seed=2),
        "train.txt": b"train/a/alpha/00000001.jpg 0\n",
        "val.txt": b"val/00000001.jpg 1\n",
        "categories.txt": b"/a/alpha 0\n/b/beta 1\n",
        **(extra or {}),
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(top + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("top", ["", "data/"], ids=["flat", "nested"])
def test_archive_already_in_root_is_unpacked_without_the_network(tmp_path: Path, top: str) -> None:
    make_archive(tmp_path / "data.tar.gz", top=top)
    assert download(tmp_path, urls=[DEAD], devkit_url=DEAD, progress=False) == tmp_path
    val = MiniPlaces(tmp_path, "val")
    assert len(val) == 1 and val.classes == ["alpha", "beta"] and val[0][1] == 1
    assert not (tmp_path / ".extracting").exists()


def test_falls_back_to_the_next_url_and_checks_the_sha256(tmp_path: Path) -> None:
    source = make_archive(tmp_path / "source.tar.gz")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    root = tmp_path / "root"
    download(root, urls=[DEAD + "data.tar.gz", source.as_uri()], devkit_url=DEAD, sha256=digest, progress=False)
    assert len(MiniPlaces(root, "train")) == 1
    assert (root / "data.tar.gz").read_bytes() == source.read_bytes()
    assert not list(root.glob("*.part"))


def test_offline_says_where_to_get_the_archive_and_where_to_put_it(tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as info:
        download(tmp_path, urls=[DEAD + "a.tar.gz", DEAD + "b.tar.gz"], progress=False)
    text = str(info.value)
    for needed in (DEAD + "a.tar.gz", DEAD + "b.tar.gz", str(tmp_path / "data.tar.gz"), "miniplaces download"):
        assert needed in text, f"{needed!r} missing from: {text}"
    assert not (tmp_path / "images").exists() and not list(tmp_path.glob("*.part"))


def test_truncated_archive_is_reported_and_leaves_no_images_folder(tmp_path: Path) -> None:
    whole = make_archive(tmp_path / "whole.tar.gz").read_bytes()
    root = tmp_path / "root"
    root.mkdir()
    (root / "data.tar.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DownloadError, match="not a complete tar.gz archive.*delete it"):
        download(root, urls=[], devkit_url=DEAD, progress=False)
    assert not (root / "images").exists() and not (root / ".extracting").exists()


def test_checksum_mismatch_is_an_error(tmp_path: Path) -> None:
    make_archive(tmp_path / "data.tar.gz")
    with pytest.raises(DownloadError, match="SHA-256 .* != expected 00"):
        download(tmp_path, urls=[], sha256="00" * 32, progress=False)
    assert not (tmp_path / "images").exists()


def test_archive_member_escaping_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    make_archive(root / "data.tar.gz", extra={"../escaped.txt": b"x"})
    with pytest.raises(DownloadError, match="not a complete tar.gz archive"):
        download(root, urls=[], devkit_url=DEAD, progress=False)
    assert not (tmp_path / "escaped.txt").exists()


def test_missing_devkit_file_offline_names_it_and_its_place(tmp_path: Path) -> None:
    make_archive(tmp_path / "data.tar.gz")
    download(tmp_path, urls=[], devkit_url=DEAD, progress=False)  # complete: nothing to fetch
    (tmp_path / "val.txt").unlink()
    with pytest.raises(DownloadError, match=f"val.txt.*{DEAD}val.txt.*at {tmp_path / 'val.txt'}"):
        download(tmp_path, urls=[], devkit_url=DEAD, progress=False)


def test_a_connection_cut_mid_body_is_a_download_error_leaving_no_partial_file(tmp_path: Path, monkeypatch) -> None:
    import http.client
    import io
    import urllib.request

    from impl.data.download import fetch

    class CutShort(io.BytesIO):
        headers = {"Content-Length": "100"}

        def read(self, size: int = -1) -> bytes:
            raise http.client.IncompleteRead(b"x" * 10, 90)

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: CutShort())
    with pytest.raises(DownloadError, match="could not fetch http://example.invalid/data.tar.gz"):
        fetch("http://example.invalid/data.tar.gz", tmp_path / "data.tar.gz", progress=False)
    assert not list(tmp_path.iterdir()), "a partial download was left behind"
