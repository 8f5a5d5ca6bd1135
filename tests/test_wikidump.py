"""A hostile dump mirror, on loopback: the names, shapes and sizes it serves are not trusted.

Each test here failed before issue 19's fixes: an absolute name from dumpstatus.json was written
where it pointed, a malformed dumpstatus.json was a traceback, a size match skipped the sha1,
remote documents were read whole, and an https mirror could redirect to plain http.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import ssl
import subprocess
import threading
from pathlib import Path

import pytest

from bertcli.console import Reporter
from bertcli.errors import UserError
from bertcli.remote import REMOTE_TEXT_CAP, is_plain_http, open_url, read_capped
from bertcli.wikidump import dump_file_name, fetch_dump, find_dump, parse_sha1sums
from bertcli.wikipedia import download_wikipedia
from tests.test_wikipedia import PART_NAME, DumpServer

PAYLOAD = b"<mediawiki></mediawiki>\n"
SHA1 = hashlib.sha1(PAYLOAD).hexdigest()


def _status(files: object, job_status: str = "done") -> bytes:
    return json.dumps(
        {"jobs": {"articlesmultistreamdump": {"status": job_status, "files": files}}}
    ).encode()


def _serve(status: bytes, extra: dict[str, bytes] | None = None) -> DumpServer:
    return DumpServer(
        {"/enwiki/20260101/dumpstatus.json": status, f"/enwiki/20260101/{PART_NAME}": PAYLOAD}
        | (extra or {})
    )


class _Log(Reporter):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, message: str) -> None:
        self.lines.append(message)


@pytest.mark.parametrize(
    "name",
    [
        "{tmp}/site-packages/evil.xml.pth",  # absolute: code execution in another environment
        "../enwiki-20260101-pages-articles.xml.bz2",
        "sub/enwiki-20260101-pages-articles.xml.bz2",
        "enwiki-20260101-pages-articles.xml.bz2/../../x.xml",
        "enwiki-20260101-pages-articles.xml.bz2\x00",
        "enwiki-20260101-pages-articles.xml.pth",  # not the dump's own pattern
        "dewiki-20260101-pages-articles.xml.bz2",  # another wiki's file
        "enwiki-20250101-pages-articles.xml.bz2",  # another date's file
        "..\\enwiki-20260101-pages-articles.xml.bz2",
    ],
)
def test_a_mirror_cannot_choose_where_files_go(tmp_path, name):
    name = name.format(tmp=tmp_path)
    server = _serve(_status({name: {"size": len(PAYLOAD), "sha1": SHA1}}))
    try:
        with pytest.raises(UserError, match="refusing the file name"):
            download_wikipedia(tmp_path / "out", "en", date="20260101", url=server.url)
    finally:
        server.close()
    assert not (tmp_path / "site-packages").exists() and not (tmp_path / "out").exists()
    assert not (tmp_path / "out-dump").exists()


def test_real_dump_names_are_accepted():
    for name in (
        PART_NAME,
        "enwiki-20260101-pages-articles.xml.bz2",
        "enwiki-20260101-pages-articles-multistream.xml.bz2",
        "enwiki-20260101-pages-articles27.xml-p69975174p71475173.bz2",
        "zh_min_nanwiki-20260101-pages-articles.xml.bz2",
    ):
        db = name.split("-", 1)[0]
        assert dump_file_name(name, db, "20260101", "x") == name


@pytest.mark.parametrize(
    ("status", "match"),
    [
        (b"[1, 2]", "expected a JSON object"),
        (json.dumps({"jobs": [1, 2]}).encode(), "'jobs' is list"),
        (json.dumps({"jobs": {"articlesmultistreamdump": "done"}}).encode(), "is str"),
        (_status([PART_NAME]), "files is list"),
        (_status({PART_NAME: "a string"}), r"files\[.*\] is str"),
        (_status({PART_NAME: {"sha1": 12345}}), "sha1 is not 40 hexadecimal"),
        (_status({PART_NAME: {"sha1": SHA1, "size": "big"}}), "size is not a byte count"),
        (_status({PART_NAME: {"sha1": SHA1, "size": -1}}), "size is not a byte count"),
        (b"[" * 100_000 + b"]" * 100_000, "is not JSON"),  # nesting past the recursion limit
        (b"\xff\xfe not json", "is not JSON"),
    ],
)
def test_malformed_dumpstatus_is_one_line(status, match, tmp_path, invoke):
    server = _serve(status)
    try:
        with pytest.raises(UserError, match=match):
            find_dump("en", "20260101", server.url)
        result = invoke(
            "download", "wikipedia", "--date", "20260101", "--url", server.url,
            "--out", tmp_path / "o",
        )  # fmt: skip
    finally:
        server.close()
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")


def test_sha1_list_names_only_look_up_listed_files():
    sums = parse_sha1sums(f"{SHA1}  /etc/evil.xml\n{'z' * 40}  bad\nnot a line\n")
    assert sums == {"/etc/evil.xml": SHA1}  # looked up by a validated name, never written


def test_a_file_whose_size_matches_is_still_checked_by_sha1(tmp_path):
    server = _serve(_status({PART_NAME: {"size": len(PAYLOAD), "sha1": SHA1}}))
    try:
        dump = find_dump("en", "20260101", server.url)
        directory = tmp_path / "dump"
        directory.mkdir()
        stale = directory / PART_NAME
        stale.write_bytes(b"x" * len(PAYLOAD))  # the right size, not the published content
        fetch_dump(dump, directory, Reporter())
        assert stale.read_bytes() == PAYLOAD  # fetched again and verified
        fetched = [p for p, _ in server.requests if p.endswith(PART_NAME)]
        assert len(fetched) == 1
        fetch_dump(dump, directory, Reporter())  # now verified by sha1: nothing fetched
        assert len([p for p, _ in server.requests if p.endswith(PART_NAME)]) == 1
    finally:
        server.close()


def test_remote_documents_are_read_with_a_cap(tmp_path):
    huge = b" " * (REMOTE_TEXT_CAP + 1)
    server = DumpServer({"/enwiki/": huge, "/enwiki/20260101/dumpstatus.json": huge})
    try:
        with pytest.raises(UserError, match="dump index is larger than 16 MiB"):
            find_dump("en", None, server.url)
        with pytest.raises(UserError, match="dumpstatus.json is larger than 16 MiB"):
            find_dump("en", "20260101", server.url)
        assert read_capped(f"{server.url}/enwiki/", 5, "x", cap=len(huge)) == huge
    finally:
        server.close()


def test_plain_http_warns_off_this_machine(tmp_path, monkeypatch):
    assert is_plain_http("http://dumps.example.org/x") and is_plain_http("http://10.0.0.1/")
    assert not is_plain_http("https://dumps.wikimedia.org/") and not is_plain_http("file:///x")
    for loopback in ("http://127.0.0.1:9/", "http://localhost/", "http://[::1]/"):
        assert not is_plain_http(loopback)  # nobody on that path
    # the wiring: a plain-http mirror is named on the way in (loopback counted as remote here)
    monkeypatch.setattr("bertcli.remote.is_plain_http", lambda url: url.startswith("http:"))
    server = _serve(_status({PART_NAME: {"size": len(PAYLOAD), "sha1": SHA1}}))
    log = _Log()
    try:
        with pytest.raises(UserError):  # the payload is no dump: what matters is the warning
            download_wikipedia(tmp_path / "o", "en", date="20260101", url=server.url, reporter=log)
    finally:
        server.close()
    assert any(line.startswith("warning: --url http://") for line in log.lines), log.lines


# ---------------------------------------------------------------------------- https → http


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("tls")
    key, cert = directory / "key.pem", directory / "cert.pem"
    try:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"no openssl to make a test certificate: {exc}")
    return key, cert


def _redirecting_https_server(certificate, location: str):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            if self.path == "/ok":
                body = b"over tls"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(certificate[1]), str(certificate[0]))
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"https://127.0.0.1:{httpd.server_address[1]}"


def test_https_to_http_redirect_is_refused(certificate, tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[1]))
    plain = _serve(_status({PART_NAME: {"size": len(PAYLOAD), "sha1": SHA1}}))
    httpd, base = _redirecting_https_server(certificate, f"{plain.url}/enwiki/20260101/{PART_NAME}")
    try:
        with open_url(f"{base}/ok", 10) as response:  # the certificate is trusted: TLS works
            assert response.read() == b"over tls"
        with pytest.raises(UserError, match="refused a redirect from https to http://"):
            read_capped(f"{base}/enwiki/", 10, "the dump index")
        from bertcli.download import download

        with pytest.raises(UserError, match="refused a redirect from https"):
            download("wikitext2", tmp_path / "wt2", url=f"{base}/wikitext-2-v1.zip")
        assert not plain.requests  # the plain-http server was never asked
    finally:
        httpd.shutdown()
        httpd.server_close()
        plain.close()


def test_http_redirects_are_still_followed(tmp_path):
    target = _serve(b"{}")

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", f"{target.url}/enwiki/20260101/dumpstatus.json")
            self.send_header("Content-Length", "0")
            self.end_headers()

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/x"
        assert read_capped(url, 10, "x") == b"{}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        target.close()
