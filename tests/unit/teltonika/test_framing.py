"""Stream framing: frame kinds and lengths, early refusals, envelope helpers."""

from __future__ import annotations

import pytest

from fleetgate.protocols.teltonika.errors import TeltonikaDecodeError
from fleetgate.protocols.teltonika.framing import (
    DATA,
    IMEI,
    KEEPALIVE,
    NEED_MORE,
    evidence,
    frame_crc,
    next_frame,
    parse_imei,
    wrap_tcp,
)
from tests.unit.teltonika.helpers import IMEI_FRAME, frame

DOC_C8 = frame("doc-c8-tcp-example1")


def cut(data: bytes, established: bool = True, max_frame: int = 65536) -> tuple[int, int]:
    return next_frame(data, 0, len(data), established=established, max_frame_bytes=max_frame)


def test_kinds() -> None:
    assert cut(b"") == (NEED_MORE, 0)
    assert cut(b"\xff\x00") == (KEEPALIVE, 1)
    assert cut(IMEI_FRAME, established=False) == (IMEI, 17)
    assert cut(IMEI_FRAME + DOC_C8) == (IMEI, 17)
    assert cut(DOC_C8 + b"\xff") == (DATA, len(DOC_C8))


@pytest.mark.parametrize("n", range(len(DOC_C8)))
def test_every_prefix_needs_more(n: int) -> None:
    assert cut(DOC_C8[:n]) == (NEED_MORE, 0)


def test_offset_is_honoured() -> None:
    data = b"junk" + DOC_C8
    assert next_frame(data, 4, len(data), established=True) == (DATA, len(DOC_C8))


@pytest.mark.parametrize(
    ("data", "established", "message"),
    [
        (b"\x05", True, "cannot start a frame"),
        (b"\x00\x21", False, "IMEI length 33"),
        (b"\x00\x00\x00", False, "before the IMEI handshake"),
        (b"\x00\x00\x01", True, "preamble"),
        (b"\x00\x00\x00\x01", True, "preamble"),
        (b"\x00\x00\x00\x00\x00\x00\x00\x02", True, "data length 2"),
        (b"\x00\x00\x00\x00\x00\x01\x00\x01", True, "data length 65537"),
    ],
)
def test_refusals(data: bytes, established: bool, message: str) -> None:
    with pytest.raises(TeltonikaDecodeError, match=message):
        cut(data, established)


def test_parse_imei() -> None:
    assert parse_imei(IMEI_FRAME) == "123456789012345"
    with pytest.raises(TeltonikaDecodeError, match="length field"):
        parse_imei(IMEI_FRAME + b"1")
    with pytest.raises(TeltonikaDecodeError, match="outside"):
        parse_imei(b"\x00\x00\x31")
    with pytest.raises(TeltonikaDecodeError, match="at least 3"):
        parse_imei(b"\x00\x01")


def test_envelope_helpers() -> None:
    assert wrap_tcp(DOC_C8[8:-4]) == DOC_C8
    assert frame_crc(DOC_C8) == (0xC7CF, 0xC7CF)
    assert evidence(b"\x01\x02") == "0102"
    assert evidence(bytes(100), limit=4) == "00000000...(+96 bytes)"
