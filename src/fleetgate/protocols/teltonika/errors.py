"""Errors raised by the Teltonika codecs.

Hierarchy::

    ValueError
     └── TeltonikaDecodeError     the bytes are not a valid Teltonika frame / body
          └── ImpossibleValueError  well framed, but a value cannot be true: a device time
                                    of 2**63 ms or past 9999-12-31 (RFC 3339's last
                                    year), or GH3000 coordinates that are not finite

Only the pure decoders raise them (``decode_avl_body``, ``decode_gprs_body``,
``decode_frame``, ``decode_udp_datagram``). The sans-I/O :class:`~.connection.TcpConnection`
never raises on peer input: an ``ImpossibleValueError`` becomes a ``FrameRefused`` event
(discard, no ack, keep the connection, like a CRC mismatch), any other decode error a
``ProtocolViolation``. Encoders raise plain ``ValueError`` when *our caller* hands them
values the wire format cannot carry.
"""

from __future__ import annotations


class TeltonikaDecodeError(ValueError):
    """The peer sent bytes that do not decode; ``reason`` says why, in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ImpossibleValueError(TeltonikaDecodeError):
    """A well-framed packet carries a value that cannot be true; the packet is refused.

    A sink could never store it (a year past 9999 overflows every time type), so it is
    refused at the door, with no ack: the device keeps the data and ``reason`` says why.
    """
