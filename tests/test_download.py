"""download: a loopback HTTP server serves a WikiText-2-shaped zip built from ../shared/data."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import threading
import zipfile

import pytest

from bertcli.download import MARKER, REGISTRY, SPLITS, download
from bertcli.errors import UserError
from tests.conftest import WIKITEXT2, require


@pytest.fixture(scope="module")
def archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for split in ("train", "valid", "test"):
            zf.write(require(WIKITEXT2 / f"{split}.txt"), f"wikitext-2/wiki.{split}.tokens")
    return buffer.getvalue()


class Server:
    """Serves one payload with Range support; can cut the first response halfway."""

    def __init__(self, payload: bytes):
        self.payload = payload
        self.cut_first = False
        self.corrupt = 0  # serve this many damaged copies first
        self.requests: list[str | None] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                owner.requests.append(self.headers.get("Range"))
                if self.path != "/wikitext-2-v1.zip":
                    self.send_error(404)
                    return
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                if start and start >= len(owner.payload):  # as real servers answer
                    self.send_error(416)
                    return
                payload = owner.payload
                if owner.corrupt:
                    owner.corrupt -= 1
                    payload = damaged(payload)
                body = payload[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if owner.cut_first:
                    owner.cut_first = False
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.handle_error = lambda request, address: None  # a client that hung up
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/wikitext-2-v1.zip"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def damaged(payload: bytes) -> bytes:
    """The archive with a run of bytes flipped inside its compressed data (CRC/inflate errors)."""
    middle = len(payload) // 3
    return (
        payload[:middle]
        + bytes(b ^ 0x5A for b in payload[middle : middle + 64])
        + payload[middle + 64 :]
    )


def one_error_line(stderr: str) -> str:
    """The error line, last and alone: any lines before it are progress, not errors."""
    lines = stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], stderr
    return lines[-1]


def leftovers(out) -> list[str]:
    """Hidden debris in a download directory (partial archives, temporary split files)."""
    return sorted(p.name for p in out.iterdir() if p.name.startswith("."))


@pytest.fixture
def server(archive):
    s = Server(archive)
    yield s
    s.close()


def test_download_unpacks_byte_identical_files(server, tmp_path):
    result = download("wikitext2", tmp_path / "wt2", url=server.url)
    assert not result.skipped
    for split in ("train", "valid", "test"):
        assert (tmp_path / "wt2" / f"{split}.txt").read_bytes() == (
            WIKITEXT2 / f"{split}.txt"
        ).read_bytes()
    marker = json.loads((tmp_path / "wt2" / MARKER).read_text())
    assert marker["sha256"] == REGISTRY["wikitext2"].file_sha256
    assert sorted(p.name for p in (tmp_path / "wt2").iterdir()) == sorted(
        [MARKER, "train.txt", "valid.txt", "test.txt"]
    )
    again = download("wikitext2", tmp_path / "wt2", url=server.url)
    assert again.skipped and len(server.requests) == 1  # nothing fetched the second time


def test_resume_after_cut_connection(server, tmp_path):
    server.cut_first = True
    download("wikitext2", tmp_path / "wt2", url=server.url, backoff=0.01)
    assert server.requests[0] is None and server.requests[1].startswith("bytes=")
    assert int(server.requests[1].split("=")[1].rstrip("-")) > 0
    assert (tmp_path / "wt2" / "train.txt").read_bytes() == (WIKITEXT2 / "train.txt").read_bytes()


def test_wrong_checksum_leaves_nothing_complete(server, tmp_path):
    with pytest.raises(UserError, match="sha256 does not match"):
        download("wikitext2", tmp_path / "wt2", url=server.url, sha256="0" * 64)
    assert not (tmp_path / "wt2" / MARKER).exists()
    assert not (tmp_path / "wt2" / "train.txt").exists()
    good = hashlib.sha256(server.payload).hexdigest()
    download("wikitext2", tmp_path / "wt2", url=server.url, sha256=good)
    assert (tmp_path / "wt2" / MARKER).exists()


def test_wrong_file_content_is_rejected(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for split in ("train", "valid", "test"):
            zf.writestr(f"wikitext-2/wiki.{split}.tokens", "not wikitext\n")
    (tmp_path / "fake.zip").write_bytes(buffer.getvalue())
    with pytest.raises(UserError, match="does not match the known"):
        download("wikitext2", tmp_path / "out", url=(tmp_path / "fake.zip").as_uri())
    assert not (tmp_path / "out" / "train.txt").exists()

    # a corpus without file sums checks its archive's published MD5 (members named .raw), and
    # takes another archive only when the user vouches for it with --sha256
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for split in ("train", "valid", "test"):
            zf.writestr(f"wikitext-2-raw/wiki.{split}.raw", f"{split} text\n")
    (tmp_path / "raw.zip").write_bytes(buffer.getvalue())
    with pytest.raises(UserError, match="MD5 does not match the published f407a2d53283"):
        download("wikitext2-raw", tmp_path / "raw", url=(tmp_path / "raw.zip").as_uri())
    assert not (tmp_path / "raw" / "train.txt").exists()
    vouched = hashlib.sha256(buffer.getvalue()).hexdigest()
    result = download(
        "wikitext2-raw", tmp_path / "raw", url=(tmp_path / "raw.zip").as_uri(), sha256=vouched
    )
    assert (tmp_path / "raw" / "valid.txt").read_text() == "valid text\n"
    assert not result.skipped


def test_every_corpus_is_verified():
    """The README says every corpus is verified: by file sha256 sums or the archive's MD5."""
    for spec in REGISTRY.values():
        assert set(spec.file_sha256) == set(SPLITS) or len(spec.archive_md5 or "") == 32
        assert set(spec.member_cap) == set(SPLITS)


def test_missing_members_and_404(server, tmp_path):
    with pytest.raises(UserError, match="could not download"):
        download(
            "wikitext2", tmp_path / "x", url=server.url.replace("v1.zip", "nope.zip"), retries=0
        )
    with pytest.raises(UserError, match="unknown corpus"):
        download("wikitext5", tmp_path / "x")
    with pytest.raises(UserError, match="64 hexadecimal"):
        download("wikitext2", tmp_path / "x", sha256="abc")


def test_cli_download(server, tmp_path, invoke):
    result = invoke("download", "wikitext2", "--out", tmp_path / "d", "--url", server.url, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["files"]["train"].endswith("train.txt")
    bad = invoke(
        "download", "wikitext2", "--out", tmp_path / "e", "--url", server.url, "--sha256", "1" * 64
    )
    assert bad.exit_code == 2 and one_error_line(bad.stderr).startswith("error: could not")


def test_resume_a_partial_file_from_an_earlier_run(server, tmp_path):
    out = tmp_path / "wt2"
    out.mkdir()
    half = len(server.payload) // 2
    (out / ".wikitext2.part").write_bytes(server.payload[:half])  # left by a killed run
    download("wikitext2", out, url=server.url)
    assert server.requests == [f"bytes={half}-"]
    assert (out / "valid.txt").read_bytes() == (WIKITEXT2 / "valid.txt").read_bytes()
    assert not (out / ".wikitext2.part").exists()


def test_garbage_part_is_discarded_and_fetched_again(server, tmp_path):
    out = tmp_path / "wt2"
    out.mkdir()
    half = len(server.payload) // 2
    (out / ".wikitext2.part").write_bytes(os.urandom(half))  # not the archive's first half
    download("wikitext2", out, url=server.url, backoff=0.01)
    assert server.requests == [f"bytes={half}-", None]  # resumed, found damaged, fetched anew
    for split in ("train", "valid", "test"):
        assert (out / f"{split}.txt").read_bytes() == (WIKITEXT2 / f"{split}.txt").read_bytes()
    assert leftovers(out) == [MARKER]


def test_corrupt_archive_is_fetched_once_more(server, tmp_path):
    server.corrupt = 1
    download("wikitext2", tmp_path / "wt2", url=server.url)
    assert server.requests == [None, None]
    assert (tmp_path / "wt2" / "test.txt").read_bytes() == (WIKITEXT2 / "test.txt").read_bytes()
    assert leftovers(tmp_path / "wt2") == [MARKER]


def test_corrupt_twice_is_one_line_and_leaves_nothing(server, tmp_path, invoke):
    server.corrupt = 2
    with pytest.raises(UserError, match=r"could not download wikitext2: .*damaged.*fetched twice"):
        download("wikitext2", tmp_path / "wt2", url=server.url)
    assert server.requests == [None, None]
    assert not list((tmp_path / "wt2").iterdir())  # no .part, no .train.txt.tmp, no train.txt
    server.corrupt = 2
    result = invoke("download", "wikitext2", "--out", tmp_path / "cli", "--url", server.url)
    assert result.exit_code == 2 and "damaged" in one_error_line(result.stderr)
    assert "Traceback" not in result.output + result.stderr
    assert "discarded, downloading" in result.stderr  # what it did in between, said once
    # a wrong --sha256 is damage too: two fetches, one line, nothing kept
    server.requests.clear()
    with pytest.raises(UserError, match="sha256 does not match 111111111111"):
        download("wikitext2", tmp_path / "sha", url=server.url, sha256="1" * 64)
    assert server.requests == [None, None] and not list((tmp_path / "sha").iterdir())


def test_complete_part_answered_416_is_verified_and_kept(server, tmp_path):
    out = tmp_path / "wt2"
    out.mkdir()
    (out / ".wikitext2.part").write_bytes(server.payload)  # a run killed before unpacking
    download("wikitext2", out, url=server.url)
    assert server.requests == [f"bytes={len(server.payload)}-"]  # answered 416, nothing refetched
    assert (out / "train.txt").read_bytes() == (WIKITEXT2 / "train.txt").read_bytes()
    assert leftovers(out) == [MARKER]


def test_garbage_part_answered_416_is_discarded(server, tmp_path):
    out = tmp_path / "wt2"
    out.mkdir()
    (out / ".wikitext2.part").write_bytes(b"<html>not found</html>" * (len(server.payload) // 20))
    download("wikitext2", out, url=server.url, backoff=0.01)
    assert server.requests[0].startswith("bytes=") and server.requests[1:] == [None]
    assert (out / "valid.txt").read_bytes() == (WIKITEXT2 / "valid.txt").read_bytes()
    assert leftovers(out) == [MARKER]


@pytest.mark.parametrize("preflight", [True, False])
def test_full_disk_while_downloading(server, small_disk, monkeypatch, invoke, preflight):
    disk = small_disk("1m")  # the archive is several MB
    if not preflight:  # the disk fills mid-stream
        monkeypatch.setattr("bertcli.download.check_space", lambda *a, **k: None)
    result = invoke("download", "wikitext2", "--out", disk / "wt2", "--url", server.url)
    line = one_error_line(result.stderr)
    assert result.exit_code == 2 and "Traceback" not in result.output + result.stderr
    assert line.startswith(
        f"error: no space left on device writing {disk / 'wt2' / '.wikitext2.part'}"
    )
    assert "download needs about" in line and "free there" in line
    assert not (disk / "wt2" / MARKER).exists()


def test_full_disk_while_unpacking_keeps_the_archive(server, small_disk, invoke):
    disk = small_disk(f"{len(server.payload) // 1024 + 1200}k")  # the archive, not its contents
    result = invoke("download", "wikitext2", "--out", disk / "wt2", "--url", server.url)
    line = one_error_line(result.stderr)
    assert result.exit_code == 2 and "Traceback" not in result.output + result.stderr
    assert line.startswith("error: no space left on device writing") and ".txt" in line, line
    assert leftovers(disk / "wt2") == [".wikitext2.part"]  # complete: kept for the next run
    assert not [p for p in (disk / "wt2").iterdir() if p.suffix == ".txt"]


# ---------------------------------------------------------------------------- hostile inputs


def test_out_holding_the_users_files_is_refused(server, tmp_path, invoke):
    out = tmp_path / "mydocs"
    (out / "thesis").mkdir(parents=True)
    (out / "thesis" / "chapter1.tex").write_text("my thesis")
    (out / "train.txt").write_text("my own training notes")
    result = invoke("download", "wikitext2", "--out", out, "--url", server.url)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "is not empty and not a download of wikitext2 (it holds thesis)" in one_error_line(
        result.stderr
    )
    assert (out / "thesis" / "chapter1.tex").read_text() == "my thesis"
    assert (out / "train.txt").read_text() == "my own training notes"
    assert server.requests == []  # refused before anything was fetched


def test_a_killed_download_is_resumed_not_refused(server, tmp_path):
    out = tmp_path / "wt2"
    out.mkdir()
    (out / ".wikitext2.part").write_bytes(server.payload[:1000])
    (out / ".train.txt.tmp-0badf00d").write_bytes(b"debris")  # a killed unpack's temporary
    download("wikitext2", out, url=server.url)
    assert (out / "train.txt").read_bytes() == (WIKITEXT2 / "train.txt").read_bytes()


def test_a_symlinked_part_is_replaced_not_followed(server, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    out = tmp_path / "wt2"
    out.mkdir()
    (out / ".wikitext2.part").symlink_to(victim)
    download("wikitext2", out, url=server.url)
    assert victim.read_bytes() == b"precious\n"  # neither appended to nor truncated
    assert (out / "valid.txt").read_bytes() == (WIKITEXT2 / "valid.txt").read_bytes()
    assert not (out / ".wikitext2.part").exists()


def test_split_temporaries_never_follow_links(server, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    out = tmp_path / "wt2"
    out.mkdir()
    for split in ("train", "valid", "test"):  # the fixed names earlier versions wrote through
        (out / f".{split}.txt.tmp").symlink_to(victim)
    download("wikitext2", out, url=server.url)
    assert victim.read_bytes() == b"precious\n"
    assert (out / "test.txt").read_bytes() == (WIKITEXT2 / "test.txt").read_bytes()


def _zip_bomb(member: str, size: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open(member, "w", force_zip64=True) as handle:
            zero = bytes(1 << 20)
            for _ in range(size >> 20):
                handle.write(zero)
        for split in ("valid", "test"):
            zf.writestr(f"wikitext-103-raw/wiki.{split}.raw", f"{split}\n")
    return buffer.getvalue()


def test_a_zip_bomb_stops_at_the_member_cap(tmp_path, monkeypatch):
    import dataclasses

    import bertcli.download as dl

    # the bomb: 1 GiB of zeros in about 1 MB of zip, above every real member's cap
    assert max(max(spec.member_cap.values()) for spec in REGISTRY.values()) < 1 << 30
    # here scaled down (64 MiB against an 8 MiB cap) to keep the test's disk use small
    spec = REGISTRY["wikitext103-raw"]
    monkeypatch.setitem(
        REGISTRY,
        spec.name,
        dataclasses.replace(spec, member_cap={**spec.member_cap, "train": 8 << 20}),
    )
    bomb = _zip_bomb("wikitext-103-raw/wiki.train.raw", 64 << 20)
    assert len(bomb) < 1 << 20
    (tmp_path / "bomb.zip").write_bytes(bomb)
    written: list[int] = []

    class Counting:
        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            written.append(len(data))
            return self.handle.write(data)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    real = dl._create_new
    monkeypatch.setattr(dl, "_create_new", lambda path: Counting(real(path)))
    with pytest.raises(UserError, match="unpacks to more than 8 MiB"):
        download(
            "wikitext103-raw",
            tmp_path / "out",
            url=(tmp_path / "bomb.zip").as_uri(),
            sha256=hashlib.sha256(bomb).hexdigest(),  # vouched for: only the cap stops it
        )
    assert 0 < sum(written) <= 8 << 20  # stopped the moment it passed the cap, and only once
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []


def test_plain_http_url_warns(server, tmp_path, monkeypatch):
    from bertcli.console import Reporter

    class Log(Reporter):
        lines: list[str] = []

        def log(self, message: str) -> None:
            self.lines.append(message)

    download("wikitext2", tmp_path / "quiet", url=server.url, reporter=Log())
    assert not Log.lines  # loopback: nobody on the path
    monkeypatch.setattr("bertcli.remote.is_plain_http", lambda url: url.startswith("http:"))
    download("wikitext2", tmp_path / "wt2", url=server.url, reporter=Log())
    assert f"warning: --url {server.url} is plain http, not https" in Log.lines[0]
