"""``inputs.data_uri``: strict base64 in one pass for well-formed payloads, the tolerant forms still accepted, and
exactly the same answers as the tolerant decoder it replaced (regex clean-up, then ``b64decode(validate=True)``)."""

from __future__ import annotations

import base64
import binascii
import random
import re
from urllib.parse import unquote

import pytest

from photomaker_server.inputs import data_uri
from photomaker_server.inputs.data_uri import decode_data_uri, is_data_uri
from photomaker_server.inputs.errors import InputError

PAYLOAD = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 3


def _reference(payload: str) -> bytes | None:
    """The rules as they were written before (several passes): None where they refuse."""
    if "%" in payload:
        payload = unquote(payload)
    compact = re.sub(r"\s+", "", payload)
    if "-" in compact or "_" in compact:
        compact = compact.replace("-", "+").replace("_", "/")
    compact += "=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        return None


def _ours(payload: str) -> bytes | None:
    try:
        return data_uri._decode_base64(payload)
    except InputError:
        return None


def test_well_formed_base64_is_decoded_in_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = binascii.a2b_base64

    def counting(data: str, *, strict_mode: bool = False) -> bytes:
        calls.append(len(data))
        assert strict_mode, "data URIs are decoded in strict mode"
        return real(data, strict_mode=strict_mode)

    monkeypatch.setattr(data_uri.binascii, "a2b_base64", counting)
    encoded = base64.b64encode(PAYLOAD).decode()
    decoded = decode_data_uri("data:image/png;base64," + encoded, 1 << 20)
    assert decoded.data == PAYLOAD and decoded.content_type == "image/png"
    assert calls == [len(encoded)]  # no clean-up copies, no second attempt


@pytest.mark.parametrize("spelling", [
    lambda e: "\r\n".join(e[i:i + 76] for i in range(0, len(e), 76)),  # MIME line breaks
    lambda e: "  " + e + "\n",
    lambda e: e.replace("+", "-").replace("/", "_").rstrip("="),  # URL-safe, unpadded
    lambda e: e.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D"),  # percent-encoded
    lambda e: e[:40] + "\u2003" + e[40:],  # a Unicode space (str.split and \s agree on these)
    lambda e: e.rstrip("="),
])
def test_tolerated_spellings_decode_to_the_same_bytes(spelling) -> None:  # noqa: ANN001
    encoded = base64.b64encode(PAYLOAD + b"x").decode()  # not a multiple of 3: the payload has padding
    assert decode_data_uri("data:image/png;base64," + spelling(encoded), 1 << 20).data == PAYLOAD + b"x"


@pytest.mark.parametrize("payload", [
    "QUJD$", "QU JD*", "@@@@not-base64@@@@", "====", "=QUJD", "QQ==QQ==", "QQ===", "QUJD=QUJD", "Q",
    "QUJDQ", "QUJ\u00e9", "QUJD\x00", "%ZZ%ZZ",
])
def test_what_is_not_base64_is_refused(payload: str) -> None:
    with pytest.raises(InputError, match="not valid base64"):
        decode_data_uri("data:image/png;base64," + payload, 1 << 20)


def test_the_same_answers_as_the_tolerant_decoder_it_replaced() -> None:
    rng = random.Random(14)
    alphabet = "ABCQUJDabc019+/=-_%2B3D \n\t\x1c\xa0\u00e9\u2003"
    cases = ["", "====", "Q===", "QQ=", "QUJ=", "QUI=", "QU=J", "QUJD\n", "QUJD%3D", "QUJD%"]
    cases += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(20_000)]
    for _ in range(500):
        data = rng.randbytes(rng.randint(0, 40))
        encoded = base64.b64encode(data).decode()
        cases += [encoded, encoded.rstrip("="), base64.urlsafe_b64encode(data).decode(), encoded[:-1], encoded[1:]]
    differing = [case for case in cases if _ours(case) != _reference(case)]
    assert differing == []


def test_other_forms_and_refusals() -> None:
    assert decode_data_uri("data:text/plain,a%20b", 100).data == b"a b"
    assert decode_data_uri("data:;base64,QUJD", 100).content_type is None
    with pytest.raises(InputError, match="malformed"):
        decode_data_uri("data:image/png;base64", 100)
    with pytest.raises(InputError, match="empty"):
        decode_data_uri("data:image/png;base64,", 100)
    with pytest.raises(InputError, match="holds more than 3 bytes"):
        decode_data_uri("data:;base64,QUJDRA==", 3)


def test_is_data_uri_looks_at_the_scheme_only() -> None:
    assert is_data_uri("DATA:image/png;base64,QUJD") and is_data_uri("data:,x")
    assert not is_data_uri(" data:,x") and not is_data_uri("https://example.com/data:") and not is_data_uri(None)
