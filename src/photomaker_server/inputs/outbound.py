"""POSTing to user-given URLs (webhooks) under the same SSRF rules as fetching: resolve once, refuse non-global
addresses unless allow-listed, connect to the checked address, never follow redirects."""

from __future__ import annotations

import ssl
from collections.abc import Mapping

import httpx

from .errors import InputError
from .fetch import FetchPolicy, _parse_http_url, _request_url, _scheme, parse_literal_ip, resolve_checked


def safe_post(url: str, body: bytes, headers: Mapping[str, str], timeout: float, policy: FetchPolicy) -> int:
    """POST ``body``; returns the HTTP status. Raises InputError when the URL is refused."""
    if _scheme(url) not in ("http", "https"):
        raise InputError("webhook URLs must be http(s)")
    target = _parse_http_url(url)
    address = resolve_checked(target.host, target.port, policy.allow)[0]
    extensions = {"sni_hostname": target.host} if target.scheme == "https" and parse_literal_ip(target.host) is None else {}
    verify: ssl.SSLContext | bool = policy.ssl_context if policy.ssl_context is not None else True
    with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False, verify=verify) as client:
        response = client.post(
            _request_url(target, address),
            content=body,
            headers={**headers, "Host": target.host_header, "Content-Type": "application/json"},
            extensions=extensions,
        )
        return response.status_code
