"""fetch_bytes: schemes, data URIs, the SSRF address check (every hop), pinning, limits.

Only servers on 127.0.0.1 are contacted. Refusals of other addresses are asserted to happen before any
connection: the `no_connections` fixture makes every transport send fail loudly.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from photomaker_server.inputs import data_uri, fetch
from photomaker_server.inputs.errors import InputError
from photomaker_server.inputs.fetch import (
    FetchPolicy,
    address_problem,
    fetch_bytes,
    parse_literal_ip,
    resolve_checked,
)
from photomaker_server.settings import Settings

# --------------------------------------------------------------------------------------------------------
# A tiny local HTTP(S) server whose routes each test sets
# --------------------------------------------------------------------------------------------------------

Route = Callable[[BaseHTTPRequestHandler], None]


@dataclass
class LocalServer:
    port: int
    scheme: str = "http"
    routes: dict[str, Route] = field(default_factory=dict)
    seen: list[dict[str, str]] = field(default_factory=list)
    sni: list[str | None] = field(default_factory=list)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"


def _serve(scheme: str, context: ssl.SSLContext | None = None) -> Iterator[LocalServer]:
    state = LocalServer(port=0, scheme=scheme)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - http.server naming
            state.seen.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
            route = state.routes.get(self.path.split("?", 1)[0])
            if route is None:
                send(self, 404, b"not found")
            else:
                route(self)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def server() -> Iterator[LocalServer]:
    yield from _serve("http")


def send(
    handler: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str = "image/png", **headers: str
) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    for name, value in headers.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.end_headers()
    with contextlib.suppress(OSError):  # the client gave up (timeouts, size caps): expected in these tests
        handler.wfile.write(body)


def body(data: bytes, content_type: str = "image/png; charset=binary") -> Route:
    return lambda h: send(h, 200, data, content_type)


def redirect(location: str, status: int = 302) -> Route:
    return lambda h: send(h, status, b"", "text/plain", Location=location)


LOCAL = FetchPolicy(allow=["127.0.0.1"], timeout_s=5.0)


@pytest.fixture
def no_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to send a request fails the test: refusals must come before connecting."""

    def refuse(self: object, request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"a connection was attempted to {request.url}")

    monkeypatch.setattr(httpx.HTTPTransport, "handle_request", refuse)


def fake_dns(monkeypatch: pytest.MonkeyPatch, table: dict[str, list[str]]) -> list[str]:
    """Answer getaddrinfo for the names in ``table``; numeric hosts resolve as usual. Returns the names asked."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def getaddrinfo(host, port, *args, **kwargs):  # type: ignore[no-untyped-def]
        if isinstance(host, str) and host in table:
            asked.append(host)
            results = []
            for address in table[host]:
                ip = ipaddress.ip_address(address)
                if ip.version == 4:
                    results.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)))
                else:
                    results.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0)))
            return results
        if isinstance(host, str) and host.endswith(".test"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(fetch.socket, "getaddrinfo", getaddrinfo)
    return asked


# --------------------------------------------------------------------------------------------------------
# The address classifier
# --------------------------------------------------------------------------------------------------------

BLOCKED = [
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("10.0.0.1", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("100.127.255.255", "carrier-grade NAT"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("198.18.0.1", "benchmarking"),
    ("198.19.255.255", "benchmarking"),
    ("192.0.2.1", "documentation"),
    ("198.51.100.1", "documentation"),
    ("203.0.113.1", "documentation"),
    ("192.0.0.8", "IETF"),
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fe80::1", "link-local"),
    ("fe80::1%2", "scoped"),
    ("fc00::1", "unique-local"),
    ("fd12:3456:789a::1", "unique-local"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("2001:db8::1", "documentation"),
    ("100::1", "discard"),
    # IPv4 embedded in IPv6
    ("::ffff:127.0.0.1", "loopback embedded"),
    ("::ffff:169.254.169.254", "link-local embedded"),
    ("::ffff:10.0.0.1", "private embedded"),
    ("::127.0.0.1", "loopback embedded"),  # IPv4-compatible
    ("::10.0.0.1", "private embedded"),
    ("::8.8.8.8", "IPv4-compatible"),  # deprecated form, refused even for a public IPv4
    ("64:ff9b::7f00:1", "loopback embedded"),  # NAT64 well-known prefix
    ("64:ff9b::a9fe:a9fe", "link-local embedded"),
    ("64:ff9b:1::a00:1", "local-use NAT64"),
    ("64:ff9b:1::808:808", "local-use NAT64"),
    ("2002:7f00:1::1", "loopback embedded"),  # 6to4
    ("2002:a9fe:a9fe::", "link-local embedded"),
    ("2002:c0a8:101::1", "private embedded"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "documentation"),  # Teredo, client 192.0.2.45
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", "loopback embedded"),  # Teredo, client 127.0.0.1
    ("2001:0:808:808:8000:63bf:f7f7:f7f7", "IETF"),  # Teredo, client 8.8.8.8: Teredo itself refused
]

ALLOWED = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "151.101.1.69",
    "2606:4700:4700::1111",
    "2001:4860:4860::8888",
    "2a00:1450:4001:80b::200e",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
    "2002:808:808::1",
]


@pytest.mark.parametrize(("address", "reason"), BLOCKED)
def test_non_public_addresses_are_classified(address: str, reason: str) -> None:
    problem = address_problem(ipaddress.ip_address(address))
    assert problem is not None, address
    if reason != "private":
        assert reason.split()[0] in problem, (address, problem)


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_pass(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("0251.0376.0251.0376", "169.254.169.254"),
        ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),
        ("[::1]", "::1"),
        ("::ffff:7f00:1", "::ffff:7f00:1"),  # stays IPv6; address_problem unwraps it
        ("example.com", None),
        ("cafe.example", None),
    ],
)
def test_literal_ip_spellings(host: str, expected: str | None) -> None:
    parsed = parse_literal_ip(host)
    assert (str(parsed) if parsed else None) == (str(ipaddress.ip_address(expected)) if expected else None)


def test_numeric_looking_host_that_is_no_ip_is_refused() -> None:
    with pytest.raises(InputError, match="not a valid IP"):
        parse_literal_ip("1.2.3.999")


# --------------------------------------------------------------------------------------------------------
# Schemes and URL shapes
# --------------------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("no_connections")
@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "FILE:///etc/passwd",
        "ftp://example.com/a.jpg",
        "gopher://example.com:70/_GET",
        "javascript:alert(1)",
        "dict://127.0.0.1:11211/stats",
        "example.com/a.jpg",
        "//example.com/a.jpg",
        "/etc/passwd",
        "C:\\photos\\a.jpg",
        "",
        "   ",
    ],
)
def test_other_schemes_are_refused(url: str) -> None:
    with pytest.raises(InputError):
        fetch_bytes(url, FetchPolicy())


@pytest.mark.usefixtures("no_connections")
@pytest.mark.parametrize(
    "url",
    [
        "http://user:pass@example.com/a.jpg",
        "http://example.com/a b.jpg",
        "http://example.com\\@127.0.0.1/",
        "http://example.com:99999/",
        "http:///a.jpg",
        "http://" + "a" * 20_000 + ".com/",
    ],
)
def test_malformed_http_urls_are_refused(url: str) -> None:
    with pytest.raises(InputError):
        fetch_bytes(url, FetchPolicy())


# --------------------------------------------------------------------------------------------------------
# data: URIs
# --------------------------------------------------------------------------------------------------------

PAYLOAD = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


def test_base64_data_uri() -> None:
    fetched = fetch_bytes("data:image/png;base64," + base64.b64encode(PAYLOAD).decode(), FetchPolicy())
    assert fetched.data == PAYLOAD
    assert fetched.content_type == "image/png"


def test_data_uri_variants() -> None:
    encoded = base64.b64encode(PAYLOAD).decode()
    wrapped = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
    assert fetch_bytes("data:image/png;base64," + wrapped, FetchPolicy()).data == PAYLOAD
    urlsafe = base64.urlsafe_b64encode(PAYLOAD).decode().rstrip("=")
    assert fetch_bytes("DATA:image/png;BASE64," + urlsafe, FetchPolicy()).data == PAYLOAD
    percent = encoded.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")
    assert fetch_bytes("data:image/png;base64," + percent, FetchPolicy()).data == PAYLOAD
    assert fetch_bytes("data:;base64," + encoded, FetchPolicy()).content_type is None


def test_percent_encoded_data_uri() -> None:
    fetched = fetch_bytes("data:text/plain;charset=utf-8,hello%20world%21%00", FetchPolicy())
    assert fetched.data == b"hello world!\x00"
    assert fetched.content_type == "text/plain"


@pytest.mark.parametrize(
    "url",
    ["data:image/png;base64,***not base64***", "data:image/png;base64,QUJD$", "data:image/png;base64"],
)
def test_invalid_data_uris(url: str) -> None:
    with pytest.raises(InputError, match="base64|malformed"):
        fetch_bytes(url, FetchPolicy())


def test_empty_data_uri() -> None:
    with pytest.raises(InputError, match="empty"):
        fetch_bytes("data:image/png;base64,", FetchPolicy())


def test_data_uri_size_cap_on_decoded_bytes() -> None:
    policy = FetchPolicy(max_data_uri_bytes=1000)
    exactly = "data:application/octet-stream;base64," + base64.b64encode(bytes(1000)).decode()
    assert len(fetch_bytes(exactly, policy).data) == 1000
    over = "data:application/octet-stream;base64," + base64.b64encode(bytes(1001)).decode()
    with pytest.raises(InputError, match="more than 1000 bytes"):
        fetch_bytes(over, policy)
    with pytest.raises(InputError, match="more than 1000 bytes"):
        fetch_bytes("data:text/plain," + "a" * 1001, policy)


def test_overlong_data_uri_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_decode(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("decoded an over-long data URI")

    monkeypatch.setattr(data_uri.binascii, "a2b_base64", must_not_decode)
    policy = FetchPolicy(max_data_uri_bytes=1024 * 1024)
    with pytest.raises(InputError, match="more than 1 MB"):
        fetch_bytes("data:image/png;base64," + "A" * (2 * 1024 * 1024), policy)


# --------------------------------------------------------------------------------------------------------
# Fetching from a (allow-listed) local server
# --------------------------------------------------------------------------------------------------------


def test_fetch_from_allow_listed_local_server(server: LocalServer) -> None:
    server.routes["/a.png"] = body(b"PNGDATA")
    fetched = fetch_bytes(server.url("/a.png?sig=1#frag"), LOCAL)
    assert fetched.data == b"PNGDATA"
    assert fetched.content_type == "image/png"
    assert fetched.url == server.url("/a.png?sig=1")
    assert server.seen[0]["path"] == "/a.png?sig=1"
    assert server.seen[0]["host"] == f"127.0.0.1:{server.port}"


def test_allow_entry_as_cidr(server: LocalServer) -> None:
    server.routes["/a"] = body(b"x")
    assert fetch_bytes(server.url("/a"), FetchPolicy(allow=["127.0.0.0/8"])).data == b"x"


@pytest.mark.usefixtures("no_connections")
def test_local_server_is_refused_without_allow_list(server: LocalServer) -> None:
    server.routes["/a"] = body(b"x")
    with pytest.raises(InputError, match="loopback"):
        fetch_bytes(server.url("/a"), FetchPolicy())
    assert server.seen == []


@pytest.mark.usefixtures("no_connections")
@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://2130706433/",
        "http://0x7f000001/",
        "http://0177.0.0.1/",
        "http://0x7f.1/",
        "http://127.1/",
        "http://127.0.0.1./",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:7f00:1]/",
        "http://[0:0:0:0:0:ffff:127.0.0.1]/",
        "http://[64:ff9b::169.254.169.254]/",
        "http://[2002:a9fe:a9fe::1]/",
        "http://[fe80::1%25eth0]/",
        "http://169.254.169.254/latest/meta-data/",
        "http://0251.0376.0251.0376/latest/meta-data/",
        "http://10.0.0.1/",
        "http://192.168.0.1:8080/admin",
        "http://100.100.100.200/latest/meta-data",
        "http://0.0.0.0:8000/",
        "http://0/",
        "http://[::]/",
        "https://[fd00::1]/",
        "http://localhost/",
        "http://LOCALHOST:8000/",
    ],
)
def test_non_public_targets_are_refused_before_connecting(url: str) -> None:
    with pytest.raises(InputError, match="only public internet addresses|not a valid"):
        fetch_bytes(url, FetchPolicy())


@pytest.mark.usefixtures("no_connections")
def test_allow_list_for_ipv4_does_not_cover_the_mapped_ipv6_form() -> None:
    with pytest.raises(InputError, match="loopback"):
        fetch_bytes("http://[::ffff:127.0.0.2]/", FetchPolicy(allow=["127.0.0.1"]))


def test_non_2xx_names_the_status(server: LocalServer) -> None:
    server.routes["/gone"] = lambda h: send(h, 410, b"gone", "text/plain")
    with pytest.raises(InputError, match="HTTP 404"):
        fetch_bytes(server.url("/missing"), LOCAL)
    with pytest.raises(InputError, match="HTTP 410"):
        fetch_bytes(server.url("/gone"), LOCAL)


def test_content_length_over_the_cap_is_refused_early(server: LocalServer) -> None:
    server.routes["/big"] = body(bytes(2048))
    with pytest.raises(InputError, match="larger than the 1000 bytes download limit"):
        fetch_bytes(server.url("/big"), FetchPolicy(allow=["127.0.0.1"], max_bytes=1000))


def test_streamed_body_over_the_cap_is_cut_off(server: LocalServer) -> None:
    def chunked(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        try:
            for _ in range(100):
                handler.wfile.write(b"400\r\n" + bytes(1024) + b"\r\n")
            handler.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass

    server.routes["/stream"] = chunked
    with pytest.raises(InputError, match="larger than"):
        fetch_bytes(server.url("/stream"), FetchPolicy(allow=["127.0.0.1"], max_bytes=10_000))
    assert len(fetch_bytes(server.url("/stream"), LOCAL).data) == 100 * 1024


def test_slow_server_times_out(server: LocalServer) -> None:
    def slow(handler: BaseHTTPRequestHandler) -> None:
        time.sleep(1.5)
        send(handler, 200, b"late")

    server.routes["/slow"] = slow
    started = time.monotonic()
    with pytest.raises(InputError, match="timed out after 0.3 s"):
        fetch_bytes(server.url("/slow"), FetchPolicy(allow=["127.0.0.1"], timeout_s=0.3))
    assert time.monotonic() - started < 1.2


def test_dripping_server_hits_the_total_deadline(server: LocalServer) -> None:
    def drip(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "100")
        handler.end_headers()
        try:
            for _ in range(100):
                handler.wfile.write(b"x")
                handler.wfile.flush()
                time.sleep(0.1)
        except OSError:
            pass

    server.routes["/drip"] = drip
    started = time.monotonic()
    with pytest.raises(InputError, match="timed out"):
        fetch_bytes(server.url("/drip"), FetchPolicy(allow=["127.0.0.1"], timeout_s=0.5))
    assert time.monotonic() - started < 1.5


def test_connection_refused_is_a_short_message() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(InputError, match=r"^could not connect to '127.0.0.1:\d+'$"):
        fetch_bytes(f"http://127.0.0.1:{port}/", LOCAL)


# --------------------------------------------------------------------------------------------------------
# Redirects
# --------------------------------------------------------------------------------------------------------


def test_relative_redirects_are_followed(server: LocalServer) -> None:
    server.routes["/start"] = redirect("next?x=1", 301)
    server.routes["/next"] = redirect("/dir/final", 307)
    server.routes["/dir/final"] = body(b"done")
    fetched = fetch_bytes(server.url("/start"), LOCAL)
    assert fetched.data == b"done"
    assert fetched.url == server.url("/dir/final")
    assert [seen["path"] for seen in server.seen] == ["/start", "/next?x=1", "/dir/final"]


@pytest.mark.parametrize(
    "location",
    [
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.1/",
        "http://[::ffff:169.254.169.254]/",
        "http://2852039166/latest/meta-data",  # 169.254.169.254 spelled as one number
        "http://0xa9fea9fe/",
        "https://192.168.1.1/",
        "http://[::1]:1/",  # loopback, but not the allow-listed 127.0.0.1
        "//10.0.0.2/x",  # scheme-relative
    ],
)
def test_redirect_to_a_private_address_is_refused(
    server: LocalServer, monkeypatch: pytest.MonkeyPatch, location: str
) -> None:
    server.routes["/r"] = redirect(location)
    sent: list[str] = []
    original = httpx.HTTPTransport.handle_request

    def guarded(self: httpx.HTTPTransport, request: httpx.Request) -> httpx.Response:
        sent.append(str(request.url))
        assert request.url.host == "127.0.0.1", f"connected to {request.url}"
        return original(self, request)

    monkeypatch.setattr(httpx.HTTPTransport, "handle_request", guarded)
    with pytest.raises(InputError, match="only public internet addresses"):
        fetch_bytes(server.url("/r"), FetchPolicy(allow=["127.0.0.1"], timeout_s=5.0))
    assert len(sent) == 1


def test_redirect_to_another_scheme_is_refused(server: LocalServer) -> None:
    server.routes["/r"] = redirect("file:///etc/passwd")
    with pytest.raises(InputError, match="only http and https"):
        fetch_bytes(server.url("/r"), LOCAL)


def test_redirect_limit(server: LocalServer) -> None:
    server.routes["/loop"] = redirect("/loop")
    with pytest.raises(InputError, match="redirected more than 2 times"):
        fetch_bytes(server.url("/loop"), FetchPolicy(allow=["127.0.0.1"], max_redirects=2))
    assert len(server.seen) == 3


def test_redirect_without_location(server: LocalServer) -> None:
    server.routes["/r"] = lambda h: send(h, 302, b"", "text/plain")
    with pytest.raises(InputError, match="without a Location"):
        fetch_bytes(server.url("/r"), LOCAL)


# --------------------------------------------------------------------------------------------------------
# DNS: resolve once, check every address, connect to the checked one
# --------------------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("no_connections")
@pytest.mark.parametrize(
    "addresses",
    [
        ["10.1.2.3"],
        ["169.254.169.254"],
        ["8.8.8.8", "127.0.0.1"],  # any bad address refuses the name
        ["2606:4700:4700::1111", "fd00::1"],
        ["::ffff:192.168.0.1"],
    ],
)
def test_names_resolving_to_private_addresses_are_refused(
    monkeypatch: pytest.MonkeyPatch, addresses: list[str]
) -> None:
    fake_dns(monkeypatch, {"internal.test": addresses})
    with pytest.raises(InputError, match="the host name 'internal.test' resolves to"):
        fetch_bytes("https://internal.test/a.jpg", FetchPolicy())


@pytest.mark.usefixtures("no_connections")
def test_unresolvable_name(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, {})
    with pytest.raises(InputError, match="could not be resolved"):
        fetch_bytes("http://nowhere.test/", FetchPolicy())


def test_public_name_resolves_once_and_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = fake_dns(monkeypatch, {"cdn.test": ["8.8.8.8", "2606:4700:4700::1111"]})
    addresses = resolve_checked("cdn.test", 443, [])
    assert [str(a) for a in addresses] == ["8.8.8.8", "2606:4700:4700::1111"]
    assert asked == ["cdn.test"]


def test_connection_goes_to_the_checked_address(server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """DNS rebinding: the name is looked up exactly once; the request goes to that IP with the name as Host."""
    asked = fake_dns(monkeypatch, {"photos.test": ["127.0.0.1"]})
    server.routes["/me.jpg"] = body(b"pinned", "image/jpeg")
    fetched = fetch_bytes(server.url("/me.jpg", host="photos.test"), FetchPolicy(allow=["photos.test"]))
    assert fetched.data == b"pinned"
    assert fetched.url == server.url("/me.jpg", host="photos.test")
    assert asked == ["photos.test"]
    assert server.seen[0]["host"] == f"photos.test:{server.port}"


def test_redirect_hops_are_resolved_and_checked_again(server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> None:
    asked = fake_dns(monkeypatch, {"a.test": ["127.0.0.1"], "evil.test": ["10.9.9.9"]})
    server.routes["/r"] = redirect(f"http://evil.test:{server.port}/x")
    with pytest.raises(InputError, match="'evil.test' resolves to a private address"):
        fetch_bytes(server.url("/r", host="a.test"), FetchPolicy(allow=["a.test"]))
    assert asked == ["a.test", "evil.test"]
    assert len(server.seen) == 1


# --------------------------------------------------------------------------------------------------------
# HTTPS: connecting to the IP while TLS still verifies (and sends SNI for) the real name
# --------------------------------------------------------------------------------------------------------


@dataclass
class Pki:
    client: ssl.SSLContext
    server: ssl.SSLContext


def _make_pki(tmp_path: Path, name: str) -> Pki:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cadata=ca_cert.public_bytes(serialization.Encoding.PEM).decode())
    return Pki(client=client, server=server)


@pytest.mark.parametrize(("cert_name", "ok"), [("secure.test", True), ("someone-else.test", False)])
def test_https_sends_sni_and_verifies_the_real_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cert_name: str, ok: bool
) -> None:
    pki = _make_pki(tmp_path, cert_name)
    seen_sni: list[str | None] = []
    pki.server.sni_callback = lambda sock, name, ctx: seen_sni.append(name)  # type: ignore[assignment]
    fake_dns(monkeypatch, {"secure.test": ["127.0.0.1"]})
    for tls_server in _serve("https", pki.server):
        tls_server.routes["/a.png"] = body(b"over tls")
        policy = FetchPolicy(allow=["secure.test"], ssl_context=pki.client, timeout_s=5.0)
        url = tls_server.url("/a.png", host="secure.test")
        if ok:
            assert fetch_bytes(url, policy).data == b"over tls"
            assert tls_server.seen[0]["host"] == f"secure.test:{tls_server.port}"
        else:
            with pytest.raises(InputError, match="could not connect|failed"):
                fetch_bytes(url, policy)
            assert tls_server.seen == []
    assert seen_sni and seen_sni[0] == "secure.test"


# --------------------------------------------------------------------------------------------------------
# local_resolver and settings
# --------------------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("no_connections")
def test_local_resolver_answers_first() -> None:
    calls: list[str] = []

    def resolver(url: str) -> bytes | None:
        calls.append(url)
        return b"from disk" if url.startswith("http://127.0.0.1:8000/files/") else None

    policy = FetchPolicy(local_resolver=resolver)
    fetched = fetch_bytes("http://127.0.0.1:8000/files/tok/a.png", policy)
    assert fetched.data == b"from disk"
    assert fetched.content_type == "image/png"
    assert calls == ["http://127.0.0.1:8000/files/tok/a.png"]
    with pytest.raises(InputError, match="loopback"):  # not ours: the normal checks apply
        fetch_bytes("http://127.0.0.1:8000/admin", policy)


def test_local_resolver_falls_through_to_http(server: LocalServer) -> None:
    server.routes["/a"] = body(b"network")
    policy = FetchPolicy(allow=["127.0.0.1"], local_resolver=lambda url: None)
    assert fetch_bytes(server.url("/a"), policy).data == b"network"


def test_policy_from_settings() -> None:
    settings = Settings(fetch_allow="files.internal, 10.0.0.0/8", fetch_timeout_s=3, max_download_bytes=123)
    policy = FetchPolicy.from_settings(settings)
    assert policy.allow == ["files.internal", "10.0.0.0/8"]
    assert (policy.timeout_s, policy.max_bytes) == (3.0, 123)
    assert policy.max_data_uri_bytes == settings.max_data_uri_bytes


def test_input_error_carries_an_optional_field() -> None:
    error = InputError("bad", field="image_archive_url")
    assert isinstance(error, ValueError)
    assert (str(error), error.field) == ("bad", "image_archive_url")
    assert InputError("x").field is None
