"""One parser for the http(s) URLs clients hand us to call (webhooks) or fetch (inputs).

``urllib.parse.urlsplit`` is not a validator: it silently drops tabs and line breaks (``"http://a\\r\\nb/"`` becomes
host ``ab``), accepts hosts such as ``%zz`` or ``a b``, reports a port of 99999 only when ``.port`` is read, and
raises plain ``ValueError`` for ``http://[::1`` — which is how a malformed ``fal_webhook`` once became a 500. This
module turns a URL into a :class:`HttpUrl` whose every part can actually be used on the wire, or raises
:class:`UrlError` with a reason a client can act on; callers decide the HTTP status and which field to name.

Address policy (which hosts may be called) is not decided here: that is ``inputs.fetch`` (SSRF checks).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["MAX_HOST_CHARS", "MAX_URL_CHARS", "HttpUrl", "UrlError", "parse_http_url", "http_url_or_none"]

#: Longest URL accepted anywhere (query strings of presigned URLs run to a few KB; more is not a URL we call).
MAX_URL_CHARS = 16 * 1024
#: DNS limits (RFC 1035): 253 characters in all, 63 per label.
MAX_HOST_CHARS = 253
_MAX_LABEL_CHARS = 63
#: Host names as resolvers take them: letters, digits, hyphens, underscores (seen in real DNS names), dots.
_HOST_NAME = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?)*")


class UrlError(ValueError):
    """A URL that cannot be used. ``kind`` is a short machine-readable reason (``url_too_long``,
    ``url_characters``, ``url_invalid``, ``url_scheme``, ``url_credentials``, ``url_host``, ``url_port``)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind, self.message = kind, message


@dataclass(frozen=True)
class HttpUrl:
    """A checked http(s) URL split into what a connection needs."""

    scheme: str  # "http" or "https"
    host: str  # lower-case ASCII (IDNA) name or literal IP, without brackets or a trailing dot
    port: int  # the explicit port, else the scheme's default
    path: str  # path + query, never empty
    url: str  # the URL as given, without its fragment

    @property
    def path_only(self) -> str:
        """The path without the query string (still percent-encoded)."""
        return self.path.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.path.partition("?")[2]

    @property
    def origin(self) -> tuple[str, str, int]:
        """(scheme, host, port): what decides whether two URLs reach the same server."""
        return self.scheme, self.host, self.port

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def display(url: str) -> str:
    """A short form of a URL for messages: no query string (it often holds signatures), bounded length."""
    if url[:5].lower() == "data:":
        return "the data URI"
    short = url.split("?", 1)[0].split("#", 1)[0]
    return short if len(short) <= 120 else short[:117] + "..."


def _check_host_name(host: str, url: str) -> None:
    if len(host) > MAX_HOST_CHARS or any(len(label) > _MAX_LABEL_CHARS for label in host.split(".")):
        raise UrlError("url_host", f"the host name of {display(url)!r} is longer than DNS allows "
                       f"({MAX_HOST_CHARS} characters, {_MAX_LABEL_CHARS} per label)")
    if not _HOST_NAME.fullmatch(host):
        raise UrlError("url_host", f"{host[:80]!r} is not a valid host name")


def parse_http_url(url: str, *, max_chars: int = MAX_URL_CHARS) -> HttpUrl:
    """``url`` checked and split, or :class:`UrlError`.

    Refused: longer than ``max_chars``; whitespace, control characters or backslashes anywhere (percent-encode
    them); anything ``urlsplit`` cannot parse (unbalanced or invalid brackets); a scheme other than http(s); a user
    name or password; no host, a host that is neither a DNS name nor an IP literal (``%zz``, ``a b``), or one longer
    than DNS allows; a port outside 1-65535.
    """
    if len(url) > max_chars:
        raise UrlError("url_too_long", f"the URL is too long (at most {max_chars} characters are accepted)")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F or ch == "\\" for ch in url):
        raise UrlError("url_characters",
                       "the URL contains spaces, control characters or backslashes; percent-encode them")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UrlError("url_invalid", f"{display(url)!r} is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UrlError("url_scheme", f"{display(url)!r} is not an http(s) URL")
    if parts.username is not None or parts.password is not None:
        raise UrlError("url_credentials", "URLs with a user name or password in them are not accepted")
    host = parts.hostname or ""
    bracketed = parts.netloc.rpartition("@")[2].startswith("[")  # urlsplit has already validated the literal
    if not bracketed:
        if not host.isascii():
            try:
                host = host.encode("idna").decode("ascii")
            except UnicodeError:
                raise UrlError("url_host", f"the URL's host name {host!r} is not a valid domain name") from None
        host = host.lower().rstrip(".")
        if host:
            _check_host_name(host, url)
    if not host:
        raise UrlError("url_host", f"{display(url)!r} has no host name")
    if port is not None and not 1 <= port <= 65535:
        raise UrlError("url_port", f"the URL's port {port} is not a usable TCP port (1-65535)")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    default_port = 443 if scheme == "https" else 80
    return HttpUrl(scheme, host, port if port is not None else default_port, path, url.split("#", 1)[0])


def http_url_or_none(url: str) -> HttpUrl | None:
    """:func:`parse_http_url`, or None for anything that is not a usable http(s) URL: what the "is this URL one of
    ours?" checks (storage, the fal proxy) ask, where a malformed URL is simply not ours."""
    try:
        return parse_http_url(url)
    except UrlError:
        return None
