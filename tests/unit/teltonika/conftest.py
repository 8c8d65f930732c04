"""Fixtures for the Teltonika unit tests."""

from __future__ import annotations

import pytest

from fleetgate.protocols.teltonika.connection import TcpConnection
from fleetgate.protocols.teltonika.events import ImeiReceived
from tests.unit.teltonika.helpers import IMEI, IMEI_FRAME


@pytest.fixture
def established() -> TcpConnection:
    """A connection that has received and accepted the IMEI frame."""
    conn = TcpConnection()
    assert conn.receive_data(IMEI_FRAME) == [ImeiReceived(IMEI)]
    assert conn.accept_imei(True) == b"\x01"
    return conn
