"""One gateway message (topic, payload bytes, the time it arrived) → a record or a refusal.

Checks, in this order, each with its refusal reason:

1. the topic is in the topic map (``unknown_topic``);
2. the payload is a bare value or a JSON object with ``value`` (``bad_payload``);
3. for a gateway with an HMAC key: the payload is signed (``missing_hmac``) and the MAC
   matches (``bad_hmac``); a gateway without a key may sign or not, its MAC is not checked;
4. with ``max_drift_ms`` set, a message carrying ``ts`` was sent no further from
   ``received_at`` than that, either way (``drift``);
5. the value fits its signal (``bad_payload``).

The record: ``source`` ``mqtt``, ``device_id`` the gateway id, ``topic`` the signal group
(engine, vehicle, diagnostics, security, gateway), ``created_at`` the device time (or the
arrival time when the message has no ``ts``), ``raw`` the payload bytes, and ``data``::

    {"signal": "rpm", "value": 3500, "unit": "rpm", "device_time": 1700000000000,
     "seq": 7, "signed": true}

``unit`` is what the gateway sent, else the signal's default; ``device_time`` and ``seq``
are null when the message did not carry them; ``signed`` says the HMAC was verified.
No clock is read here: the caller passes ``received_at``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from fleetgate.protocols.mqtt.payload import PayloadError, parse_payload
from fleetgate.protocols.mqtt.signals import SignalValueError
from fleetgate.protocols.mqtt.signing import verify
from fleetgate.protocols.mqtt.topics import DEFAULT_ROOT, SignalTopic, TopicError, parse_topic
from fleetgate.records import SOURCE_MQTT, Record, new_record

# Parsed topics are cached (a fleet has gateways x 15 of them); the cache is emptied when
# it grows past this, so a flood of made-up topics cannot grow memory.
TOPIC_CACHE_SIZE: Final = 65_536


class RefusalReason(enum.StrEnum):
    """Why a message was dropped (a metric label, so a small fixed set)."""

    UNKNOWN_TOPIC = "unknown_topic"
    BAD_PAYLOAD = "bad_payload"
    MISSING_HMAC = "missing_hmac"
    BAD_HMAC = "bad_hmac"
    DRIFT = "drift"


@dataclass(frozen=True, slots=True)
class Refusal:
    """A dropped message: the reason, the gateway (when the topic names one), evidence."""

    reason: RefusalReason
    gateway_id: str | None
    topic: str
    detail: str


class GatewayDecoder:
    """Decodes the messages of every gateway under one topic root."""

    def __init__(
        self,
        *,
        root: str = DEFAULT_ROOT,
        hmac_keys: Mapping[str, bytes] | None = None,
        max_drift_ms: int | None = None,
    ) -> None:
        self.root = root
        self.hmac_keys = dict(hmac_keys or {})
        self.max_drift_ms = max_drift_ms
        self._topics: dict[str, SignalTopic | TopicError] = {}

    def _topic(self, topic: str) -> SignalTopic | TopicError:
        parsed = self._topics.get(topic)
        if parsed is None:
            try:
                parsed = parse_topic(topic, self.root)
            except TopicError as exc:
                parsed = exc
            if len(self._topics) >= TOPIC_CACHE_SIZE:
                self._topics.clear()
            self._topics[topic] = parsed
        return parsed

    def decode(self, topic: str, payload: bytes, received_at: int) -> Record | Refusal:
        """The record for one message, or why it was refused. Never raises."""
        where = self._topic(topic)
        if isinstance(where, TopicError):
            return Refusal(RefusalReason.UNKNOWN_TOPIC, where.gateway_id, topic, str(where))
        gateway_id, signal = where.gateway_id, where.signal
        try:
            parsed = parse_payload(payload)
        except PayloadError as exc:
            return Refusal(RefusalReason.BAD_PAYLOAD, gateway_id, topic, str(exc))
        key = self.hmac_keys.get(gateway_id)
        signed = False
        if key is not None:
            if parsed.hmac is None or parsed.fields is None:
                return Refusal(
                    RefusalReason.MISSING_HMAC,
                    gateway_id,
                    topic,
                    "gateway has an HMAC key; the message is not signed",
                )
            if not verify(key, topic, parsed.fields, parsed.hmac):
                return Refusal(
                    RefusalReason.BAD_HMAC, gateway_id, topic, "HMAC does not match the message"
                )
            signed = True
        ts = parsed.ts
        if ts is not None and self.max_drift_ms is not None:
            drift = received_at - ts
            if abs(drift) > self.max_drift_ms:
                return Refusal(
                    RefusalReason.DRIFT,
                    gateway_id,
                    topic,
                    f"device time is {drift / 1000:+.3f} s from server time "
                    f"(limit {self.max_drift_ms / 1000:g} s)",
                )
        try:
            value = signal.coerce(parsed.value)
        except SignalValueError as exc:
            return Refusal(RefusalReason.BAD_PAYLOAD, gateway_id, topic, str(exc))
        data = {
            "signal": signal.name,
            "value": value,
            "unit": parsed.unit if parsed.unit is not None else signal.unit,
            "device_time": ts,
            "seq": parsed.seq,
            "signed": signed,
        }
        created_at = ts if ts is not None else received_at
        return new_record(
            SOURCE_MQTT, gateway_id, signal.group, created_at, received_at, data, payload
        )
