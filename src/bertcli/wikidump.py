"""Find, fetch and verify a Wikipedia `pages-articles` dump on Wikimedia's dump server.

The server's layout (mirrors copy it): `BASE/{db}/` lists dump dates, `BASE/{db}/{date}/
dumpstatus.json` says per job whether it is done and lists its files with sizes and sha1 sums,
and `{db}-{date}-sha1sums.txt` lists the sums again. We take the `articlesmultistreamdump` job
(pages-articles in multistream parts for large wikis, one file for small ones) and fall back to
`articlesdump`. Without `--date` the newest date whose job is done is used. Each file is
fetched with `download.fetch` (HTTP Range resume, retries) to `.NAME.part`, its sha1 checked
against the published one, and only then renamed to NAME; a bad sum leaves nothing under NAME.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bertcli.console import Reporter
from bertcli.download import TransientError, fetch
from bertcli.errors import UserError
from bertcli.remote import read_capped

DUMP_SERVER = "https://dumps.wikimedia.org"
MIRRORS = (DUMP_SERVER, "https://ftp.acc.umu.se/mirror/wikimedia.org/dumps")
JOBS = ("articlesmultistreamdump", "articlesdump")  # preferred first
DATES_TRIED = 4  # the newest dump is often still running: look this far back

# Wikipedia language codes (Wikimedia's sitematrix, active wikis); `--lang` accepts these.
LANGUAGES = (
    "aa ab ace ady af ak als alt am ami an ang ann anp ar arc ary arz as ast atj av avk awa ay "
    "az azb ba ban bar bat-smg bbc bcl bdr be be-tarask bew bg bh bi bjn blk bm bn bo bpy br "
    "bs btm bug bxr ca cbk-zam cdo ce ceb ch cho chr chy ckb co cr crh cs csb cu cv cy da dag de "
    "dga din diq dsb dtp dty dv dz ee el eml en eo es et eu ext fa fat ff fi fiu-vro fj fo fon "
    "fr frp frr fur fy ga gag gan gcr gd gl glk gn gom gor got gpe gu guc gur guw gv ha hak haw "
    "he hi hif ho hr hsb ht hu hy hyw hz ia iba id ie ig igl ii ik ilo inh io is it iu ja jam "
    "jbo jv ka kaa kab kbd kbp kcg kg kge ki kj kk kl km kn knc ko koi kr krc ks ksh ku kus kv "
    "kw ky la lad lb lbe lez lfn lg li lij lld lmo ln lo lrc lt ltg lv mad mai map-bms mdf mg "
    "mh mhr mi min mk ml mn mni mnw mos mr mrj ms mt mus mwl my myv mzn na nah nap nds nds-nl "
    "ne new ng nia nl nn no nov nqo nr nrm nso nv ny oc olo om or os pa pag pam pap pcd pcm pdc "
    "pfl pi pih pl pms pnb pnt ps pt pwn qu rki rm rmy rn ro roa-rup roa-tara rsk ru rue rw sa "
    "sah sat sc scn sco sd se sg sh shi shn si simple sk skr sl sm smn sn so sq sr srn ss st "
    "stq su sv sw syl szl szy ta tay tcy tdd te tet tg th ti tig tk tl tly tn to tok tpi tr trv "
    "ts tt tum tw ty tyv udm ug uk ur uz ve vec vep vi vls vo wa war wo wuu xal xh xmf yi yo "
    "yue za zea zgh zh zh-classical zh-min-nan zh-yue zu"
).split()


@dataclass(frozen=True)
class DumpFile:
    """One file of a dump job, as its dumpstatus.json / sha1sums.txt describe it."""

    name: str
    url: str
    sha1: str
    size: int | None = None


@dataclass(frozen=True)
class Dump:
    db: str
    date: str
    base: str
    job: str
    files: tuple[DumpFile, ...]


def wiki_db(lang: str) -> str:
    """The dump database name of a language (`en` → `enwiki`), or UserError naming the known."""
    lang = lang.strip().lower()
    if lang not in LANGUAGES:
        raise UserError(f"unknown Wikipedia language {lang!r}; known: {' '.join(LANGUAGES)}")
    if lang == "be-tarask":
        return "be_x_oldwiki"  # the one wiki whose database keeps its old name
    return lang.replace("-", "_") + "wiki"


def _get(url: str, timeout: float, what: str) -> bytes:
    return read_capped(url, timeout, what)


def natural(name: str) -> list[Any]:
    """A sort key that puts multistream2 before multistream10."""
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", name)]


def dump_file_name(name: Any, db: str, date: str, where: str) -> str:
    """`name` if it is a plain file name of this dump (`{db}-{date}-pages-articles…`), else
    UserError: the mirror names the file we write, so it must not pick a path."""
    if not isinstance(name, str):
        raise UserError(f"{where}: a file name is {type(name).__name__}, not a string")
    plain = (
        name == Path(name).name
        and name not in ("", ".", "..")
        and not any(c in name for c in "/\\\0")
        and ".." not in name
    )
    if not plain or not _DUMP_FILE.fullmatch(name) or not name.startswith(f"{db}-{date}-"):
        raise UserError(
            f"{where}: refusing the file name {name!r}: not a plain "
            f"{db}-{date}-pages-articles… dump file name"
        )
    return name


# The names Wikimedia gives pages-articles files: one file, or numbered (multistream) parts.
_DUMP_FILE = re.compile(
    r"[a-z0-9_]+-\d{8}-pages-articles(?:-multistream)?\d*\.xml(?:-p\d+p\d+)?(?:\.bz2|\.gz)?"
)


def _job_files(status: Any, db: str, date: str, where: str) -> tuple[str, list[dict]] | None:
    """The first finished job of JOBS with its dump files (name + published metadata).

    A dumpstatus.json of the wrong shape is one UserError naming the field, not a traceback."""
    if not isinstance(status, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(status).__name__}")
    jobs = status.get("jobs", {})
    if not isinstance(jobs, dict):
        raise UserError(f"{where}: 'jobs' is {type(jobs).__name__}, not an object")
    for job in JOBS:
        info = jobs.get(job) or {}
        if not isinstance(info, dict):
            raise UserError(f"{where}: jobs.{job} is {type(info).__name__}, not an object")
        if info.get("status") != "done":
            continue
        listed = info.get("files") or {}
        if not isinstance(listed, dict):
            raise UserError(f"{where}: jobs.{job}.files is {type(listed).__name__}, not an object")
        files = []
        for name, meta in sorted(listed.items(), key=lambda i: natural(i[0])):
            if ".xml" not in name:
                continue  # the multistream job also lists its -index.txt files
            field_at = f"{where}: jobs.{job}.files[{name!r}]"
            dump_file_name(name, db, date, where)
            meta = meta or {}
            if not isinstance(meta, dict):
                raise UserError(f"{field_at} is {type(meta).__name__}, not an object")
            sha1, size = meta.get("sha1"), meta.get("size")
            if sha1 is not None and not (isinstance(sha1, str) and _SHA1.fullmatch(sha1.lower())):
                raise UserError(f"{field_at}.sha1 is not 40 hexadecimal digits: {sha1!r:.60}")
            if size is not None and (type(size) is not int or size < 0):
                raise UserError(f"{field_at}.size is not a byte count: {size!r:.60}")
            files.append({"name": name, "sha1": sha1, "size": size})
        if files:
            return job, files
    return None


_SHA1 = re.compile(r"[0-9a-f]{40}")


def parse_dumpstatus(raw: bytes, db: str, date: str, where: str) -> tuple[str, list[dict]] | None:
    """The finished job and its files from a dumpstatus.json's bytes (None: not finished), or
    UserError for anything that is not the JSON shape Wikimedia serves."""
    try:
        status = json.loads(raw)
    except (ValueError, RecursionError):
        raise UserError(f"{where} is not JSON") from None
    return _job_files(status, db, date, where)


def parse_sha1sums(text: str) -> dict[str, str]:
    """`SUM  NAME` lines → {NAME: SUM}; other lines are ignored. The names only look up files
    dumpstatus.json listed (and `dump_file_name` accepted), so they never name a path."""
    sums = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and _SHA1.fullmatch(parts[0]):
            sums[parts[1].lstrip("*")] = parts[0]
    return sums


def _sha1sums(db: str, date: str, base: str, timeout: float) -> dict[str, str]:
    url = f"{base}/{db}/{date}/{db}-{date}-sha1sums.txt"
    try:
        text = _get(url, timeout, "the sha1 list").decode("utf-8", errors="replace")
    except (urllib.error.URLError, OSError):
        return {}
    return parse_sha1sums(text)


def find_dump(lang: str, date: str | None, base: str, timeout: float = 30.0) -> Dump:
    """The finished pages-articles dump of `lang` on `date` (newest finished one if None)."""
    db = wiki_db(lang)
    base = base.rstrip("/")
    if date is not None and date != "latest":
        if not re.fullmatch(r"\d{8}", date):
            raise UserError(f"--date must be YYYYMMDD (e.g. 20261101) or 'latest', got {date!r}")
        dates = [date]
    else:
        try:
            index = _get(f"{base}/{db}/", timeout, "the dump index").decode(
                "utf-8", errors="replace"
            )
        except urllib.error.HTTPError as exc:
            raise UserError(f"{base}/{db}/: HTTP {exc.code}; is {base} a dump server?") from None
        dates = sorted(set(re.findall(r'href="(\d{8})/?"', index)), reverse=True)[:DATES_TRIED]
        if not dates:
            raise UserError(f"{base}/{db}/ lists no dump dates")
    for day in dates:
        where = f"{base}/{db}/{day}/dumpstatus.json"
        try:
            raw = _get(where, timeout, "dumpstatus.json")
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and date is None:
                continue
            raise UserError(f"{where}: HTTP {exc.code}") from None
        found = parse_dumpstatus(raw, db, day, where)
        if found is None:
            if date is not None and date != "latest":
                raise UserError(f"{db} {day}: the pages-articles dump is not finished")
            continue
        job, files = found
        fallback = {} if all(f.get("sha1") for f in files) else _sha1sums(db, day, base, timeout)
        out = []
        for f in files:
            sha1 = f.get("sha1") or fallback.get(f["name"])
            if not sha1:
                raise UserError(f"{f['name']}: no published sha1 (dumpstatus.json, sha1sums.txt)")
            size = f.get("size")
            out.append(DumpFile(f["name"], f"{base}/{db}/{day}/{f['name']}", sha1.lower(), size))
        return Dump(db, day, base, job, tuple(out))
    raise UserError(f"no finished pages-articles dump of {db} among {', '.join(dates)} at {base}")


def sha1_file(path: Path) -> str:
    digest = hashlib.sha1()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_dump(
    dump: Dump,
    directory: Path,
    reporter: Reporter,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 30.0,
) -> list[Path]:
    """Download every file of `dump` into `directory`, resuming and sha1-verified."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in dump.files:
        final = directory / f.name
        if final.is_file() and (f.size is None or final.stat().st_size == f.size):
            # the size alone proves nothing (a file replaced since, or damaged on disk)
            reporter.log(f"checking sha1 of {f.name} (already downloaded)")
            if sha1_file(final) == f.sha1:
                paths.append(final)
                continue
        part = directory / f".{f.name}.part"
        try:
            fetch(f.url, part, reporter, retries=retries, backoff=backoff, timeout=timeout)
        except (TransientError, urllib.error.URLError, OSError) as exc:
            raise UserError(
                f"could not download {f.url}: {getattr(exc, 'reason', exc)} "
                f"(run again to resume from {part.stat().st_size if part.exists() else 0:,} bytes)"
            ) from None
        reporter.log(f"checking sha1 of {f.name}")
        digest = sha1_file(part)
        if digest != f.sha1:
            part.unlink(missing_ok=True)
            raise UserError(
                f"{f.name}: sha1 {digest[:12]}… does not match the published {f.sha1[:12]}…; "
                "nothing was kept"
            )
        os.replace(part, final)
        paths.append(final)
    return paths
