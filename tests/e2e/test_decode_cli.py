"""``fleetgate decode`` as a user runs it: closed pipes, input that is not a frame, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fleetgate.protocols.tesla.envelope import build_stream_envelope
from fleetgate.protocols.tesla.proto import vehicle_data_pb2 as vd
from tests.unit.tesla.helpers import REFERENCE_ACK_1234_V

pytestmark = pytest.mark.e2e

FLEETGATE = [sys.executable, "-m", "fleetgate"]
# The Teltonika frame of the README's "Try it" section (codec 8, one record).
TELTONIKA_HEX = (
    "000000000000003608010000016b40d8ea30010000000000000000000000000000000105021503010101"
    "425e0f01f10000601a014e0000000000000000010000c7cf"
)


def v_frame(created_at_seconds: int = 1_700_000_000) -> bytes:
    payload = vd.Payload()
    payload.data.add(key=vd.VehicleSpeed).value.string_value = "16.0"
    payload.created_at.seconds = created_at_seconds
    return build_stream_envelope(
        txid=b"t1", topic=b"V", payload=payload.SerializeToString(), sender_id=b"x"
    )


def decode(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FLEETGATE, "decode", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_one_clean_line(stderr: str, needle: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert needle in lines[0]
    assert "Traceback" not in stderr


# -- closed pipe ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["tesla", "--vin", "5YJ3E1EA7KF000001", v_frame().hex()],
        ["teltonika", TELTONIKA_HEX],
    ],
)
def test_reader_gone_before_the_output_is_exit_141_without_a_traceback(args: list[str]) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader (head, a closed terminal) is gone before anything is written
    try:
        process = subprocess.run(
            [*FLEETGATE, "decode", *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert process.returncode == 141
    assert process.stderr == ""  # no traceback, no "Exception ignored ... BrokenPipeError"


def test_piped_into_head() -> None:
    command = f"{sys.executable} -m fleetgate decode teltonika {TELTONIKA_HEX} | head -1"
    result = subprocess.run(
        ["sh", "-c", command], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0
    assert result.stdout == "{\n"
    assert "Traceback" not in result.stderr
    assert "BrokenPipe" not in result.stderr


# -- input that is not a frame ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["tesla", "zz12"], "not hex: 'z' at position 0 is not a hex digit"),
        (["teltonika", "00ff0g"], "not hex: 'g' at position 5"),
        (["tesla", "abc"], "3 hex digits, an odd number"),
        (["tesla", "   "], "no input"),
        (["teltonika", "0x"], "no input"),
    ],
)
def test_input_that_is_not_hex_is_exit_2(args: list[str], needle: str) -> None:
    result = decode(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert_one_clean_line(result.stderr, needle)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        # Bytes no flatbuffers reader can follow.
        (["tesla", "ffffffff00"], "not a Tesla frame (flatbuffers envelope): offset"),
        # A Teltonika frame reads as an envelope with nothing in it.
        (["tesla", TELTONIKA_HEX], "not a Tesla frame: the envelope holds no message"),
        # A Tesla reply is not a Teltonika frame.
        (["teltonika", REFERENCE_ACK_1234_V.hex()], "not a Teltonika frame: byte 0x14 cannot start a frame"),
        (["teltonika", "00000000000000ff08"], "not a Teltonika frame"),
        # A payload time no calendar holds: the server answers with the error reply.
        (["tesla", v_frame(10**17).hex()], "not a valid Tesla record: created_at.seconds"),
    ],
)
def test_bytes_that_are_not_a_frame_are_exit_1_with_the_reason(
    args: list[str], needle: str
) -> None:
    result = decode(*args)
    assert result.returncode == 1
    assert result.stdout == ""
    assert_one_clean_line(result.stderr, needle)


# -- frames ---------------------------------------------------------------------------------


def test_a_frame_from_stdin_decodes() -> None:
    result = decode("tesla", "--vin", "5YJ3E1EA7KF000001", "-", stdin=f"0x{v_frame().hex()}\n")
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["data"] == {"VehicleSpeed": 16.0}
    assert body["payload"]["vin"] == "5YJ3E1EA7KF000001"


def test_the_reference_servers_ack_decodes() -> None:
    result = decode("tesla", REFERENCE_ACK_1234_V.hex())
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "txid": "1234",
        "topic": "V",
        "message_type": 5,
        "message_id": "",
    }


def test_help_documents_the_exit_codes() -> None:
    result = subprocess.run(
        [*FLEETGATE, "decode", "tesla", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for code in ("0 ", "1 ", "2 ", "141"):
        assert f"\n  {code}" in result.stdout
