"""CAN-bus gateways over MQTT: the pure, sans-I/O core (no sockets, no clock).

::

    from fleetgate.protocols.mqtt import GatewayDecoder, Refusal

    decoder = GatewayDecoder(hmac_keys={"gw-001": b"secret"}, max_drift_ms=300_000)
    result = decoder.decode("vehicles/gw-001/engine/rpm", b"3500", received_at=now_ms)
    if isinstance(result, Refusal):
        print(result.reason, result.gateway_id, result.detail)
    else:
        print(result.device_id, result.topic, result.data)   # gw-001 engine {...}

Modules: ``signals`` (the signal table and typed values), ``topics`` (the topic map),
``payload`` (bare values and JSON objects, parse and format), ``signing`` (the HMAC's
canonical form), ``decoder`` (message → record or refusal). The subscriber that feeds it
is :mod:`fleetgate.listeners.mqtt`; the gateway simulator :mod:`fleetgate.sim.can_gateway`.
"""

from __future__ import annotations

from fleetgate.protocols.mqtt.decoder import GatewayDecoder, Refusal, RefusalReason
from fleetgate.protocols.mqtt.payload import (
    MAX_PAYLOAD_BYTES,
    Payload,
    PayloadError,
    format_bare,
    format_payload,
    parse_payload,
)
from fleetgate.protocols.mqtt.signals import GROUPS, SIGNALS, Signal, SignalValueError, signal_for
from fleetgate.protocols.mqtt.signing import canonical_bytes, key_bytes, sign, verify
from fleetgate.protocols.mqtt.topics import (
    DEFAULT_ROOT,
    SignalTopic,
    TopicError,
    parse_topic,
    signal_topic,
    valid_gateway_id,
)

__all__ = [
    "DEFAULT_ROOT",
    "GROUPS",
    "MAX_PAYLOAD_BYTES",
    "SIGNALS",
    "GatewayDecoder",
    "Payload",
    "PayloadError",
    "Refusal",
    "RefusalReason",
    "Signal",
    "SignalTopic",
    "SignalValueError",
    "TopicError",
    "canonical_bytes",
    "format_bare",
    "format_payload",
    "key_bytes",
    "parse_payload",
    "parse_topic",
    "sign",
    "signal_for",
    "signal_topic",
    "valid_gateway_id",
    "verify",
]
