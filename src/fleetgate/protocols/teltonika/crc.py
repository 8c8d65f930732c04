"""CRC-16/IBM (also catalogued as CRC-16/ARC), the checksum of Teltonika TCP frames.

Polynomial 0x8005 reflected (0xa001), init 0, reflected in and out, no final XOR; check
value over ``b"123456789"`` is ``0xbb3d`` (spec section 2). It covers the codec byte through
N2, i.e. the ``data_length`` bytes after the length field.

:func:`crc16_ibm` uses the C implementation from ``anycrc``; :func:`crc16_ibm_py` is a
table-driven pure-Python version kept for cross-checking in tests and as a fallback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final


def _build_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE: Final = _build_table()


def crc16_ibm_py(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/IBM in pure Python (about 100x slower than :func:`crc16_ibm`)."""
    table = _TABLE
    crc = 0
    for byte in bytes(data):
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc


def _load_fast() -> Callable[[bytes | bytearray | memoryview], int] | None:
    try:
        import anycrc
    except ImportError:  # pragma: no cover - anycrc is a declared dependency
        return None
    calc: Callable[[bytes | bytearray | memoryview], int] = anycrc.Model("CRC16-ARC").calc
    # Trust the C library only if it agrees with the catalogue check value.
    if calc(b"123456789") != 0xBB3D:  # pragma: no cover - defensive
        return None
    return calc


_fast: Final = _load_fast() or crc16_ibm_py


def crc16_ibm(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/IBM of ``data`` (C speed when ``anycrc`` is available)."""
    return _fast(data)
