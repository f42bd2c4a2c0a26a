"""Fetch and unpack the official MiniPlaces data (`miniplaces download ROOT`). Never run by the spec.

`download(root)` uses `<root>/data.tar.gz` when it is already there (fetched by hand), else streams it from the
MiniPlaces project URL, then the known mirrors, with a tqdm progress bar; checks the byte count against the server's
Content-Length (and a SHA-256 when one is given), extracts with tarfile's safe `data` filter, and fetches the
development kit's `train.txt`, `val.txt` and `categories.txt` when the archive lacks them. Offline, it raises one
`DownloadError` that says where to get the archive and where to put it.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import shutil
import tarfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

ARCHIVE_NAME = "data.tar.gz"
ARCHIVE_URLS: tuple[str, ...] = (
    "https://places.csail.mit.edu/miniplaces/data/data.tar.gz",
    "http://miniplaces.csail.mit.edu/data/data.tar.gz",
    # The course's Google Drive copy (its download script fetches this id with gdown).
    "https://drive.usercontent.google.com/download?id=16GYHdSWS3iMYwMPv5FpeDZN2rH7PR0F2&export=download&confirm=t",
)
DEVKIT_URL = "https://raw.githubusercontent.com/CSAILVision/miniplaces/master/data/"
DEVKIT_FILES = ("train.txt", "val.txt", "categories.txt")
_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """The data could not be fetched or unpacked; the message says what to do by hand."""


def download(
    root: str | Path,
    *,
    urls: Sequence[str] = ARCHIVE_URLS,
    devkit_url: str = DEVKIT_URL,
    sha256: str | None = None,
    progress: bool = True,
    timeout_s: float = 30.0,
) -> Path:
    """Put the official MiniPlaces data under `root` (images/, train.txt, val.txt, categories.txt); return `root`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    archive = root / ARCHIVE_NAME
    if not (root / "images").is_dir():
        if not archive.is_file():
            _fetch_first(urls, archive, progress=progress, timeout_s=timeout_s)
        if sha256 is not None:
            _check_sha256(archive, sha256)
        extract(archive, root)
    for name in DEVKIT_FILES:
        if not (root / name).is_file():
            try:
                fetch(devkit_url + name, root / name, progress=False, timeout_s=timeout_s)
            except DownloadError as exc:
                raise DownloadError(
                    f"{exc}\nThe images are in {root / 'images'}; put the development kit's {name} "
                    f"(from {devkit_url}{name}) at {root / name} by hand."
                ) from None
    log.info("MiniPlaces data ready in %s", root)
    return root


def fetch(url: str, dest: Path, *, progress: bool = True, timeout_s: float = 30.0) -> Path:
    """Stream `url` to `dest` through a temporary file, with a progress bar; the size must match Content-Length."""
    partial = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response, partial.open("wb") as out:
            expected = int(response.headers.get("Content-Length") or 0) or None
            received = 0
            with tqdm(total=expected, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        partial.unlink(missing_ok=True)
        raise DownloadError(f"could not fetch {url}: {getattr(exc, 'reason', exc)}") from None
    if expected is not None and received != expected:
        partial.unlink(missing_ok=True)
        raise DownloadError(f"{url}: got {received} bytes, the server announced {expected} (interrupted?)")
    partial.replace(dest)
    return dest


def extract(archive: Path, root: Path) -> None:
    """Unpack `archive` into `root` through a scratch folder, so `images/` appears only once extraction is complete.

    An archive whose files sit under one top folder (`data/images/...`) is lifted to `root`.
    """
    scratch = root / ".extracting"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(scratch, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        raise DownloadError(
            f"{archive}: not a complete tar.gz archive ({exc}); delete it and rerun `miniplaces download {root}`"
        ) from None
    found = [p.parent for p in (scratch / "images", *scratch.glob("*/images")) if p.is_dir()]
    if len(found) != 1:
        shutil.rmtree(scratch, ignore_errors=True)
        raise DownloadError(f"{archive}: expected one images/ folder in the archive, found {len(found)}")
    for item in sorted(found[0].iterdir(), key=lambda p: p.name == "images"):  # images/ last: it marks completion
        if not (root / item.name).exists():
            item.replace(root / item.name)
    shutil.rmtree(scratch, ignore_errors=True)


def _fetch_first(urls: Sequence[str], archive: Path, *, progress: bool, timeout_s: float) -> None:
    failures = []
    for url in urls:
        log.info("downloading %s", url)
        try:
            fetch(url, archive, progress=progress, timeout_s=timeout_s)
            return
        except DownloadError as exc:
            failures.append(str(exc))
    tried = "\n  ".join(failures)
    raise DownloadError(
        f"could not download MiniPlaces ({ARCHIVE_NAME}):\n  {tried}\n"
        f"Get {ARCHIVE_NAME} on a machine with internet access from {urls[0] if urls else ARCHIVE_URLS[0]}, "
        f"put it at {archive}, and rerun `miniplaces download {archive.parent}` (it unpacks an archive already there). "
        f"Without the real data, `miniplaces synth DIR` writes a small synthetic stand-in."
    )


def _check_sha256(archive: Path, expected: str) -> None:
    digest = hashlib.sha256()
    with archive.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != expected.lower():
        raise DownloadError(f"{archive}: SHA-256 {digest.hexdigest()} != expected {expected}; delete it and rerun")
