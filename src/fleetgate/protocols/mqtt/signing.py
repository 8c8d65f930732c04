"""HMAC-SHA256 of a gateway message: the exact bytes that are signed.

A signed payload is a JSON object with an ``hmac`` member. The MAC covers the topic and
every *other* member of the object, in this canonical form::

    <topic as UTF-8> 0x0A <RFC 8785 (JCS) serialisation of the object without "hmac">

RFC 8785 (JSON Canonicalization Scheme) sorts members by key, drops all whitespace and
writes numbers the way ECMAScript does (``80.0`` → ``80``, ``0.5`` → ``0.5``, ``1e21`` →
``1e+21``), so a device that builds its JSON with snprintf and a server that parsed it
agree on the bytes. For the integers and short strings gateways send, JCS is simply
"sorted keys, no spaces"::

    topic    vehicles/gw-001/engine/rpm
    payload  {"value": 3500, "ts": 1700000000000, "seq": 7, "unit": "rpm", "hmac": "..."}
    signed   b'vehicles/gw-001/engine/rpm\\n{"seq":7,"ts":1700000000000,"unit":"rpm","value":3500}'
    hmac     lower-case hex of HMAC-SHA256(key, signed), 64 characters (upper case accepted)

The topic is part of the signed bytes so a captured message cannot be replayed under
another signal or another gateway's topic; ``ts`` (checked against ``max_drift_s``) and
``seq`` limit replays in time. Keys are per gateway: UTF-8 text, or ``hex:<hex digits>``
for binary keys (:func:`key_bytes`).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any, Final

import rfc8785

HMAC_FIELD: Final = "hmac"
HMAC_HEX_LENGTH: Final = 64


class SigningError(ValueError):
    """The object cannot be put in canonical form (a number JSON cannot carry exactly)."""


def key_bytes(key: str) -> bytes:
    """A configured key: ``hex:<digits>`` for binary keys, anything else as UTF-8 text."""
    if key.startswith("hex:"):
        return bytes.fromhex(key[4:])
    return key.encode()


def canonical_bytes(topic: str, fields: Mapping[str, Any]) -> bytes:
    """The bytes the MAC covers: topic, a newline, JCS of ``fields`` without ``hmac``."""
    unsigned = {name: value for name, value in fields.items() if name != HMAC_FIELD}
    try:
        body = rfc8785.dumps(unsigned)
    except rfc8785.CanonicalizationError as exc:
        raise SigningError(f"cannot canonicalise: {exc}") from exc
    return topic.encode() + b"\n" + body


def sign(key: bytes, topic: str, fields: Mapping[str, Any]) -> str:
    """Lower-case hex HMAC-SHA256 of ``fields`` published on ``topic``."""
    return hmac.new(key, canonical_bytes(topic, fields), hashlib.sha256).hexdigest()


def verify(key: bytes, topic: str, fields: Mapping[str, Any], mac: str) -> bool:
    """True when ``mac`` is the HMAC of ``fields`` on ``topic`` (compared in constant time)."""
    if len(mac) != HMAC_HEX_LENGTH or not mac.isascii():
        return False
    try:
        expected = sign(key, topic, fields)
    except SigningError:
        return False
    return hmac.compare_digest(expected, mac.lower())
