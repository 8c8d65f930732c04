"""Fixtures of the Tesla listener tests (helpers live in :mod:`helpers`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fleetgate.app import Server
from fleetgate.pki import DevPki, init_pki
from tests.integration.tesla.helpers import OTHER_VIN, VIN, start_server


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return init_pki(tmp_path_factory.mktemp("pki"), host="localhost", vins=[VIN, OTHER_VIN])


@pytest.fixture
async def server(tmp_path: Path, pki: DevPki) -> AsyncIterator[Server]:
    server = await start_server(tmp_path, pki)
    yield server
    await server.stop()


@pytest.fixture
async def reference_server(tmp_path: Path, pki: DevPki) -> AsyncIterator[Server]:
    """A server with the reference's routing: no embedded store, only ``records``' topics.

    Only then does a topic ``records`` does not name get the reference's ack-only (or
    sender-check error) answer; with the store on, every topic is dispatched.
    """
    server = await start_server(tmp_path, pki, store={"enabled": False})
    yield server
    await server.stop()
