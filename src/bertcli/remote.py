"""Talking to servers a user names: no https → http downgrade, bounded reads, a plain-http warning.

Every HTTP request of `download` and of the dump finder goes through `open_url`, whose opener
follows redirects as urllib does except one from https to anything else: a mirror (or whoever
sits between us and it) must not be able to move a verified-over-TLS transfer onto plain HTTP.
Small remote documents (a dump server's index page, `dumpstatus.json`, `*-sha1sums.txt`) are
read with `read_capped`, which streams and stops at `REMOTE_TEXT_CAP`: their size is the
server's choice, so reading them whole would let it name our memory use.
"""

from __future__ import annotations

import ipaddress
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from bertcli.console import Reporter
from bertcli.errors import UserError

# enwiki's dumpstatus.json is about 100 kB and its index page a few kB; 16 MiB is far above any
# real one and still small enough to hold.
REMOTE_TEXT_CAP = 16 << 20
USER_AGENT = "bertcli"


class DowngradeError(UserError):
    """A redirect from https to plain http (or another scheme)."""


class _NoDowngrade(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, D102
        if urlsplit(req.full_url).scheme == "https" and urlsplit(newurl).scheme != "https":
            raise DowngradeError(
                f"{req.full_url}: refused a redirect from https to {newurl} (HTTP {code}); "
                "a server must not move a download off TLS"
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_NoDowngrade)


def open_url(url: str, timeout: float, headers: dict[str, str] | None = None) -> Any:
    """urlopen with our User-Agent and the no-downgrade redirect rule."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **(headers or {})})
    return _OPENER.open(request, timeout=timeout)


def read_capped(url: str, timeout: float, what: str, cap: int = REMOTE_TEXT_CAP) -> bytes:
    """The body of `url`, or UserError once it passes `cap` bytes (nothing more is read)."""
    chunks: list[bytes] = []
    size = 0
    with open_url(url, timeout) as response:
        while True:
            chunk = response.read(min(1 << 16, cap + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > cap:
                raise UserError(
                    f"{url}: {what} is larger than {cap >> 20} MiB; a real one is far smaller "
                    "(is this a dump server?)"
                )
    return b"".join(chunks)


def is_plain_http(url: str) -> bool:
    """Whether `url` travels without TLS over a network: plain http to a host other than this
    machine (loopback is exempt, as pip counts it a secure origin: nobody sits on that path)."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "http":
        return False
    host = (parts.hostname or "").lower()
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # a name: it may resolve anywhere


def warn_plain_http(url: str, reporter: Reporter, what: str) -> None:
    """One line when `url` is plain http: anyone on the path can change what arrives (the sums
    catch a changed archive, but not a changed name or a withheld update)."""
    if is_plain_http(url):
        reporter.log(f"warning: {what} {url} is plain http, not https: the transfer is not private")
