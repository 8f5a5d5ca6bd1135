"""The corpus registry and a resumable, verified, atomic downloader.

`download("wikitext2", out)` tries each known mirror in order, streams the archive to
`out/.NAME.part` (resuming with HTTP Range after a cut connection, retrying transient errors
with backoff), checks the archive's sha256 when one is known or given, unpacks
`wiki.{train,valid,test}.{tokens|raw}` to temporary names, checks each file's known sha256, and
only then renames them to `train.txt`, `valid.txt`, `test.txt` and writes `.bertcli-download.json`.
A second run with complete, verified files does nothing.

An archive that fails verification (a wrong sha256, a CRC error, not an archive at all: a
garbage `.part` left by another run, a corrupt mirror) is discarded and fetched once more from
the start; a second failure moves on to the next mirror, and the last one is one line. A
`.part` the server answers with HTTP 416 (nothing past its end) is verified before anything is
thrown away: it is usually the complete archive of a run killed before unpacking.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import json
import lzma
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bertcli.atomic import durable_replace
from bertcli.console import Reporter
from bertcli.errors import MIN_FREE, UserError, check_space, writing

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


class RangeNotSatisfiable(TransientError):
    """HTTP 416: the server has nothing past the end of our partial file."""


class DamagedArchive(UserError):
    """The fetched file is not the archive it should be: discard it and fetch again."""


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
            raise RangeNotSatisfiable("range not satisfiable") from exc
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
    """Stream `url` into `part`, resuming from its current size; retry transient failures.

    A partial file the server answers with 416 is returned as it is, for the caller to verify.
    """
    attempt = 0
    while True:
        offset = part.stat().st_size if part.exists() else 0
        try:
            try:
                response = _open(url, offset, timeout)
            except RangeNotSatisfiable:
                if offset:
                    return  # complete already, or garbage: verification decides
                raise
            with response:
                status = getattr(response, "status", 200) or 200
                if offset and status != 206:
                    offset = 0  # the server ignored Range: start over
                length = response.headers.get("Content-Length")
                total = offset + int(length) if length else None
                reporter.start(f"Downloading {url.rsplit('/', 1)[-1]}", total=total, unit="bytes")
                reporter.advance(offset)
                received = 0
                needed = int(length) + MIN_FREE if length else None
                if needed:
                    check_space(part, needed, "the rest of the download")
                with (
                    writing(part, needed, "the download"),
                    part.open("ab" if offset else "wb") as handle,
                ):
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
            sleep(backoff * 2 ** (attempt - 1))


def _archive_members(archive: Path) -> dict[str, Callable[[], io.BufferedIOBase]]:
    """Basename -> opener for every file in a zip or tar archive."""
    if zipfile.is_zipfile(archive):
        try:
            zf = zipfile.ZipFile(archive)
        except (zipfile.BadZipFile, ValueError, EOFError) as exc:
            raise DamagedArchive(f"{archive.name}: damaged zip archive ({exc})") from None
        return {
            Path(info.filename).name: (lambda info=info: zf.open(info))
            for info in zf.infolist()
            if not info.is_dir()
        }
    try:
        tf = tarfile.open(archive)
        members = tf.getmembers()
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, lzma.LZMAError, zlib.error):
        raise DamagedArchive(
            f"{archive.name}: downloaded file is neither a zip nor a tar archive"
        ) from None
    return {Path(m.name).name: (lambda m=m: tf.extractfile(m)) for m in members if m.isfile()}


def unpack(archive: Path, spec: CorpusSpec, out: Path) -> dict[str, str]:
    """Extract the split files to temporary names, verify, then rename; returns sha256 sums."""
    members = _archive_members(archive)
    missing = [name for name in spec.members.values() if name not in members]
    if missing:
        raise DamagedArchive(f"{archive.name}: archive lacks {', '.join(missing)}")
    sums: dict[str, str] = {}
    temps: dict[str, Path] = {}
    try:
        for split, member in spec.members.items():
            tmp = out / f".{split}.txt.tmp"
            temps[split] = tmp  # before writing: a failure halfway must not leave it behind
            digest = hashlib.sha256()
            try:
                with writing(out / f"{split}.txt"), members[member]() as src, tmp.open("wb") as dst:
                    for chunk in iter(lambda src=src: src.read(1 << 20), b""):
                        digest.update(chunk)
                        dst.write(chunk)
            except (zipfile.BadZipFile, zlib.error, EOFError, tarfile.TarError) as exc:
                raise DamagedArchive(f"{archive.name}: {member} is damaged ({exc})") from None
            except (gzip.BadGzipFile, lzma.LZMAError) as exc:
                raise DamagedArchive(f"{archive.name}: {member} is damaged ({exc})") from None
            sums[split] = digest.hexdigest()
            known = spec.file_sha256.get(split)
            if known and sums[split] != known:
                raise DamagedArchive(
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
            sums = _fetch_verified(
                mirror, part, spec, out, expected, reporter, retries, backoff, timeout
            )
        except DamagedArchive as exc:
            errors.append(f"{mirror}: {exc} (fetched twice; nothing was kept)")
            continue
        except (TransientError, urllib.error.URLError, OSError, ValueError) as exc:
            if isinstance(exc, OSError) and not isinstance(exc, urllib.error.URLError):
                if exc.errno is not None and exc.filename is not None:
                    raise  # a local write failed (full disk, permissions): the CLI says so
            errors.append(f"{mirror}: {getattr(exc, 'reason', exc)}")
            continue  # a partial file stays for the next mirror or run to resume
        marker = {"name": name, "url": mirror, "sha256": sums}
        tmp = out / f"{MARKER}.tmp"
        tmp.write_text(json.dumps(marker, indent=2) + "\n")
        durable_replace(tmp, out / MARKER)
        return DownloadResult(name, str(out), files, mirror, skipped=False)
    raise UserError(f"could not download {name}: " + "; ".join(errors))


def _fetch_verified(
    mirror: str,
    part: Path,
    spec: CorpusSpec,
    out: Path,
    expected: str | None,
    reporter: Reporter,
    retries: int,
    backoff: float,
    timeout: float,
) -> dict[str, str]:
    """Fetch (resuming `part`), verify and unpack; a damaged archive is discarded and fetched
    once more from the start, and a second damaged one raised."""
    for attempt in (1, 2):
        fetch(mirror, part, reporter, retries=retries, backoff=backoff, timeout=timeout)
        try:
            if expected and sha256_file(part) != expected:
                raise DamagedArchive(f"sha256 does not match {expected[:12]}…")
            sums = unpack(part, spec, out)
        except DamagedArchive as exc:
            part.unlink(missing_ok=True)
            if attempt == 2:
                raise
            reporter.log(f"{exc}: discarded, downloading {mirror} again")
            continue
        part.unlink(missing_ok=True)
        return sums
    raise AssertionError("unreachable")  # pragma: no cover
