"""The vehicle socket's frame loop: binary messages over the limit are skipped, not fatal.

Sans-I/O: bytes go into the websockets protocol, frames and close codes come out. The
same loop runs over real sockets in tests/integration/tesla/test_oversize_frames.py.
"""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import BINARY, CLOSE, CONT, PING, PONG, TEXT, Close, CloseCode, Frame
from websockets.protocol import OPEN
from websockets.server import ServerProtocol

from fleetgate.listeners.tesla.oversize import skip_oversize_messages

LIMIT = 1000
CHUNK = 64 * 1024


def protocol(limit: int = LIMIT) -> ServerProtocol:
    p = ServerProtocol(state=OPEN, max_size=limit)  # the handshake is done
    skip_oversize_messages(p)
    return p


def client_frame(opcode: int, data: bytes, *, fin: bool = True) -> bytes:
    """A masked client frame, as a vehicle sends it."""
    return Frame(opcode, data, fin).serialize(mask=True, extensions=[])


def header(opcode: int, length: int, *, fin: bool = True) -> bytes:
    """A masked client frame header for ``length`` payload bytes (payload sent separately)."""
    head1 = (0x80 if fin else 0) | opcode
    return struct.pack("!BBQ", head1, 0x80 | 127, length) + os.urandom(4)


def feed(p: ServerProtocol, data: bytes, chunk: int = CHUNK) -> int:
    """Feed ``data`` in chunks; the largest reader buffer seen after any chunk."""
    peak = 0
    for at in range(0, len(data), chunk):
        p.receive_data(data[at : at + chunk])
        peak = max(peak, len(p.reader.buffer))
    return peak


def messages(p: ServerProtocol) -> list[tuple[str, bytes, bool]]:
    return [(f.opcode.name, bytes(f.data), f.fin) for f in p.events_received()]


def sizes(events: list[object]) -> list[int | None]:
    return [getattr(e, "size", None) for e in events]


def test_a_message_within_the_limit_is_delivered() -> None:
    p = protocol()
    feed(p, client_frame(BINARY, b"x" * LIMIT))
    assert messages(p) == [("BINARY", b"x" * LIMIT, True)]
    assert p.close_sent is None


def test_one_oversize_frame_becomes_one_empty_marker_and_the_next_frame_is_read() -> None:
    p = protocol()
    feed(p, client_frame(BINARY, b"x" * (LIMIT + 1)) + client_frame(BINARY, b"after"))
    events = p.events_received()
    assert [(e.opcode, bytes(e.data), e.fin) for e in events] == [
        (BINARY, b"", True),
        (BINARY, b"after", True),
    ]
    assert sizes(events) == [LIMIT + 1, None]
    assert p.close_sent is None  # no 1009: the socket stays open


def test_a_huge_frame_streams_past_in_bounded_memory() -> None:
    # 10 MiB arrive in 64 KiB reads; nothing is kept beyond the read being looked at.
    p = protocol()
    size = 10 * 1024 * 1024
    p.receive_data(header(BINARY, size))
    peak = 0
    for _ in range(size // CHUNK):
        p.receive_data(bytes(CHUNK))
        peak = max(peak, len(p.reader.buffer))
    assert peak == 0
    assert sizes(p.events_received()) == [size]
    assert p.close_sent is None


def test_declared_lengths_up_to_2_to_the_63_are_skipped_as_they_arrive() -> None:
    p = protocol()
    p.receive_data(header(BINARY, 2**63 - 1) + bytes(CHUNK))
    assert p.events_received() == []  # still skipping; nothing buffered
    assert len(p.reader.buffer) == 0
    assert p.close_sent is None


def test_a_fragmented_message_going_over_mid_way_is_completed_and_marked() -> None:
    p = protocol()
    data = (
        client_frame(BINARY, b"a" * 600, fin=False)
        + client_frame(CONT, b"b" * 600, fin=False)  # 1200 > 1000: skipped from here
        + client_frame(PING, b"still-alive")  # control frames between fragments still work
        + client_frame(CONT, b"c" * 5000, fin=True)
        + client_frame(BINARY, b"next")
    )
    feed(p, data, chunk=97)
    events = p.events_received()
    assert [(e.opcode, len(e.data), e.fin) for e in events] == [
        (BINARY, 600, False),
        (PING, 11, True),
        (CONT, 0, True),  # completes the message in the assembler
        (BINARY, 4, True),
    ]
    assert sizes(events)[2] == 600 + 600 + 5000
    # The ping was answered.
    assert any(b"still-alive" in chunk for chunk in p.data_to_send())


def test_a_fragmented_message_over_from_its_first_frame() -> None:
    p = protocol()
    feed(
        p,
        client_frame(BINARY, b"a" * 2000, fin=False)
        + client_frame(CONT, b"", fin=False)
        + client_frame(CONT, b"b" * 10, fin=True),
    )
    events = p.events_received()
    assert [(e.opcode, e.data, e.fin) for e in events] == [(BINARY, b"", True)]
    assert sizes(events) == [2010]


def test_a_new_message_before_the_skipped_one_ends_is_a_protocol_error() -> None:
    p = protocol()
    feed(p, client_frame(BINARY, b"a" * 2000, fin=False) + client_frame(BINARY, b"x"))
    assert p.close_sent is not None
    assert p.close_sent.code == CloseCode.PROTOCOL_ERROR


def test_a_close_in_the_middle_of_a_skipped_message_is_a_protocol_error() -> None:
    # As websockets does for any unfinished fragmented message.
    p = protocol()
    close = Close(CloseCode.NORMAL_CLOSURE, "bye").serialize()
    feed(p, client_frame(BINARY, b"a" * 2000, fin=False) + client_frame(CLOSE, close))
    assert p.close_sent is not None
    assert p.close_sent.code == CloseCode.PROTOCOL_ERROR


def test_oversize_text_still_closes_with_1009() -> None:
    # Text frames end a vehicle session anyway (spec 2.3); they are not skipped.
    p = protocol()
    feed(p, client_frame(TEXT, b"t" * (LIMIT + 1)))
    assert p.close_sent is not None
    assert p.close_sent.code == CloseCode.MESSAGE_TOO_BIG


def test_unmasked_oversize_frame_is_refused_as_before() -> None:
    p = protocol()
    p.receive_data(Frame(BINARY, b"x" * (LIMIT + 1)).serialize(mask=False, extensions=[]))
    assert p.close_sent is not None
    assert p.close_sent.code == CloseCode.PROTOCOL_ERROR


def test_a_normal_close_still_works() -> None:
    p = protocol()
    feed(p, client_frame(CLOSE, Close(CloseCode.NORMAL_CLOSURE, "").serialize()))
    assert p.close_sent is not None
    assert p.close_sent.code == CloseCode.NORMAL_CLOSURE


def test_eof_in_the_middle_of_a_skipped_frame_is_an_abnormal_closure() -> None:
    p = protocol()
    p.receive_data(header(BINARY, 5000) + bytes(100))
    p.receive_eof()
    assert isinstance(p.parser_exc, EOFError)
    assert p.events_received() == []


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 2500), st.integers(1, 3)),  # (message size, fragments)
        min_size=1,
        max_size=6,
    ),
    st.integers(1, 700),
)
def test_any_mix_of_messages_in_any_chunking(plan: list[tuple[int, int]], chunk: int) -> None:
    """Each message is delivered whole or replaced by one marker carrying its size."""
    stream = b""
    for n, (size, parts) in enumerate(plan):
        body = bytes([n]) * size
        cuts = [size * k // parts for k in range(parts + 1)]
        for k in range(parts):
            opcode = BINARY if k == 0 else CONT
            stream += client_frame(opcode, body[cuts[k] : cuts[k + 1]], fin=k == parts - 1)
    p = protocol()
    feed(p, stream, chunk=chunk)
    assert p.close_sent is None
    got: list[tuple[str, int | bytes]] = []
    parts_so_far: list[bytes] = []
    for event in p.events_received():
        assert isinstance(event, Frame)
        assert event.opcode in (BINARY, CONT)
        if getattr(event, "size", None) is not None:
            got.append(("skipped", event.size))
            parts_so_far = []
            continue
        parts_so_far.append(bytes(event.data))
        if event.fin:
            got.append(("message", b"".join(parts_so_far)))
            parts_so_far = []
    expected = [
        ("message", bytes([n]) * size) if size <= LIMIT else ("skipped", size)
        for n, (size, _) in enumerate(plan)
    ]
    assert got == expected


@pytest.mark.parametrize("opcode", [PONG, PING])
def test_control_frames_pass_untouched(opcode: int) -> None:
    p = protocol()
    feed(p, client_frame(opcode, b"abc"))
    assert [(e.opcode, bytes(e.data)) for e in p.events_received()] == [(opcode, b"abc")]


@st.composite
def client_frames(draw: st.DrawFn) -> bytes:
    """One client frame within the limit: any opcode, FIN, RSV bits, mask or none, and a
    length in any of the three encodings (126 may be used for short lengths too)."""
    opcode = draw(st.sampled_from([BINARY, TEXT, CONT, PING, PONG, CLOSE, 3]))
    data = draw(st.binary(max_size=300))
    head1 = (0x80 if draw(st.booleans()) else 0) | (
        draw(st.sampled_from([0, 0, 0, 0x40, 0x10])) | int(opcode)
    )
    masked = draw(st.sampled_from([True, True, True, False]))
    mask_bit = 0x80 if masked else 0
    encoding = draw(st.sampled_from(["short", "short", "16", "64"]))
    if encoding == "short" and len(data) < 126:
        head = bytes([head1, mask_bit | len(data)])
    elif encoding == "64":
        head = struct.pack("!BBQ", head1, mask_bit | 127, len(data))
    else:
        head = struct.pack("!BBH", head1, mask_bit | 126, len(data))
    if not masked:
        return head + data
    mask = draw(st.binary(min_size=4, max_size=4))
    return head + mask + bytes(b ^ mask[n % 4] for n, b in enumerate(data))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_frames_within_the_limit_read_as_websockets_reads_them(data: st.DataObject) -> None:
    # The in-buffer fast path for whole binary frames against the library's own parser:
    # the same events and the same replies (pongs, closes) for any frames in any chunking.
    stream = b"".join(data.draw(st.lists(client_frames(), max_size=6)))
    chunk = data.draw(st.integers(1, 400))
    ours = protocol()
    theirs = ServerProtocol(state=OPEN, max_size=LIMIT)
    for p in (ours, theirs):
        feed(p, stream, chunk=chunk)
    assert [(e.opcode, bytes(e.data), e.fin) for e in ours.events_received()] == [
        (e.opcode, bytes(e.data), e.fin) for e in theirs.events_received()
    ]
    assert ours.data_to_send() == theirs.data_to_send()
    assert ours.close_rcvd == theirs.close_rcvd


@pytest.mark.parametrize("size", [100, 900, 70_000])  # the fast path; Frame.parse (16-bit, 64-bit)
def test_the_last_frame_is_not_kept_while_waiting_for_more(size: int) -> None:
    # An idle vehicle's parser waits for its next bytes for as long as the vehicle idles:
    # it must not hold the last frame (up to the limit, 1 MB in the listener) meanwhile.
    p = protocol(limit=100_000)
    p.receive_data(client_frame(BINARY, b"x" * size))
    assert [len(f.data) for f in p.events_received()] == [size]
    waiting = p.parser.gi_frame
    assert waiting is not None
    assert "frame" not in waiting.f_locals
    assert not any(
        isinstance(value, Frame) or (isinstance(value, bytes) and len(value) >= size)
        for value in waiting.f_locals.values()
    )
