"""One message of the record log back into a :class:`~fleetgate.records.Record`.

The sinks that feed the shared log (``kafka``, ``nats``) send each record as its wire
payload (:func:`fleetgate.forms.wire_payload`) with Tesla's seven metadata keys and the
record's id as headers (:meth:`fleetgate.sinks.base.Sink.headers`):

* Teltonika and MQTT records (and any source without a form of its own): the record's one
  JSON form, which names source, device, topic and both times;
* Tesla records: the vehicle's transformed protobuf of the topic (``txtype``), or its
  protojson with ``transmit_decoded_records``; device and receive time come from the
  ``vin`` and ``receivedat`` headers and the rest from the payload
  (:mod:`fleetgate.protocols.tesla.dispatched`).

The message's own topic and key (``<namespace>_<topic>``, the device id) stand in for
missing headers. A message none of these forms reads raises :class:`LogMessageError`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import orjson

from fleetgate.protocols.tesla.dispatched import record_from_dispatch, record_from_protojson
from fleetgate.protocols.tesla.transforms import MESSAGE_TYPES, PayloadError
from fleetgate.records import Record, new_record, now_ms, parse_rfc3339_ms

RECORD_ID_HEADER = "record_id"
_JSON_KEYS = ("source", "device_id", "topic", "created_at", "received_at", "data")


class LogMessageError(ValueError):
    """A log message that is no record fleetgate wrote (or a damaged one)."""


def record_from_message(
    value: bytes, headers: Mapping[str, str], topic: str = "", key: str = ""
) -> Record:
    """The record a sink sent as ``value`` with ``headers`` (see the module docstring)."""
    record_topic = headers.get("txtype") or topic
    device_id = headers.get("vin") or key
    received_at = _received_at(headers)
    txid = headers.get("txid", "")
    client_version = headers.get("device_client_version", "")
    if value[:1] == b"{":
        try:
            document = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise LogMessageError(f"not JSON: {exc}") from exc
        if isinstance(document, dict) and all(name in document for name in _JSON_KEYS):
            return _from_record_json(document, txid, client_version)
        if record_topic in MESSAGE_TYPES:
            try:
                return record_from_protojson(
                    record_topic, value, device_id, received_at, txid, client_version
                )
            except PayloadError as exc:
                raise LogMessageError(str(exc)) from exc
        raise LogMessageError("JSON that is not a record's JSON form")
    if record_topic not in MESSAGE_TYPES:
        raise LogMessageError(f"topic {record_topic!r}: not JSON and not a Tesla topic")
    if not device_id:
        raise LogMessageError("a Tesla payload without a vin header or message key")
    try:
        return record_from_dispatch(
            record_topic, value, device_id, received_at, txid, client_version
        )
    except PayloadError as exc:
        raise LogMessageError(str(exc)) from exc


def _received_at(headers: Mapping[str, str]) -> int:
    text = headers.get("receivedat", "")
    return int(text) if text.isdigit() else now_ms()


def _from_record_json(document: dict[str, Any], txid: str, client_version: str) -> Record:
    source, device_id, topic = document["source"], document["device_id"], document["topic"]
    data = document["data"]
    if not (isinstance(source, str) and isinstance(device_id, str) and isinstance(topic, str)):
        raise LogMessageError("source, device_id and topic must be text")
    if not isinstance(data, dict):
        raise LogMessageError("data must be an object")
    try:
        created_at = _time_ms(str(document["created_at"]))
        received_at = _time_ms(str(document["received_at"]))
    except ValueError as exc:
        raise LogMessageError(f"a time that is not RFC 3339: {exc}") from exc
    meta = (
        {"txid": txid, "device_client_version": client_version}
        if txid or client_version
        else None
    )
    return new_record(source, device_id, topic, created_at, received_at, data, b"", meta)


@functools.lru_cache(maxsize=4096)
def _epoch_seconds(text: str) -> int:
    return parse_rfc3339_ms(text + "Z") // 1000


def _time_ms(text: str) -> int:
    """RFC 3339 text → epoch ms; the record JSON form's own shape
    (``2026-01-02T03:04:05.678Z``) quickly, its seconds cached (a stream's records share
    them), anything else by :func:`parse_rfc3339_ms`."""
    if len(text) == 24 and text[19] == "." and text[23] == "Z" and text[20:23].isdigit():
        return _epoch_seconds(text[:19]) * 1000 + int(text[20:23])
    return parse_rfc3339_ms(text)


def header_map(headers: Any) -> dict[str, str]:
    """Headers as text: a list of (name, bytes) pairs (Kafka) or a mapping (NATS)."""
    if not headers:
        return {}
    if isinstance(headers, list):
        try:
            return {name: raw.decode() for name, raw in headers if raw is not None}
        except (UnicodeDecodeError, AttributeError):
            pass  # not UTF-8, or not bytes: the careful way below
    items = headers.items() if isinstance(headers, Mapping) else headers
    found: dict[str, str] = {}
    for name, raw in items:
        if raw is None:
            continue
        found[str(name)] = (
            raw.decode("utf-8", "replace") if isinstance(raw, bytes | bytearray) else str(raw)
        )
    return found
