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

import errno
import gzip
import hashlib
import http.client
import io
import json
import lzma
import os
import re
import tarfile
import time
import urllib.error
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bertcli.atomic import durable_replace, is_temporary, temp_name, write_text_atomic
from bertcli.console import Reporter
from bertcli.errors import MIN_FREE, UserError, check_space, writing
from bertcli.remote import open_url, warn_plain_http

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
    archive_md5: str | None = None  # where only an MD5 is published (unless --sha256 is given)
    member_cap: dict[str, int] = field(default_factory=dict)  # split -> most bytes unpacked


def _wikitext(
    name: str,
    size: str,
    raw: bool,
    sums: dict[str, str] | None = None,
    archive_size: str = "",
    md5: str | None = None,
    caps: dict[str, int] | None = None,
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
        archive_md5=md5,
        member_cap=caps or {},
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

# MD5 of the published archives: only MD5s are published for these zips, so that is what is
# checked, before anything is unpacked (an MD5 collision is feasible for whoever builds both
# files, not for a mirror that must match an archive made in 2016). WikiText-2 (tokens) is
# checked by the sha256 of each unpacked file instead, which is stronger; its archive MD5
# (torchtext: 542ccefacc6c27f945fb54453812b3cd) is not needed. Sources:
# - wikitext-103-v1.zip: torchtext's dataset module (github.com/pytorch/text,
#   torchtext/datasets/wikitext103.py, `MD5 = '9ddaacaf…'`);
# - wikitext-2-raw-v1.zip, wikitext-103-raw-v1.zip: ARENA's transformer exercises
#   (`expected_hexdigest = {"103": "0ca3512b…", "2": "f407a2d5…"}`, checked with hashlib.md5 on
#   the s3 research.metamind.io zips), the same two values in an independent Rust WikiText loader
#   (`WikiTextFlavor::Raw2 => ("wikitext-2-raw", "f407a2d5…")`).
WIKITEXT_MD5 = {
    "wikitext103": "9ddaacaf6af0710eda8c456decff7832",
    "wikitext2-raw": "f407a2d53283fc4a49bcff21bc5f3770",
    "wikitext103-raw": "0ca3512bd7a238be4a63ce7b434f8935",
}
# The most an archive member may unpack to: the published files are about 11 MB (WikiText-2
# train; 1.2 MB valid/test) and 540 MB (WikiText-103 train), so these bounds sit well above them
# while a zip bomb (1 MB declaring 1 GiB) stops the moment it passes one.
_WT2_CAP = {"train": 32 << 20, "valid": 8 << 20, "test": 8 << 20}
_WT103_CAP = {"train": 640 << 20, "valid": 8 << 20, "test": 8 << 20}
MEMBER_CAP = 1 << 30  # for a corpus without its own bounds

REGISTRY: dict[str, CorpusSpec] = {
    "wikitext2": _wikitext(
        "wikitext2",
        "2",
        raw=False,
        sums=WIKITEXT2_SHA256,
        archive_size="4.5 MB",
        caps=_WT2_CAP,
    ),
    "wikitext2-raw": _wikitext(
        "wikitext2-raw",
        "2",
        raw=True,
        archive_size="4.7 MB",
        md5=WIKITEXT_MD5["wikitext2-raw"],
        caps=_WT2_CAP,
    ),
    "wikitext103": _wikitext(
        "wikitext103",
        "103",
        raw=False,
        archive_size="190 MB",
        md5=WIKITEXT_MD5["wikitext103"],
        caps=_WT103_CAP,
    ),
    "wikitext103-raw": _wikitext(
        "wikitext103-raw",
        "103",
        raw=True,
        archive_size="192 MB",
        md5=WIKITEXT_MD5["wikitext103-raw"],
        caps=_WT103_CAP,
    ),
}


class TransientError(Exception):
    """A failure worth retrying on the same mirror (reset, timeout, 5xx, short read)."""


class RangeNotSatisfiable(TransientError):
    """HTTP 416: the server has nothing past the end of our partial file."""


class DamagedArchive(UserError):
    """The fetched file is not the archive it should be: discard it and fetch again."""


class OversizedMember(DamagedArchive):
    """A member unpacks past its bound: a crafted archive, not a transfer error (not refetched)."""


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


def archive_sums(path: Path) -> tuple[str, str]:
    """(sha256, md5) of a file in one pass."""
    sha256, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha256.update(chunk)
            md5.update(chunk)
    return sha256.hexdigest(), md5.hexdigest()


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


def refuse_foreign_directory(out: Path, name: str) -> None:
    """UserError if `out` holds anything a download of `name` does not write: its split files,
    marker, partial archive and temporaries. A download writes into `out`, so a directory of
    the user's (which may hold a `train.txt` of their own beside other files) is refused."""
    if not out.is_dir():
        return
    ours = {MARKER, f".{name}.part", *(f"{split}.txt" for split in SPLITS)}
    # an earlier version's temporaries of the split files (`.train.txt.tmp-…`) are ours too
    splits = re.compile("|".join(re.escape(f"{split}.txt") for split in SPLITS))
    foreign = sorted(
        e.name
        for e in out.iterdir()
        if e.name not in ours and not is_temporary(e.name, splits)
    )
    if foreign:
        shown = ", ".join(foreign[:3]) + (
            f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        )
        raise UserError(
            f"--out {out} is not empty and not a download of {name} (it holds {shown}); "
            "choose a new or empty directory"
        )


def _open(url: str, offset: int, timeout: float):
    try:
        return open_url(url, timeout, {"Range": f"bytes={offset}-"} if offset else None)
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
    if part.is_symlink():
        # a link left where our partial file goes: resuming would append to its target
        reporter.log(f"{part.name} is a symbolic link, not our partial download: replaced")
        part.unlink()
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
                    _open_part(part, append=bool(offset)) as handle,
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


def _open_part(part: Path, append: bool) -> io.BufferedWriter:
    """The partial download for writing, never through a symbolic link (O_NOFOLLOW)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    try:
        fd = os.open(part, flags | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UserError(f"{part} is a symbolic link; refusing to write through it") from None
        raise
    return os.fdopen(fd, "ab" if append else "wb")


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


def _create_new(path: Path) -> io.BufferedWriter:
    """A fresh file for writing: never an existing one, never through a link."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    return os.fdopen(os.open(path, flags, 0o666), "wb")


def unpack(archive: Path, spec: CorpusSpec, out: Path) -> dict[str, str]:
    """Extract the split files to temporary names, verify, then rename; returns sha256 sums.

    A member stops being unpacked the moment it passes its bound (`spec.member_cap`), so a
    small archive declaring a huge file costs at most that much disk."""
    members = _archive_members(archive)
    missing = [name for name in spec.members.values() if name not in members]
    if missing:
        raise DamagedArchive(f"{archive.name}: archive lacks {', '.join(missing)}")
    sums: dict[str, str] = {}
    temps: dict[str, Path] = {}
    try:
        for split, member in spec.members.items():
            final = out / f"{split}.txt"
            tmp = out / temp_name(final)
            temps[split] = tmp  # before writing: a failure halfway must not leave it behind
            cap = spec.member_cap.get(split, MEMBER_CAP)
            digest = hashlib.sha256()
            written = 0
            try:
                with writing(final), members[member]() as src, _create_new(tmp) as dst:
                    for chunk in iter(lambda src=src: src.read(1 << 20), b""):
                        written += len(chunk)
                        if written > cap:
                            raise OversizedMember(
                                f"{archive.name}: {member} unpacks to more than {cap >> 20} MiB, "
                                "far more than the published file (a zip bomb?)"
                            )
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
    if url:
        warn_plain_http(url, reporter, "--url")
    out = Path(out) if out is not None else Path("data") / name
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    refuse_foreign_directory(out, name)
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
            tries = "" if isinstance(exc, OversizedMember) else "fetched twice; "
            errors.append(f"{mirror}: {exc} ({tries}nothing was kept)")
            continue
        except (TransientError, urllib.error.URLError, OSError, ValueError) as exc:
            if isinstance(exc, OSError) and not isinstance(exc, urllib.error.URLError):
                if exc.errno is not None and exc.filename is not None:
                    raise  # a local write failed (full disk, permissions): the CLI says so
            errors.append(f"{mirror}: {getattr(exc, 'reason', exc)}")
            continue  # a partial file stays for the next mirror or run to resume
        marker = {"name": name, "url": mirror, "sha256": sums}
        write_text_atomic(out / MARKER, json.dumps(marker, indent=2) + "\n")
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
            sha256, md5 = archive_sums(part)
            if expected and sha256 != expected:
                raise DamagedArchive(f"sha256 does not match {expected[:12]}…")
            if not expected and spec.archive_md5 and md5 != spec.archive_md5:
                raise DamagedArchive(f"MD5 does not match the published {spec.archive_md5[:12]}…")
            sums = unpack(part, spec, out)
        except DamagedArchive as exc:
            part.unlink(missing_ok=True)
            if attempt == 2 or isinstance(exc, OversizedMember):
                raise
            reporter.log(f"{exc}: discarded, downloading {mirror} again")
            continue
        part.unlink(missing_ok=True)
        return sums
    raise AssertionError("unreachable")  # pragma: no cover
