"""Tesla fleet-telemetry: a drop-in for Tesla's Go ``fleet-telemetry`` server.

The protocol core here is sans-I/O and usable as a library, without a server:

* :mod:`.envelope` — the flatbuffers frame (``parse_envelope``, ``build_ack``,
  ``build_error``, ``build_stream_envelope``);
* :mod:`.identity` — VIN and client type from a verified client certificate;
* :mod:`.transforms` — the per-topic protobuf fix-ups the reference applies;
* :mod:`.natural` — fleetgate's ``Record.data``; :mod:`.protojson` — the reference's JSON;
* :mod:`.core` — ``FrameProcessor``: one frame in, Records and replies out;
* :mod:`.proto` — generated protobuf code (committed; regenerate with
  ``scripts/gen_tesla_protos.sh``).

Decode a captured frame::

    from fleetgate.protocols.tesla import decode_frame_to_json
    decoded = decode_frame_to_json(frame_bytes, vin="5YJ3E1EA7KF000000")
    decoded["data"]      # {"VehicleSpeed": 42.0, "Location": {...}, ...}
    decoded["payload"]   # the reference server's protojson of the transformed payload

Process frames like the server does (the I/O around it — TLS, WebSocket, pipeline — is in
:mod:`fleetgate.listeners.tesla`)::

    processor = FrameProcessor(identity, configured_topics=frozenset({"V"}), socket_id=uuid)
    result = processor.process(frame, received_at=now_ms)
    # send result.immediate_replies; dispatch result.records; then send result.ack_reply

The forms sinks need (log lines, MQTT messages) are in :mod:`fleetgate.forms`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fleetgate.protocols.tesla.core import (
        FrameProcessor,
        FrameResult,
        connectivity_record,
        decode_frame_to_json,
        peek_topic,
    )
    from fleetgate.protocols.tesla.envelope import (
        Envelope,
        EnvelopeError,
        StreamMessage,
        build_ack,
        build_error,
        build_stream_envelope,
        parse_envelope,
    )
    from fleetgate.protocols.tesla.identity import (
        IdentityError,
        VehicleIdentity,
        identity_from_certificate,
    )
    from fleetgate.protocols.tesla.limits import MAX_FRAME_BYTES
    from fleetgate.protocols.tesla.natural import natural_data
    from fleetgate.protocols.tesla.protojson import protojson_dict
    from fleetgate.protocols.tesla.transforms import (
        ImpossibleTimeError,
        PayloadError,
        transform_payload,
    )

# The names below are loaded from their module on first use: importing one submodule (the
# listener needs a few) must not load protobuf, flatbuffers and cryptography at start.
_SOURCES = {
    "MAX_FRAME_BYTES": "limits",
    **dict.fromkeys(
        ("FrameProcessor", "FrameResult", "connectivity_record",
         "decode_frame_to_json", "peek_topic"), "core"),
    **dict.fromkeys(
        ("Envelope", "EnvelopeError", "StreamMessage", "build_ack", "build_error",
         "build_stream_envelope", "parse_envelope"), "envelope"),
    **dict.fromkeys(("IdentityError", "VehicleIdentity", "identity_from_certificate"),
                    "identity"),
    "natural_data": "natural",
    "protojson_dict": "protojson",
    **dict.fromkeys(("ImpossibleTimeError", "PayloadError", "transform_payload"),
                    "transforms"),
}


def __getattr__(name: str) -> Any:
    module = _SOURCES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "MAX_FRAME_BYTES",
    "Envelope",
    "EnvelopeError",
    "FrameProcessor",
    "FrameResult",
    "IdentityError",
    "ImpossibleTimeError",
    "PayloadError",
    "StreamMessage",
    "VehicleIdentity",
    "build_ack",
    "build_error",
    "build_stream_envelope",
    "connectivity_record",
    "decode_frame_to_json",
    "identity_from_certificate",
    "natural_data",
    "parse_envelope",
    "peek_topic",
    "protojson_dict",
    "transform_payload",
]
