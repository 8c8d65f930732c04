"""CRC-16/IBM: catalogue check value, the spec's example, C vs pure Python."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fleetgate.protocols.teltonika.crc import crc16_ibm, crc16_ibm_py
from tests.unit.teltonika.helpers import all_vectors


def test_check_value() -> None:
    assert crc16_ibm(b"123456789") == 0xBB3D
    assert crc16_ibm_py(b"123456789") == 0xBB3D


def test_empty_is_zero() -> None:
    assert crc16_ibm(b"") == 0
    assert crc16_ibm_py(b"") == 0


def test_spec_example_body() -> None:
    frame = bytes.fromhex(
        "000000000000003608010000016b40d8ea30010000000000000000000000000000000105021503010101"
        "425e0f01f10000601a014e0000000000000000010000c7cf"
    )
    assert crc16_ibm(frame[8:-4]) == 0xC7CF


def test_accepts_memoryview_and_bytearray() -> None:
    data = b"\x08\x01hello\x01"
    assert crc16_ibm(memoryview(data)) == crc16_ibm(bytearray(data)) == crc16_ibm_py(data)


def test_valid_vector_frames_verify() -> None:
    checked = 0
    for v in all_vectors():
        integrity = v.get("integrity") or {}
        if v["transport"] == "tcp" and integrity.get("crc_valid") is True:
            frame = bytes.fromhex(v["hex"])
            stored = int.from_bytes(frame[-4:], "big")
            assert crc16_ibm(frame[8:-4]) == stored == crc16_ibm_py(frame[8:-4]), v["id"]
            checked += 1
    assert checked > 50


@given(st.binary(max_size=2048))
def test_fast_and_pure_python_agree(data: bytes) -> None:
    assert crc16_ibm(data) == crc16_ibm_py(data)
