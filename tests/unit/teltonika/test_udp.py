"""UDP datagrams: documented examples, acks, strict refusals."""

from __future__ import annotations

from typing import Any

import pytest

from fleetgate.protocols.teltonika.encoder import encode_avl_frame
from fleetgate.protocols.teltonika.errors import TeltonikaDecodeError
from fleetgate.protocols.teltonika.model import CODEC_8, CODEC_8E, CODEC_16, AvlRecord
from fleetgate.protocols.teltonika.udp import (
    decode_udp_datagram,
    encode_udp_ack,
    encode_udp_datagram,
)
from tests.unit.teltonika.helpers import check_record_invariants, io_json, select, vector

AVL = (CODEC_8, CODEC_8E, CODEC_16)
GOOD = select(transport="udp", codecs=AVL, integrity_error=False)


@pytest.mark.parametrize("v", GOOD, ids=[v["id"] for v in GOOD])
def test_documented_datagrams(v: dict[str, Any]) -> None:
    raw = bytes.fromhex(v["hex"])
    datagram = decode_udp_datagram(raw)
    assert datagram.codec == v["codec"]
    assert datagram.raw == raw
    derived = v["derived_expectations"]
    assert len(datagram.records) == derived["record_count"]
    assert datagram.records[0].timestamp_ms == derived["first_record"]["timestamp_ms"]
    assert io_json(datagram.records[0].io) == derived["first_record"]["io"]
    stated = v["stated_expectations"]
    if "imei" in stated:
        assert datagram.imei == stated["imei"]
        assert datagram.avl_packet_id == stated["avl_packet_id"]
        assert datagram.packet_id == stated["packet_id"]
    for rec in datagram.records:
        check_record_invariants(rec)
    ack = encode_udp_ack(datagram.packet_id, datagram.avl_packet_id, len(datagram.records))
    assert ack.hex() == v["expected_reply_hex"]


def test_ack_examples() -> None:
    v = vector("doc-udp-ack-generic-two-records")
    assert encode_udp_ack(0xABCD, 0xDD, 2).hex() == v["hex"]


def test_codec_byte_erratum_is_refused() -> None:
    (v,) = select(transport="udp", codecs=AVL, integrity_error=True)
    with pytest.raises(TeltonikaDecodeError):
        decode_udp_datagram(bytes.fromhex(v["hex"]))


def test_refusals() -> None:
    good = bytes.fromhex(GOOD[0]["hex"])
    with pytest.raises(TeltonikaDecodeError, match="length field"):
        decode_udp_datagram(good + b"\x00")
    with pytest.raises(TeltonikaDecodeError, match="too short"):
        decode_udp_datagram(good[:5])
    bad_imei = good[:8] + b"x" + good[9:]
    with pytest.raises(TeltonikaDecodeError, match="ASCII digits"):
        decode_udp_datagram(bad_imei)
    gprs = encode_udp_datagram("1", CODEC_8, [])
    with pytest.raises(TeltonikaDecodeError, match="not an AVL codec"):
        decode_udp_datagram(gprs[:9] + b"\x0c" + gprs[10:])


def test_round_trip() -> None:
    rec = AvlRecord(1_560_407_006_000, 1, 25.5, 54.25, 100, 180, 9, 60, 1, {21: 3, 1: 1, 66: 23996})
    raw = encode_udp_datagram("352093086403655", CODEC_8E, [rec], avl_packet_id=7)
    datagram = decode_udp_datagram(raw)
    assert (datagram.imei, datagram.avl_packet_id, datagram.packet_id) == (
        "352093086403655", 7, 0xCAFE,
    )
    assert datagram.records == (rec,)
    # same records body as the TCP encoder
    assert encode_avl_frame(CODEC_8E, [rec])[8:-4] == raw[2 + 6 + 15 :]
