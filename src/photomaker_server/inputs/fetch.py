"""Fetching user-supplied URLs without becoming a proxy into the operator's network (SSRF defence).

The worker downloads whatever URL a client names, from inside the operator's network. Without care, a client
could make it read cloud metadata (``169.254.169.254``), admin panels on ``127.0.0.1`` or hosts on the LAN.
The defence here:

1. Only ``http``, ``https`` and ``data:`` are accepted (data URIs are decoded by :mod:`.data_uri`).
2. The host is resolved exactly once, and the request is refused if *any* resolved address is not globally
   routable (see :func:`address_problem`, which also unwraps IPv4 embedded in IPv6 forms).
3. The connection goes to the address that was checked: the request URL's host is rewritten to that IP and
   the original name travels in the ``Host`` header and as the TLS SNI name (so certificates are still
   verified against the real name). A second DNS lookup, which a rebinding attacker could answer
   differently, never happens.
4. Redirects are followed by hand, and every hop goes through the same checks.
5. Bodies are streamed and cut off at ``max_bytes``; every network step has a timeout, plus a total deadline.
"""

from __future__ import annotations

import ipaddress
import mimetypes
import re
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import quote, urljoin, urlsplit

import httpx

from photomaker_server.inputs.data_uri import decode_data_uri, limit_text
from photomaker_server.inputs.errors import InputError
from photomaker_server.urls import HttpUrl, UrlError, parse_http_url
from photomaker_server.urls import display as _display

if TYPE_CHECKING:
    from photomaker_server.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MiB = 1024 * 1024
#: How refusals of internal addresses say what would allow them: for a self-hosted service, internal file servers
#: and webhook receivers are the normal case, and the operator needs the setting's name, not just a "no".
ALLOW_HINT = ("unless the host is allow-listed (PHOTOMAKER_FETCH_ALLOW or `photomaker serve --fetch-allow`, "
              "host names or CIDRs)")
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_USER_AGENT = "photomaker-server (+https://github.com/TencentARC/PhotoMaker)"
#: How many of the (already checked) resolved addresses we try before giving up on a connection.
_MAX_CONNECT_ATTEMPTS = 3


@dataclass
class FetchPolicy:
    """Limits for one download. ``allow`` exempts operator-trusted hosts (names or CIDRs) from the address check.

    ``local_resolver`` lets the service answer URLs of its own file storage from disk: it is called with each
    URL first and, when it returns bytes, no request is made. ``ssl_context`` replaces the system trust store
    (operators with a private CA; tests).
    """

    timeout_s: float = 20.0
    max_bytes: int = 64 * MiB
    max_data_uri_bytes: int = 32 * MiB
    allow: list[str] = field(default_factory=list)
    max_redirects: int = 5
    local_resolver: Callable[[str], bytes | None] | None = None
    ssl_context: ssl.SSLContext | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, local_resolver: Callable[[str], bytes | None] | None = None
    ) -> FetchPolicy:
        return cls(
            timeout_s=settings.fetch_timeout_s,
            max_bytes=settings.max_download_bytes,
            max_data_uri_bytes=settings.max_data_uri_bytes,
            allow=list(settings.fetch_allow),
            local_resolver=local_resolver,
        )


@dataclass
class Fetched:
    """Downloaded bytes; ``url`` is the final URL after redirects (as the user would see it)."""

    data: bytes
    content_type: str | None
    url: str


# --------------------------------------------------------------------------------------------------------
# Address classification
# --------------------------------------------------------------------------------------------------------

_V4_BLOCKED: list[tuple[ipaddress.IPv4Network, str]] = [
    (ipaddress.IPv4Network(net), why)
    for net, why in [
        ("0.0.0.0/8", "an unspecified/'this network' address"),
        ("10.0.0.0/8", "a private address"),
        ("100.64.0.0/10", "a carrier-grade NAT address"),
        ("127.0.0.0/8", "a loopback address"),
        ("169.254.0.0/16", "a link-local address"),
        ("172.16.0.0/12", "a private address"),
        ("192.0.0.0/24", "an IETF protocol address"),
        ("192.0.2.0/24", "a documentation address"),
        ("192.88.99.0/24", "a 6to4 relay address"),
        ("192.168.0.0/16", "a private address"),
        ("198.18.0.0/15", "a benchmarking address"),
        ("198.51.100.0/24", "a documentation address"),
        ("203.0.113.0/24", "a documentation address"),
        ("224.0.0.0/4", "a multicast address"),
        ("255.255.255.255/32", "the broadcast address"),
        ("240.0.0.0/4", "a reserved address"),
    ]
]

_V6_BLOCKED: list[tuple[ipaddress.IPv6Network, str]] = [
    (ipaddress.IPv6Network(net), why)
    for net, why in [
        ("::/128", "an unspecified address"),
        ("::1/128", "a loopback address"),
        ("::/96", "an IPv4-compatible address"),  # deprecated; only reached for public embedded IPv4
        ("64:ff9b:1::/48", "a local-use NAT64 address"),
        ("100::/64", "a discard-only address"),
        ("2001::/23", "an IETF protocol address"),  # includes Teredo 2001::/32
        ("2001:db8::/32", "a documentation address"),
        ("3fff::/20", "a documentation address"),
        ("fc00::/7", "a unique-local (private) address"),
        ("fe80::/10", "a link-local address"),
        ("fec0::/10", "a site-local address"),
        ("ff00::/8", "a multicast address"),
    ]
]

_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses that an IPv6 address carries and that a network may route to (mapped, NAT64, 6to4, Teredo).

    These forms let ``::ffff:127.0.0.1`` or ``64:ff9b::a9fe:a9fe`` reach an IPv4 target, so the embedded
    address must pass the same check as a plain one.
    """
    found: list[ipaddress.IPv4Address] = []
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if (
        address in _IPV4_MAPPED
        or address in _NAT64_WELL_KNOWN
        or (address in _IPV4_COMPATIBLE and int(address) > 1)  # :: and ::1 are not IPv4-compatible
    ):
        found.append(low32)
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)  # (server, client); the client is de-obfuscated by ipaddress
    return found


def address_problem(address: IPAddress) -> str | None:
    """Why ``address`` must not be fetched from (a phrase such as "a private address"), or None if it is public.

    Explicit tables come first so the answer does not depend on the Python version's ``ipaddress`` tables;
    those flags are still consulted afterwards as a safety net.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            return "a scoped (link-local) address"
        for inner in embedded_ipv4(address):
            problem = address_problem(inner)
            if problem:
                return f"{problem} embedded in an IPv6 address"
        if address in _IPV4_MAPPED or address in _NAT64_WELL_KNOWN:
            # Routed to the embedded IPv4, which passed; the prefix itself is not "global" to ipaddress.
            return None
        table: list = _V6_BLOCKED
    else:
        table = _V4_BLOCKED
    for network, why in table:
        if address in network:
            return why
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_private:
        return "a private address"
    if address.is_reserved:
        return "a reserved address"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "a site-local address"
    if not address.is_global:
        return "a non-public address"
    return None


# --------------------------------------------------------------------------------------------------------
# URL parsing
# --------------------------------------------------------------------------------------------------------

_NUMERIC_HOST = re.compile(r"[0-9a-fx.]+", re.IGNORECASE)
_LAST_LABEL_NUMERIC = re.compile(r"(0x[0-9a-f]*|[0-9]+)\.?", re.IGNORECASE)


def parse_literal_ip(host: str) -> IPAddress | None:
    """The IP a host string denotes literally, in any spelling a resolver would accept, else None.

    Besides dotted quads and IPv6, resolvers (``inet_aton``) accept ``2130706433``, ``0x7f.1``,
    ``0177.0.0.1`` and ``127.1``. Browsers (WHATWG URL) treat a host whose last label is numeric as IPv4 too,
    so a host like that which does not parse is refused rather than sent to DNS.
    """
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    last_label = host.rstrip(".").rsplit(".", 1)[-1] if host.rstrip(".") else host
    if _NUMERIC_HOST.fullmatch(host) and _LAST_LABEL_NUMERIC.fullmatch(last_label):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host.rstrip(".")))
        except OSError:
            raise InputError(f"the URL's host {host!r} is not a valid IP address") from None
    return None


_Target = HttpUrl  # a checked http(s) URL split into what the connection needs (see ..urls)


def _parse_http_url(url: str) -> HttpUrl:
    try:
        return parse_http_url(url)
    except UrlError as exc:
        raise InputError(exc.message) from None


# --------------------------------------------------------------------------------------------------------
# Resolution and the address check
# --------------------------------------------------------------------------------------------------------


def is_allow_listed(host: str, address: IPAddress | None, allow: list[str]) -> bool:
    """Whether the operator exempted ``host`` (by name) or ``address`` (by CIDR) from the address check."""
    for entry in allow:
        entry = entry.strip().lower()
        if not entry:
            continue
        if entry.rstrip(".") == host:
            return True
        if address is not None:
            try:
                network = ipaddress.ip_network(entry.strip("[]"), strict=False)
            except ValueError:
                continue
            if address.version == network.version and address in network:
                return True
    return False


def resolve_checked(host: str, port: int, allow: list[str]) -> list[IPAddress]:
    """Resolve ``host`` once and return its addresses, refusing if any of them is not public.

    Every address must pass, not just the first: a name that resolves to one public and one private address
    would otherwise let the connection land on the private one. Entries of ``allow`` (exact host name, or a
    CIDR/IP containing the address) are exempt.
    """
    literal = parse_literal_ip(host)
    if literal is not None:
        addresses: list[IPAddress] = [literal]
    else:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            raise InputError(f"the host name {host!r} could not be resolved") from None
        addresses = []
        for _family, _type, _proto, _canon, sockaddr in infos:
            try:
                text = str(sockaddr[0])
                if len(sockaddr) >= 4 and sockaddr[3]:
                    text = f"{text.split('%', 1)[0]}%{sockaddr[3]}"
                address = ipaddress.ip_address(text)
            except (ValueError, IndexError):
                raise InputError(f"the host name {host!r} resolved to an unusable address") from None
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise InputError(f"the host name {host!r} could not be resolved")
    for address in addresses:
        if is_allow_listed(host, address, allow):
            continue
        problem = address_problem(address)
        if problem:
            where = "the URL's host is" if literal is not None else f"the host name {host!r} resolves to"
            raise InputError(f"{where} {problem}; only public internet addresses can be fetched {ALLOW_HINT}")
    return addresses


# --------------------------------------------------------------------------------------------------------
# http(s)
# --------------------------------------------------------------------------------------------------------


def _request_url(target: _Target, address: IPAddress) -> httpx.URL:
    return httpx.URL(
        scheme=target.scheme,
        host=str(address).split("%", 1)[0] if address.version == 6 else str(address),
        port=target.port,
        raw_path=target.path.encode("ascii") if target.path.isascii() else _quote_path(target.path),
    )


def _quote_path(path: str) -> bytes:
    """Percent-encode non-ASCII characters (as UTF-8) and leave everything else, including escapes, as is."""
    return quote(path, safe="".join(chr(c) for c in range(0x21, 0x7F))).encode("ascii")


def _content_type(response: httpx.Response) -> str | None:
    value = response.headers.get("content-type")
    if not value:
        return None
    return value.split(";", 1)[0].strip().lower() or None


def _read_body(response: httpx.Response, target: _Target, policy: FetchPolicy, deadline: float) -> bytes:
    too_big = InputError(f"{_display(target.url)!r} is larger than the {limit_text(policy.max_bytes)} download limit")
    declared = response.headers.get("content-length")
    if declared and declared.strip().isdigit() and int(declared) > policy.max_bytes:
        raise too_big
    body = bytearray()
    for chunk in response.iter_bytes():  # as the network delivers, so the deadline is checked often
        body += chunk
        if len(body) > policy.max_bytes:
            raise too_big
        if time.monotonic() > deadline:
            raise httpx.ReadTimeout("total deadline passed")
    return bytes(body)


def _fetch_once(
    client: httpx.Client, target: _Target, policy: FetchPolicy, deadline: float
) -> tuple[int, str | None, bytes | None, str | None]:
    """One hop: (status, Location header, body if 2xx, content type). The address check happens here."""
    addresses = resolve_checked(target.host, target.port, policy.allow)
    literal = parse_literal_ip(target.host) is not None
    headers = {"Host": target.host_header, "User-Agent": _USER_AGENT, "Accept": "*/*"}
    extensions: dict[str, str] = {}
    if target.scheme == "https" and not literal:
        extensions["sni_hostname"] = target.host
    last_error: httpx.ConnectError | None = None
    for address in addresses[:_MAX_CONNECT_ATTEMPTS]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise httpx.ConnectTimeout("total deadline passed")
        timeout = httpx.Timeout(min(policy.timeout_s, remaining))
        url = _request_url(target, address)
        try:
            with client.stream("GET", url, headers=headers, extensions=extensions, timeout=timeout) as response:
                status = response.status_code
                if status in _REDIRECT_STATUSES:
                    return status, response.headers.get("location"), None, None
                if not 200 <= status < 300:
                    return status, None, None, None
                return status, None, _read_body(response, target, policy, deadline), _content_type(response)
        except httpx.ConnectError as exc:
            last_error = exc
    raise last_error or httpx.ConnectError("no address to connect to")


def _fetch_http(url: str, policy: FetchPolicy) -> Fetched:
    deadline = time.monotonic() + policy.timeout_s
    timeout = httpx.Timeout(policy.timeout_s)
    verify: ssl.SSLContext | bool = policy.ssl_context if policy.ssl_context is not None else True
    current = url
    # trust_env=False: proxies from the environment would connect on our behalf and defeat the address pinning.
    with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False, verify=verify) as client:
        for _hop in range(policy.max_redirects + 1):
            if _scheme(current) not in ("http", "https"):
                raise InputError(f"a redirect led to {_display(current)!r}; only http and https are followed")
            local = _resolve_locally(current, policy)  # our own storage, on every hop
            if local is not None:
                return local
            target = _parse_http_url(current)
            try:
                status, location, body, content_type = _fetch_once(client, target, policy, deadline)
            except httpx.TimeoutException:
                raise InputError(
                    f"downloading {_display(target.url)!r} timed out after {policy.timeout_s:g} s"
                ) from None
            except httpx.ConnectError:
                raise InputError(f"could not connect to {target.host_header!r}") from None
            except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError, ssl.SSLError, OSError):
                raise InputError(f"downloading {_display(target.url)!r} failed (network or protocol error)") from None
            if body is not None:
                return Fetched(data=body, content_type=content_type, url=target.url)
            if status in _REDIRECT_STATUSES:
                if not location:
                    raise InputError(f"{_display(target.url)!r} answered HTTP {status} without a Location")
                current = urljoin(target.url, location.strip())
                continue
            raise InputError(f"downloading {_display(target.url)!r} failed: the server answered HTTP {status}")
    raise InputError(f"{_display(url)!r} redirected more than {policy.max_redirects} times")


def _resolve_locally(url: str, policy: FetchPolicy) -> Fetched | None:
    if policy.local_resolver is None:
        return None
    data = policy.local_resolver(url)
    if data is None:
        return None
    if len(data) > policy.max_bytes:
        raise InputError(f"{_display(url)!r} is larger than the {limit_text(policy.max_bytes)} download limit")
    path = urlsplit(url).path
    return Fetched(data=bytes(data), content_type=mimetypes.guess_type(path)[0], url=url)


def _scheme(url: str) -> str:
    """The URL's scheme, lower-cased, or "" when it has none (e.g. ``example.com/a.jpg``)."""
    match = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", url)
    return match.group(1).lower()[:20] if match else ""


def fetch_bytes(url: str, policy: FetchPolicy) -> Fetched:
    """Download ``url`` (http, https or a ``data:`` URI) under ``policy``; every refusal is an InputError."""
    if not isinstance(url, str) or not url.strip():
        raise InputError("no URL was given")
    url = url.strip()
    scheme = _scheme(url)
    if scheme == "data":  # decoded by inputs/data_uri.py, the same rules the API applied at submit
        decoded = decode_data_uri(url, policy.max_data_uri_bytes)
        return Fetched(data=decoded.data, content_type=decoded.content_type, url=url)
    if scheme not in ("http", "https"):
        if not scheme:
            raise InputError("the URL has no scheme; give an http(s) URL (https://...) or a data: URI")
        raise InputError(f"{scheme!r} URLs are not accepted; give an http(s) URL or a data: URI")
    local = _resolve_locally(url, policy)  # our own storage: read it without a client (its TLS set-up costs ~50 ms)
    if local is not None:
        return local
    return _fetch_http(url, policy)
