"""The corpus registry and a resumable, verified, atomic downloader.

`download("wikitext2", out)` tries each known mirror in order, streams the archive to
`out/.NAME.part` (resuming with HTTP Range after a cut connection, retrying transient errors
with backoff), checks the archive's sha256 when one is known or given, unpacks
`wiki.{train,valid,test}.{tokens|raw}` to temporary names, checks each file's known sha256, and
only then renames them to `train.txt`, `valid.txt`, `test.txt` and writes `.bertcli-download.json`.
A second run with complete, verified files does nothing.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bertcli.atomic import durable_replace
from bertcli.console import Reporter
from bertcli.errors import UserError

SPLITS = ("train", "valid", "test")
MARKER = ".bertcli-download.json"
CHUNK = 1 << 16


@dataclass(frozen=True)
class CorpusSpec:
    """Where a corpus lives and what its files must hash to."""

    name: str
    mirrors: tuple[str, ...]
    members: dict[str, str]  # split -> file name inside the archive (any directory)
    archive_sha256: str | None = None
    file_sha256: dict[str, str] = field(default_factory=dict)
    description: str = ""
    size: str = ""  # of the download, for `bertcli download --list`


def _wikitext(
    name: str, size: str, raw: bool, sums: dict[str, str] | None = None, archive_size: str = ""
) -> CorpusSpec:
    suffix = "raw" if raw else "tokens"
    archive = f"wikitext-{size}-{'raw-' if raw else ''}v1.zip"
    return CorpusSpec(
        name=name,
        mirrors=(
            f"https://wikitext.smerity.com/{archive}",
            f"https://s3.amazonaws.com/research.metamind.io/wikitext/{archive}",
        ),
        members={split: f"wiki.{split}.{suffix}" for split in SPLITS},
        file_sha256=sums or {},
        description=f"WikiText-{size} ({'raw characters' if raw else 'tokenized, <unk>'}), "
        "Merity et al. 2016, CC BY-SA 3.0",
        size=archive_size,
    )


# sha256 of the unpacked WikiText-2 v1 files (the published wiki.*.tokens, byte for byte).
WIKITEXT2_SHA256 = {
    "train": "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f",
    "valid": "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
    "test": "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
}

REGISTRY: dict[str, CorpusSpec] = {
    "wikitext2": _wikitext(
        "wikitext2", "2", raw=False, sums=WIKITEXT2_SHA256, archive_size="4.5 MB"
    ),
    "wikitext2-raw": _wikitext("wikitext2-raw", "2", raw=True, archive_size="4.7 MB"),
    "wikitext103": _wikitext("wikitext103", "103", raw=False, archive_size="190 MB"),
    "wikitext103-raw": _wikitext("wikitext103-raw", "103", raw=True, archive_size="192 MB"),
}


class TransientError(Exception):
    """A failure worth retrying on the same mirror (reset, timeout, 5xx, short read)."""


@dataclass
class DownloadResult:
    name: str
    directory: str
    files: dict[str, str]
    url: str | None
    skipped: bool  # already complete and verified


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_complete(out: Path, spec: CorpusSpec) -> bool:
    """All split files present and matching the recorded (and any known) sha256 sums."""
    marker = out / MARKER
    if not marker.is_file():
        return False
    try:
        recorded = json.loads(marker.read_text())["sha256"]
    except (ValueError, KeyError, TypeError):
        return False
    for split in SPLITS:
        path = out / f"{split}.txt"
        if not path.is_file():
            return False
        digest = sha256_file(path)
        if digest != recorded.get(split) or digest != spec.file_sha256.get(split, digest):
            return False
    return True


def _open(url: str, offset: int, timeout: float):
    request = urllib.request.Request(url, headers={"User-Agent": "bertcli"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416:  # range past the end: the partial file is complete or bogus
            raise TransientError("range not satisfiable") from exc
        if exc.code >= 500 or exc.code == 429:
            raise TransientError(f"HTTP {exc.code}") from exc
        raise
    except (TimeoutError, urllib.error.URLError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, FileNotFoundError):
            raise
        raise TransientError(str(reason)) from exc


def fetch(
    url: str,
    part: Path,
    reporter: Reporter,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Stream `url` into `part`, resuming from its current size; retry transient failures."""
    attempt = 0
    while True:
        offset = part.stat().st_size if part.exists() else 0
        try:
            with _open(url, offset, timeout) as response:
                status = getattr(response, "status", 200) or 200
                if offset and status != 206:
                    offset = 0  # the server ignored Range: start over
                length = response.headers.get("Content-Length")
                total = offset + int(length) if length else None
                reporter.start(f"Downloading {url.rsplit('/', 1)[-1]}", total=total, unit="bytes")
                reporter.advance(offset)
                received = 0
                with part.open("ab" if offset else "wb") as handle:
                    while True:
                        chunk = response.read(CHUNK)
                        if not chunk:
                            break
                        handle.write(chunk)
                        received += len(chunk)
                        reporter.advance(len(chunk))
                reporter.finish()
                if length is not None and received < int(length):
                    raise TransientError(f"connection closed after {offset + received} bytes")
                return
        except (TimeoutError, TransientError, http.client.IncompleteRead, ConnectionError) as exc:
            reporter.finish()
            attempt += 1
            if attempt > retries:
                raise TransientError(f"{exc} (gave up after {retries} retries)") from exc
            if isinstance(exc, TransientError) and "range not satisfiable" in str(exc):
                part.unlink(missing_ok=True)
            sleep(backoff * 2 ** (attempt - 1))


def _archive_members(archive: Path) -> dict[str, Callable[[], io.BufferedIOBase]]:
    """Basename -> opener for every file in a zip or tar archive."""
    if zipfile.is_zipfile(archive):
        zf = zipfile.ZipFile(archive)
        return {
            Path(info.filename).name: (lambda info=info: zf.open(info))
            for info in zf.infolist()
            if not info.is_dir()
        }
    try:
        tf = tarfile.open(archive)
    except tarfile.TarError:
        raise UserError(
            f"{archive.name}: downloaded file is neither a zip nor a tar archive"
        ) from None
    return {
        Path(m.name).name: (lambda m=m: tf.extractfile(m)) for m in tf.getmembers() if m.isfile()
    }


def unpack(archive: Path, spec: CorpusSpec, out: Path) -> dict[str, str]:
    """Extract the split files to temporary names, verify, then rename; returns sha256 sums."""
    members = _archive_members(archive)
    missing = [name for name in spec.members.values() if name not in members]
    if missing:
        raise UserError(f"{archive.name}: archive lacks {', '.join(missing)}")
    sums: dict[str, str] = {}
    temps: dict[str, Path] = {}
    try:
        for split, member in spec.members.items():
            tmp = out / f".{split}.txt.tmp"
            digest = hashlib.sha256()
            with members[member]() as src, tmp.open("wb") as dst:
                for chunk in iter(lambda src=src: src.read(1 << 20), b""):
                    digest.update(chunk)
                    dst.write(chunk)
            temps[split] = tmp
            sums[split] = digest.hexdigest()
            known = spec.file_sha256.get(split)
            if known and sums[split] != known:
                raise UserError(
                    f"{member}: sha256 {sums[split][:12]}… does not match the known {known[:12]}…"
                )
        for split, tmp in temps.items():
            durable_replace(tmp, out / f"{split}.txt")
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
    return sums


def download(
    name: str,
    out: str | Path | None = None,
    url: str | None = None,
    sha256: str | None = None,
    reporter: Reporter | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 30.0,
) -> DownloadResult:
    """Fetch, verify and unpack a registered corpus into `out` (default data/NAME)."""
    reporter = reporter or Reporter()
    if name not in REGISTRY:
        raise UserError(f"unknown corpus {name!r}; choose one of {', '.join(REGISTRY)}")
    if sha256 is not None and (
        len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256.lower())
    ):
        raise UserError("--sha256 must be 64 hexadecimal digits")
    spec = REGISTRY[name]
    out = Path(out) if out is not None else Path("data") / name
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    files = {split: str(out / f"{split}.txt") for split in SPLITS}
    if is_complete(out, spec):
        return DownloadResult(name, str(out), files, None, skipped=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).unlink(missing_ok=True)
    part = out / f".{name}.part"
    expected = (sha256 or spec.archive_sha256 or "").lower() or None
    errors: list[str] = []
    for mirror in (url,) if url else spec.mirrors:
        try:
            fetch(mirror, part, reporter, retries=retries, backoff=backoff, timeout=timeout)
        except (TransientError, urllib.error.URLError, OSError, ValueError) as exc:
            errors.append(f"{mirror}: {getattr(exc, 'reason', exc)}")
            continue  # a partial file stays for the next mirror or run to resume
        if expected and sha256_file(part) != expected:
            part.unlink(missing_ok=True)
            raise UserError(f"{mirror}: sha256 does not match {expected[:12]}…; nothing was kept")
        try:
            sums = unpack(part, spec, out)
        finally:
            part.unlink(missing_ok=True)
        marker = {"name": name, "url": mirror, "sha256": sums}
        tmp = out / f"{MARKER}.tmp"
        tmp.write_text(json.dumps(marker, indent=2) + "\n")
        durable_replace(tmp, out / MARKER)
        return DownloadResult(name, str(out), files, mirror, skipped=False)
    raise UserError(f"could not download {name}: " + "; ".join(errors))
