"""Wikipedia XML dumps → JSON lines of plain article text (the WikiExtractor `--json` format).

`extract(inputs, out)` streams each dump (`.xml`, `.xml.bz2` incl. multistream, `.xml.gz`)
through expat (which honours the encoding the XML declaration states) with handlers that keep
only a page's id, title, namespace and text, each capped at `MAX_PAGE_BYTES` (a larger page is
skipped and counted, its text dropped as it arrives), keeps main-namespace pages that are not
redirects, and cleans their wikitext in `workers` processes fed by one reader through a
bounded queue, so memory stays flat however large the dump is. Given at least `workers` dump files (multistream parts), each process reads
and cleans whole files instead, so the one reader's bz2 + XML speed is no longer the limit.

Cleaning: a linear brace scan drops templates `{{…}}` and tables `{|…|}` and regexes drop
comments and `<ref>`s (they are most of the markup, and removing them first makes the parse
about 10x faster); `mwparserfromhell` then parses what is left, and a walk over its nodes keeps
text and link anchors, drops files/images, categories, interlanguage links and non-text tags,
and keeps section headings whose section has text. Output lines are `{"id", "title", "url",
"text"}` with paragraphs separated by newlines, in parts `wiki_00000.jsonl` … of about
`part_size_mb` MB, written under temporary names and renamed when complete; the whole
directory appears at once (`atomic_directory`). A dump whose XML is cut off keeps the articles
before the cut and reports the cut (`ExtractResult.cut`); it is never reported as complete.
"""

from __future__ import annotations

import bz2
import gzip
import json
import os
import re
import time
import urllib.error
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any
from xml.parsers import expat

import mwparserfromhell
from mwparserfromhell import nodes

from bertcli.atomic import atomic_directory
from bertcli.console import Reporter
from bertcli.errors import UserError
from bertcli.remote import warn_plain_http
from bertcli.wikidump import LANGUAGES, MIRRORS, fetch_dump, find_dump, natural

MARKER = ".bertcli-download.json"
BATCH_CHARS = 1 << 18  # wikitext characters per worker task: amortises pickling, balances load

# Pre-parse removals: comments, references (self-closing first, so `<ref name=a/>` never
# swallows the text up to the next `</ref>`), behaviour switches.
_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)
_REF = re.compile(r"<ref\b[^>]*?/\s*>|<ref\b[^>]*>.*?</ref\s*>", re.S | re.I)
_SWITCH = re.compile(r"__[A-Z]+__")
# Tags whose content is code, not wikitext (LaTeX braces would look like templates).
_RAW = re.compile(
    r"<(math|chem|ce|score|timeline|graph|hiero|syntaxhighlight|source|pre|code)\b[^>]*?"
    r"(?:/\s*>|>.*?</\1\s*>)",
    re.S | re.I,
)
# Templates anywhere; tables only at a line start (wikitext's rule). `|}}` ends a template.
_BRACES = re.compile(r"\{\{|\}\}|^[ \t:]*\{\||^[ \t]*\|\}(?!\})", re.M)
# A link with no link inside: resolved before the parse (twice, so a file caption's links go
# first and then the file link itself); the parser sees only the rare harder cases.
_SIMPLE_LINK = re.compile(r"\[\[([^\[\]|\n]*)(?:\|([^\[\]]*))?\]\]")
_QUOTES = re.compile(r"'{2,}")
_SPACES = re.compile(r"[ \t\u00a0\u200b]+")
_SPACE_BEFORE_PUNCT = re.compile(r" +([,.;:!?)])")
_EMPTY_PARENS = re.compile(r"\([ \t]*[,;]?[ \t]*\)")
# Headings and list markers at a line start: marked before the parse (cheaper than parsing them).
_HEADING_LINE = re.compile(r"^[ \t]*(={1,6})[ \t]*(.+?)[ \t]*\1[ \t]*$", re.M)
_LIST_MARK = re.compile(r"^[ \t]*[*#:;]+[ \t]*", re.M)
# Inline HTML tags whose content is text: unwrapped before the parse (cheaper than parsing them).
_INLINE_TAG = re.compile(
    r"</?(?:b|i|u|s|em|strong|small|big|sup|sub|span|font|abbr|tt|del|ins|bdi|nowiki)\b[^>]*>",
    re.I,
)
_REDIRECT = re.compile(r"\s*#\s*redirect", re.I)
# Chinese (and other multi-script) wikis' language conversion: -{text}-, -{zh-hans:A;zh-hant:B}-,
# -{H|rule}- (a rule, shows nothing). Not nested in practice.
_CONVERSION = re.compile(r"-\{(.*?)\}-", re.S)
_VARIANT = re.compile(r"(?:^|;)\s*[a-z]{2,3}(?:-[a-z]+)*\s*:([^;]*)")

# Tags whose content is not running text.
_DROP_TAGS = frozenset(
    "ref references gallery imagemap math chem ce score timeline graph templatestyles "
    "syntaxhighlight source pre table categorytree inputbox mapframe maplink hiero indicator "
    "charinsert noinclude includeonly onlyinclude nowiki code var kbd".split()
)
_BLOCK_TAGS = frozenset("br p div li dd dt blockquote center poem hr ul ol dl h1 h2 h3 h4".split())
_HEADING = "\x01"  # marks a heading line (then its level digit) until its section shows text
# Sections of citations and link lists, not prose (English names; other wikis keep theirs).
_BACK_MATTER = frozenset(
    "references|external links|further reading|bibliography|notes|sources|see also|citations|"
    "footnotes|notes and references|references and notes|works cited|general references|"
    "general and cited references|selected bibliography|select bibliography|primary sources|"
    "secondary sources|literature".split("|")
)
_ITEM = "\x02"  # marks a list item: kept only if it reads as a sentence
_MIN_ITEM_WORDS = 6
_LANGUAGE_SET = frozenset(LANGUAGES)  # `[[de:…]]` is an interlanguage link


@dataclass(frozen=True)
class Site:
    """What a dump says about its wiki: URL base and localized namespace names."""

    url_base: str = "https://en.wikipedia.org/wiki"
    drop_prefixes: frozenset[str] = frozenset({"file", "image", "category", "media"})


@dataclass
class ExtractResult:
    directory: str
    files: list[str]
    pages: int = 0
    articles: int = 0
    redirects: int = 0
    other_namespaces: int = 0
    too_large: int = 0  # pages above MAX_PAGE_BYTES, skipped
    bytes_read: int = 0
    seconds: float = 0.0
    parts: list[str] = field(default_factory=list)
    cut: list[str] = field(default_factory=list)  # one message per dump whose XML is cut off
    skipped: bool = False  # already extracted from the same dump files


# ---------------------------------------------------------------------------- cleaning


def drop_nested(text: str) -> str:
    """Remove balanced `{{…}}` templates and `{|…|}` tables (nesting-aware, one regex scan).

    An opener never closed is kept as text and the scan goes on after it, so one stray `{{`
    does not swallow the rest of an article."""
    out: list[str] = []
    pos = 0
    while True:
        stack: list[str] = []
        start = outer = pos
        for match in _BRACES.finditer(text, pos):
            token = match.group().strip(" \t:")
            if token in ("{{", "{|"):
                if not stack:
                    out.append(text[start : match.start()])
                    outer = match.start()
                stack.append(token)
            elif stack and (token == "}}") == (stack[-1] == "{{"):
                stack.pop()
                if not stack:
                    start = match.end()
        if not stack:
            out.append(text[start:])
            return "".join(out)
        out.append(text[outer : outer + 2])
        pos = outer + 2


def _conversion(match: re.Match[str]) -> str:
    """The text a reader sees for -{…}-: the first variant, or the literal text; rules: none."""
    body = match.group(1)
    flags, bar, rest = body.partition("|")
    if bar and re.fullmatch(r"[A-Za-z;\s-]{1,12}", flags):
        if re.search(r"[HT-]", flags):
            return ""  # a conversion rule or a title rule: nothing shown here
        body = rest
    variants = _VARIANT.findall(body)
    return variants[0].strip() if variants else body


def _dropped_link(title: str, site: Site) -> bool:
    """Files, categories and interlanguage links are not prose (`[[:Category:X]]` is)."""
    if ":" not in title or title.startswith(":"):
        return False
    prefix = title.split(":", 1)[0].strip().lower()
    return prefix in site.drop_prefixes or prefix in _LANGUAGE_SET


def _link_title(title: str) -> str:
    title = title.strip().lstrip(":")
    return title.split("#", 1)[0] or title.lstrip("#")


def _simple_links(text: str, site: Site) -> str:
    def anchor(match: re.Match[str]) -> str:
        title, label = match.group(1), match.group(2)
        if _dropped_link(title.strip(), site):
            return ""
        return label if label and label.strip() else _link_title(title)

    return _SIMPLE_LINK.sub(anchor, _SIMPLE_LINK.sub(anchor, text))


def _render(code: Any, site: Site, out: list[str]) -> None:
    """Append the visible text of mwparserfromhell nodes to `out`."""
    for node in code.nodes:
        if isinstance(node, nodes.Text):
            out.append(node.value)
        elif isinstance(node, nodes.Wikilink):
            title = str(node.title).strip()
            if _dropped_link(title, site):
                continue
            if node.text is not None and str(node.text).strip():
                _render(node.text, site, out)
            else:
                out.append(_link_title(title))
        elif isinstance(node, nodes.ExternalLink):
            if node.title is not None:
                _render(node.title, site, out)
            elif not node.brackets:
                out.append(str(node.url))
        elif isinstance(node, nodes.Tag):
            name = str(node.tag).strip().lower()
            if name in _DROP_TAGS:
                continue
            block = name in _BLOCK_TAGS
            if block:
                out.append(f"\n{_ITEM}" if node.wiki_markup and name in ("li", "dd") else "\n")
            if node.contents is not None and not node.self_closing:
                _render(node.contents, site, out)
            if block and name != "li":
                out.append("\n")
        elif isinstance(node, nodes.Heading):
            parts: list[str] = []
            _render(node.title, site, parts)
            out.append(f"\n{_HEADING}{min(node.level, 6)}{''.join(parts)}\n")
        elif isinstance(node, nodes.HTMLEntity):
            out.append(node.normalize())
        # Template, Argument, Comment: dropped


def clean_wikitext(text: str, site: Site = Site()) -> list[str]:
    """The paragraphs of an article's wikitext, markup removed, headings kept before text."""
    text = _INLINE_TAG.sub("", _RAW.sub("", _REF.sub("", _COMMENT.sub("", text))))
    if "-{" in text:
        text = _CONVERSION.sub(_conversion, text)
    text = drop_nested(_SWITCH.sub("", text))
    text = _HEADING_LINE.sub(lambda m: f"\n{_HEADING}{len(m[1])}{m[2]}\n", text)
    text = _LIST_MARK.sub(f"\n{_ITEM}", text)
    code = mwparserfromhell.parse(_simple_links(text, site), skip_style_tags=True)
    out: list[str] = []
    _render(code, site, out)
    text = _SPACES.sub(" ", _QUOTES.sub("", "".join(out)))
    lines = _EMPTY_PARENS.sub("", _SPACE_BEFORE_PUNCT.sub(r"\1", text)).split("\n")
    # a page that is only a list (e.g. "List of …") keeps its items rather than nothing
    return _paragraphs(lines, items=False) or _paragraphs(lines, items=True)


def _paragraphs(lines: list[str], items: bool) -> list[str]:
    paragraphs: list[str] = []
    heading: str | None = None
    skip_below = 0  # inside a back-matter section of this level (0: not)
    for raw in lines:
        line = raw.strip()
        is_heading = line.startswith(_HEADING)
        is_item = line.startswith(_ITEM)
        if is_heading:
            level = int(line[1]) if line[1:2].isdigit() else 2
            if skip_below and level > skip_below:
                continue  # a sub-section of the references
            title = line[2:].strip(" .:").lower()
            skip_below = level if title in _BACK_MATTER else 0
            line = line[2:]
        if skip_below:
            continue
        line = line.lstrip(_HEADING + _ITEM + "*#:; ")
        if not any(ch.isalnum() for ch in line):
            continue
        short = line[-1] not in ".!?。！？" or len(line.split()) < _MIN_ITEM_WORDS
        if is_item and not items and short:
            continue  # link lists, bibliographies, "See also": not running text
        if is_heading:
            heading = line  # shown only if its section has text
        else:
            if heading is not None:
                paragraphs.append(heading)
                heading = None
            paragraphs.append(line)
    return paragraphs


def clean_batch(pages: list[tuple[str, str, str]], site: Site = Site()) -> list[str]:
    """(id, title, wikitext) pages → JSON lines, one per article (even empty, as WikiExtractor)."""
    lines = []
    for page_id, title, text in pages:
        record = {
            "id": page_id,
            "title": title,
            "url": f"{site.url_base}?curid={page_id}",
            "text": "\n".join(clean_wikitext(text, site)),
        }
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    return lines


# ---------------------------------------------------------------------------- reading


class _CountingReader:
    """A raw file that counts the bytes read, so progress follows the compressed size."""

    def __init__(self, raw: IO[bytes]):
        self.raw = raw
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.count += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        n = self.raw.readinto(buffer)
        self.count += n or 0
        return n

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.raw.close()


def _open_dump(path: Path) -> tuple[IO[bytes], _CountingReader]:
    raw = _CountingReader(path.open("rb"))
    name = path.name.lower()
    if name.endswith(".bz2"):
        return bz2.open(raw), raw  # type: ignore[arg-type]  # reads multistream files whole
    if name.endswith(".gz"):
        return gzip.open(raw), raw  # type: ignore[arg-type]
    return raw, raw  # type: ignore[return-value]


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


@dataclass
class _Page:
    id: str
    title: str
    ns: str
    redirect: bool
    text: str
    too_large: bool = False


# MediaWiki refuses a revision above $wgMaxArticleSize, 2 MiB by default (Wikipedia's setting);
# a page eight times that is no article, and holding it would let a tiny .bz2 name our memory.
MAX_PAGE_BYTES = 16 << 20
_READ_CHUNK = 1 << 16
_FIELDS = {("page", "id"), ("page", "title"), ("page", "ns"), ("revision", "text")}


class _PageCollector:
    """expat handlers that keep only what a page needs: its id, title, ns, redirect flag and
    text, each capped at `cap` characters. Past the cap the text is dropped as it arrives (the
    page is marked too large), so memory stays flat whatever one element holds."""

    def __init__(self, cap: int):
        self.cap = cap
        self.stack: list[str] = []
        self.pages: deque[_Page] = deque()
        self.sites: list[Site] = []
        self.base = "https://en.wikipedia.org/wiki"
        self.drop = {"file", "image", "category", "media"}
        self.ns_key: str | None = None
        self.capture: list[str] | None = None
        self.size = 0
        self.over = False
        self.page: dict[str, Any] = {}

    def start(self, tag: str, attrs: dict[str, str]) -> None:
        name = _local(tag)
        parent = self.stack[-1] if self.stack else ""
        self.stack.append(name)
        if name == "page":
            self.page = {"id": "", "title": "", "ns": "0", "text": "", "redirect": False}
            self.over = False
        elif name == "redirect" and parent == "page":
            self.page["redirect"] = True
        elif (parent, name) in _FIELDS or (parent, name) == ("siteinfo", "base"):
            self.capture, self.size = [], 0
        elif name == "namespace" and parent == "namespaces":
            self.ns_key = attrs.get("key")
            self.capture, self.size = [], 0

    def data(self, text: str) -> None:
        if self.capture is None:
            return
        self.size += len(text)
        if self.size > self.cap:
            self.capture.clear()  # nothing of an oversized element is kept
            self.over = True
        else:
            self.capture.append(text)

    def end(self, tag: str) -> None:
        name = self.stack.pop()
        parent = self.stack[-1] if self.stack else ""
        if self.capture is not None:
            value, self.capture = "".join(self.capture), None
            if (parent, name) in _FIELDS:
                self.page[name] = value
            elif name == "base":
                self.base = value.rsplit("/", 1)[0] if value else self.base
            elif name == "namespace" and self.ns_key in ("-2", "6", "14") and value:
                self.drop.add(value.strip().lower())
        if name == "siteinfo":
            self.sites.append(Site(self.base, frozenset(self.drop)))
        elif name == "page":
            text = "" if self.over else self.page["text"]
            redirect = self.page["redirect"] or bool(_REDIRECT.match(text))
            self.pages.append(
                _Page(self.page["id"], self.page["title"], self.page["ns"], redirect, text, self.over)
            )


def iter_pages(
    stream: IO[bytes], sites: list[Site], max_page_bytes: int = MAX_PAGE_BYTES
) -> Iterator[_Page]:
    """Pages of a MediaWiki XML export, one at a time; `sites` receives the siteinfo.

    A page whose text (or title) passes `max_page_bytes` characters comes with `too_large` set
    and no text. Raises ET.ParseError / EOFError / OSError where the XML or its compression is
    cut off."""
    collector = _PageCollector(max_page_bytes)
    parser = expat.ParserCreate(namespace_separator="}")
    parser.buffer_text = True  # one data call per text run, not per line
    parser.StartElementHandler = collector.start
    parser.EndElementHandler = collector.end
    parser.CharacterDataHandler = collector.data
    done = False
    try:
        while not done:
            chunk = stream.read(_READ_CHUNK)
            done = not chunk
            parser.Parse(chunk, done)
            if collector.sites and not sites:
                sites.extend(collector.sites)
            while collector.pages:
                yield collector.pages.popleft()
    except expat.ExpatError as exc:
        raise ET.ParseError(expat.ErrorString(exc.code) + f": line {exc.lineno}") from None


# ---------------------------------------------------------------------------- writing


class _PartWriter:
    """JSON lines into `wiki_NNNNN.jsonl` parts of about `limit` bytes, each renamed when full."""

    def __init__(self, directory: Path, limit: int):
        self.directory = directory
        self.limit = limit
        self.parts: list[str] = []
        self.handle: IO[str] | None = None
        self.size = 0
        self.lines = 0

    def write(self, line: str) -> None:
        if self.handle is None:
            name = f"wiki_{len(self.parts):05d}.jsonl"
            self.parts.append(name)
            self.handle = (self.directory / f".{name}.tmp").open("w", encoding="utf-8")
            self.size = 0
        self.handle.write(line)
        self.lines += 1
        self.size += len(line.encode("utf-8"))
        if self.size >= self.limit:
            self._close()

    def _close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            name = self.parts[-1]
            os.replace(self.directory / f".{name}.tmp", self.directory / name)
            self.handle = None

    def close(self) -> None:
        self._close()


# ---------------------------------------------------------------------------- extracting


_DUMP_NAME = re.compile(r"\.xml(\.bz2|\.gz)?$|\.xml-p\d+p\d+")  # not the -index.txt files


def dump_files(inputs: list[Path]) -> list[Path]:
    """Dump files named directly or found in directories (sorted), or UserError."""
    files: list[Path] = []
    for path in inputs:
        if path.is_dir():
            found = [p for p in path.iterdir() if _DUMP_NAME.search(p.name)]
            found.sort(key=lambda p: natural(p.name))
            if not found:
                raise UserError(f"--input: directory {path} holds no .xml/.xml.bz2 dump files")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"--input: no such file {path}")
    if not files:
        raise UserError("--input: no dump files given")
    return files


def extract(
    inputs: list[Path],
    out: Path,
    workers: int = 1,
    part_size_mb: float = 100.0,
    reporter: Reporter | None = None,
    source: dict[str, Any] | None = None,
) -> ExtractResult:
    """Extract the articles of `inputs` into JSON-lines parts in `out` (replaced atomically)."""
    reporter = reporter or Reporter()
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    if not part_size_mb > 0:
        raise UserError(f"--part-size must be > 0 MB, got {part_size_mb}")
    files = dump_files(inputs)
    refuse_foreign_directory(out)
    result = ExtractResult(directory=str(out), files=[str(f) for f in files])
    total = sum(f.stat().st_size for f in files)
    started = time.perf_counter()
    with atomic_directory(out) as tmp:
        writer = _PartWriter(tmp, int(part_size_mb * 1e6))
        reporter.start("Extracting articles", total=total, unit="bytes")
        try:
            if workers > 1 and len(files) >= workers:
                _extract_files_in_parallel(files, tmp, writer, result, workers, reporter, started)
            else:
                _extract_pipelined(files, writer, result, workers, reporter, started)
        finally:
            reporter.finish()
        result.seconds = time.perf_counter() - started
        result.parts = [str(out / name) for name in writer.parts]
        marker = {"name": "wikipedia", "complete": not result.cut, **(source or {})}
        marker.update(asdict(result))
        (tmp / MARKER).write_text(json.dumps(marker, indent=2, ensure_ascii=False) + "\n")
    return result


def _extract_pipelined(
    files: list[Path],
    writer: _PartWriter,
    result: ExtractResult,
    workers: int,
    reporter: Reporter,
    started: float,
) -> None:
    """One reader (this process) feeds page batches to `workers` cleaning processes, in order."""
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    pending: deque[Future[list[str]]] = deque()
    try:
        for path in files:
            result.bytes_read = _extract_file(
                path, result, writer, pool, pending, workers, reporter, result.bytes_read, started
            )
        while pending:
            for line in pending.popleft().result():
                writer.write(line)
        writer.close()
        result.articles = writer.lines
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


_PROGRESS: Any = None  # (bytes, pages) shared counters in a file-parallel worker


class _SharedReporter(Reporter):
    """Adds a worker's progress to counters the main process shows."""

    def __init__(self) -> None:
        self.pages = 0

    def advance(self, amount: float = 1, **fields: Any) -> None:
        with _PROGRESS[0].get_lock():
            _PROGRESS[0].value += int(amount)
        pages = fields.get("pages", self.pages)
        with _PROGRESS[1].get_lock():
            _PROGRESS[1].value += pages - self.pages
        self.pages = pages


def _init_file_worker(progress: Any) -> None:
    global _PROGRESS
    _PROGRESS = progress


def _extract_one(path: Path, directory: Path, limit: int) -> ExtractResult:
    """A whole dump file in one process (reader and cleaner), into parts in `directory`."""
    directory.mkdir()
    writer = _PartWriter(directory, limit)
    result = ExtractResult(directory=str(directory), files=[str(path)])
    result.bytes_read = _extract_file(
        path, result, writer, None, deque(), 1, _SharedReporter(), 0, time.perf_counter()
    )
    writer.close()
    result.parts = writer.parts
    result.articles = writer.lines
    return result


def _extract_files_in_parallel(
    files: list[Path],
    tmp: Path,
    writer: _PartWriter,
    result: ExtractResult,
    workers: int,
    reporter: Reporter,
    started: float,
) -> None:
    """Several dump files (multistream parts): one process per file, reading and cleaning.

    A single reader would bound the speed (bz2 + XML); here it scales with the files. Each
    file's parts are renamed into the output in file order, so the result does not depend on
    which process finished first."""
    import multiprocessing

    progress = (multiprocessing.Value("q", 0), multiprocessing.Value("q", 0))
    with ProcessPoolExecutor(
        workers, initializer=_init_file_worker, initargs=(progress,)
    ) as pool:
        futures = [
            pool.submit(_extract_one, path, tmp / f".file{i:05d}", writer.limit)
            for i, path in enumerate(files)
        ]
        shown = 0
        while True:
            done, running = wait(futures, timeout=0.5, return_when=FIRST_EXCEPTION)
            now = progress[0].value
            elapsed = max(time.perf_counter() - started, 1e-9)
            pages = progress[1].value
            reporter.advance(now - shown, pages=pages, pages_per_s=round(pages / elapsed))
            shown = now
            if not running or any(f.exception() for f in done):
                break
        for i, future in enumerate(futures):
            part = future.result()  # re-raises a worker's error here
            for field_name in (
                "pages",
                "articles",
                "redirects",
                "other_namespaces",
                "too_large",
                "bytes_read",
            ):
                setattr(result, field_name, getattr(result, field_name) + getattr(part, field_name))
            result.cut.extend(part.cut)
            for name in part.parts:
                final = f"wiki_{len(writer.parts):05d}.jsonl"
                os.replace(tmp / f".file{i:05d}" / name, tmp / final)
                writer.parts.append(final)
            (tmp / f".file{i:05d}").rmdir()


def _extract_file(
    path: Path,
    result: ExtractResult,
    writer: _PartWriter,
    pool: ProcessPoolExecutor | None,
    pending: deque[Future[list[str]]],
    workers: int,
    reporter: Reporter,
    done_bytes: int,
    started: float,
) -> int:
    """Read one dump, feed batches to the pool (at most 2 per worker in flight), write in order."""
    stream, counter = _open_dump(path)
    sites: list[Site] = []
    batch: list[tuple[str, str, str]] = []
    chars = 0
    reported = 0
    pages_before = result.pages

    def submit() -> None:
        nonlocal batch, chars
        site = sites[0] if sites else Site()
        if pool is None:
            for line in clean_batch(batch, site):
                writer.write(line)
        else:
            pending.append(pool.submit(clean_batch, batch, site))
            while len(pending) > 2 * workers:
                for line in pending.popleft().result():
                    writer.write(line)
        batch, chars = [], 0

    try:
        for page in iter_pages(stream, sites):
            result.pages += 1
            if page.too_large:
                result.too_large += 1
            elif page.redirect:
                result.redirects += 1
            elif page.ns.strip() != "0":
                result.other_namespaces += 1
            else:
                batch.append((page.id, page.title, page.text))
                chars += len(page.text)
                if chars >= BATCH_CHARS:
                    submit()
            if counter.count - reported >= 1 << 20 or result.pages % 1000 == 0:
                elapsed = max(time.perf_counter() - started, 1e-9)
                reporter.advance(
                    counter.count - reported,
                    pages=result.pages,
                    pages_per_s=round(result.pages / elapsed),
                )
                reported = counter.count
        if not sites and result.pages == pages_before:
            raise ET.ParseError("no MediaWiki <siteinfo> or <page> found")
    except (ET.ParseError, EOFError, OSError) as exc:
        if isinstance(exc, ET.ParseError):  # expat says "no element found" at a premature end
            what = "XML cut off" if "no element found" in str(exc) else "XML malformed"
        else:
            what = "compressed data " + ("cut off" if isinstance(exc, EOFError) else "damaged")
        result.cut.append(
            f"{path.name}: {what} after {result.pages - pages_before} pages "
            f"({counter.count:,} of {path.stat().st_size:,} bytes read): {exc}"
        )
    finally:
        stream.close()
    if batch:
        submit()
    elapsed = max(time.perf_counter() - started, 1e-9)
    reporter.advance(
        counter.count - reported, pages=result.pages, pages_per_s=round(result.pages / elapsed)
    )
    return done_bytes + counter.count


_PART = re.compile(r"wiki_\d{5,}\.jsonl")


def is_extraction(directory: Path) -> bool:
    """Whether `directory` is bertcli's own extraction output, which a new one may replace: it
    holds nothing but `wiki_NNNNN.jsonl` parts and, if any, our marker (written inside the
    directory before it took its final name; versions before it wrote none) naming wikipedia."""
    names = [e.name for e in directory.iterdir()]
    if not all(_PART.fullmatch(n) or n == MARKER for n in names):
        return False  # something of the user's would go with the directory
    if MARKER not in names:
        return bool(names)
    try:
        marker = json.loads((directory / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("name") == "wikipedia"


def refuse_foreign_directory(out: Path) -> None:
    """UserError unless `out` is absent, empty or an earlier extraction: the extraction replaces
    the whole directory, and a user's own directory must never be swapped away."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    if any(out.iterdir()) and not is_extraction(out):
        raise UserError(
            f"--out {out} is not empty and not an earlier Wikipedia extraction; it would be "
            "replaced whole: choose a new or empty directory"
        )


def _completed(out: Path, source: dict[str, Any]) -> ExtractResult | None:
    """The recorded result if `out` holds a complete extraction of the same dump files."""
    try:
        marker = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not marker.get("complete") or marker.get("dump") != source["dump"]:
        return None
    fields = {k: marker[k] for k in ExtractResult.__dataclass_fields__ if k in marker}
    result = ExtractResult(**fields)
    if not all(Path(p).is_file() for p in result.parts):
        return None
    result.skipped = True
    return result


def download_wikipedia(
    out: Path,
    lang: str = "en",
    date: str | None = None,
    inputs: list[Path] | None = None,
    url: str | None = None,
    workers: int = 1,
    part_size_mb: float = 100.0,
    reporter: Reporter | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 30.0,
) -> ExtractResult:
    """Fetch (or take `inputs`) a pages-articles dump and extract it into `out`.

    Dump files are kept in `OUT-dump/` beside `out` (so `preprocess --input OUT` reads only the
    text). A dump cut off (or damaged) raises UserError after the articles before the cut are
    in place."""
    reporter = reporter or Reporter()
    refuse_foreign_directory(out)  # before fetching gigabytes
    source: dict[str, Any]
    if inputs:
        if date is not None or url is not None:
            raise UserError("--input extracts a dump on disk; drop --date/--url")
        files, source = list(inputs), {"input": [str(p) for p in inputs]}
    else:
        if url:
            warn_plain_http(url, reporter, "--url")
        dump = None
        errors = []
        for base in (url,) if url else MIRRORS:
            try:
                dump = find_dump(lang, date, base, timeout)
                break
            except (urllib.error.URLError, OSError) as exc:
                errors.append(f"{base}: {getattr(exc, 'reason', exc)}")
        if dump is None:
            raise UserError("could not reach a dump server: " + "; ".join(errors))
        reporter.log(
            f"{dump.db} {dump.date}: {len(dump.files)} file(s) of {dump.job} at {dump.base}"
        )
        dump_dir = out.parent / f"{out.name}-dump"
        files = fetch_dump(dump, dump_dir, reporter, retries, backoff, timeout)
        source = {
            "lang": lang,
            "db": dump.db,
            "date": dump.date,
            "job": dump.job,
            "dump": {f.name: f.sha1 for f in dump.files},
        }
        done = _completed(out, source)
        if done is not None:
            return done  # the same verified dump was already extracted completely
    result = extract(files, out, workers, part_size_mb, reporter, source)
    if result.cut:
        raise UserError(
            f"dump cut off or damaged: the {result.articles} articles before the cut are in {out} "
            f"(marked incomplete): {'; '.join(result.cut)}"
        )
    return result
