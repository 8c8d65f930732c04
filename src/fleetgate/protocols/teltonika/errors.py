"""Errors raised by the Teltonika codecs.

Hierarchy::

    ValueError
     └── TeltonikaDecodeError   the bytes are not a valid Teltonika frame / body

Only the pure decoders raise it (``decode_avl_body``, ``decode_gprs_body``, ``decode_frame``,
``decode_udp_datagram``). The sans-I/O :class:`~.connection.TcpConnection` never raises on
peer input: it turns these errors into ``ProtocolViolation`` events. Encoders raise plain
``ValueError`` when *our caller* hands them values the wire format cannot carry.
"""

from __future__ import annotations


class TeltonikaDecodeError(ValueError):
    """The peer sent bytes that do not decode; ``reason`` says why, in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
