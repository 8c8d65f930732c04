"""Device-side encoders, proven by decoding their output through the TCP connection."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetgate.protocols.teltonika.connection import TcpConnection
from fleetgate.protocols.teltonika.encoder import encode_avl_frame, encode_imei
from fleetgate.protocols.teltonika.events import AvlFrame, ImeiReceived, KeepAlive, TcpEvent
from fleetgate.protocols.teltonika.gprs import encode_gprs_frame
from fleetgate.protocols.teltonika.model import CODEC_7, CODEC_8, CODEC_8E, CODEC_16, AvlRecord
from tests.unit.teltonika.helpers import IMEI, frame, vector
from tests.unit.teltonika.strategies import AVL_CASES, avl_records, gprs_messages


def test_encode_imei_matches_the_documentation() -> None:
    v = vector("doc-imei-handshake")
    assert encode_imei(v["stated_expectations"]["imei"]) == bytes.fromhex(v["hex"])


@pytest.mark.parametrize("bad", ["", "12345x", "1" * 33, "١٢٣"])
def test_encode_imei_refuses_non_digits(bad: str) -> None:
    with pytest.raises(ValueError, match="IMEI"):
        encode_imei(bad)


def test_encode_avl_frame_matches_a_documented_frame() -> None:
    raw = frame("doc-c16-tcp-example")
    conn = TcpConnection()
    conn.receive_data(encode_imei(IMEI))
    (event,) = conn.receive_data(raw)
    assert isinstance(event, AvlFrame)
    assert encode_avl_frame(CODEC_16, event.records) == raw


def _cases() -> st.SearchStrategy[tuple[int, bool, list[AvlRecord]]]:
    return st.sampled_from(AVL_CASES).flatmap(
        lambda c: st.tuples(
            st.just(c[0]), st.just(c[1]), st.lists(avl_records(c[0], c[1]), min_size=1, max_size=4)
        )
    )


@settings(max_examples=120, deadline=None)
@given(_cases())
def test_frame_round_trip_through_the_connection(case: tuple[int, bool, list[AvlRecord]]) -> None:
    codec, io16_group, records = case
    raw = encode_avl_frame(codec, records, io16_group=io16_group)
    conn = TcpConnection(io16_group=io16_group)
    events = conn.receive_data(encode_imei(IMEI) + raw)
    assert events[0] == ImeiReceived(IMEI)
    (avl,) = events[1:]
    assert isinstance(avl, AvlFrame)
    assert avl.codec == codec
    assert avl.records == tuple(records)
    assert [r.io_groups for r in avl.records] == [r.io_groups for r in records]
    assert avl.raw == raw
    assert conn.ack(len(avl.records)) == len(records).to_bytes(4, "big")


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    parts = [encode_imei(IMEI)]
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["avl", "ping", "gprs", "imei"]))
        if kind == "avl":
            codec = draw(st.sampled_from([CODEC_7, CODEC_8, CODEC_8E, CODEC_16]))
            parts.append(encode_avl_frame(codec, draw(st.lists(avl_records(codec), max_size=3))))
        elif kind == "ping":
            parts.append(b"\xff")
        elif kind == "gprs":
            codec = draw(st.sampled_from([0x0C, 0x0D, 0x0E, 0x0F]))
            parts.append(encode_gprs_frame(draw(st.lists(gprs_messages(codec), min_size=1,
                                                         max_size=2))))
        else:
            parts.append(encode_imei(draw(st.from_regex(r"[0-9]{1,20}", fullmatch=True))))
    stream = b"".join(parts)
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    return stream, cuts


@settings(max_examples=150, deadline=None)
@given(streams())
def test_any_chunking_gives_the_same_events(case: tuple[bytes, list[int]]) -> None:
    stream, cuts = case
    whole = TcpConnection().receive_data(stream)
    conn = TcpConnection()
    chunked: list[TcpEvent] = []
    for start, stop in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        chunked.extend(conn.receive_data(stream[start:stop]))
    assert chunked == whole
    assert conn.buffered == 0
    assert not conn.closed
    assert all(isinstance(e, AvlFrame | ImeiReceived | KeepAlive) or
               type(e).__name__ == "GprsFrame" for e in whole)
