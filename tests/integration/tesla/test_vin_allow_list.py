"""``data_connectors``: the reference's VIN allow-list, over real mTLS WebSockets.

A VIN outside the list completes the TLS handshake and the upgrade, then its connection is
dropped without a close frame (as the reference's ``ws.Close()`` does), and nothing of it is
stored, not even a connectivity record. The list follows its file while the server runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosedError

from fleetgate.app import Server
from fleetgate.listeners.tesla.allowlist import read_allow_list
from fleetgate.observability import metrics
from fleetgate.pki import DevPki
from fleetgate.protocols.tesla.envelope import MESSAGE_STREAM_ACK
from tests.integration.tesla.helpers import (
    OTHER_VIN,
    TIMEOUT,
    VIN,
    connect_vehicle,
    eventually,
    receive,
    start_server,
    stream_frame,
    tesla,
)

pytestmark = pytest.mark.integration


def allow(path: Path, *vins: str, key: str = "allowed_vins") -> Path:
    path.write_text(json.dumps({key: list(vins)}))
    return path


async def allow_list_server(tmp_path: Path, pki: DevPki, file: Path) -> Server:
    return await start_server(
        tmp_path,
        pki,
        data_connectors={"file": {"capabilities": ["vin_allowed"], "path": str(file)}},
    )


def results(allowed: str) -> float:
    value = metrics.REGISTRY.get_sample_value("vin_allowed_result_count", {"allowed": allowed})
    return value or 0.0


async def dropped(server: Server, pki: DevPki, vin: str) -> bool:
    """True when the vehicle's socket is closed without a close frame after the upgrade."""
    async with await connect_vehicle(server, pki, vin) as ws:
        try:
            await ws.send(stream_frame(sender=f"vehicle_device.{vin}"))
            await asyncio.wait_for(ws.recv(), TIMEOUT)
        except ConnectionClosedError as exc:
            return exc.rcvd is None  # no close frame: the connection was just dropped
    return False


async def test_a_vin_outside_the_list_is_dropped_and_nothing_of_it_stored(
    tmp_path: Path, pki: DevPki, caplog: pytest.LogCaptureFixture
) -> None:
    server = await allow_list_server(tmp_path, pki, allow(tmp_path / "vins.json", VIN))
    refused_before, admitted_before = results("false"), results("true")
    try:
        with caplog.at_level(logging.INFO, logger="fleetgate.tesla"):
            assert await dropped(server, pki, OTHER_VIN)
        async with await connect_vehicle(server, pki, VIN) as ws:
            await ws.send(stream_frame())
            reply = await receive(ws)
        assert reply.message_type == MESSAGE_STREAM_ACK
        assert server.store is not None
        store = server.store
        await eventually(lambda: len(store.records(VIN)) >= 2)  # connectivity + V
        assert store.records(OTHER_VIN) == []
        assert not tesla(server).sessions or all(
            s.device_id != OTHER_VIN for s in tesla(server).sessions
        )
    finally:
        await server.stop()
    assert results("false") == refused_before + 1
    assert results("true") == admitted_before + 1
    rejected = [r for r in caplog.records if r.getMessage() == "vin_rejected"]
    assert [getattr(r, "fields", {}).get("vin") for r in rejected] == [OTHER_VIN]


async def test_the_list_follows_its_file_and_keeps_the_last_good_version(
    tmp_path: Path, pki: DevPki
) -> None:
    file = allow(tmp_path / "vins.json", VIN)
    server = await allow_list_server(tmp_path, pki, file)
    allow_list = tesla(server).allow_list
    assert allow_list is not None
    try:
        assert await dropped(server, pki, OTHER_VIN)
        # Written by replacing the file (as editors do): the new list applies.
        replacement = tmp_path / "vins.json.new"
        allow(replacement, VIN, OTHER_VIN, key="vins_allowed")
        replacement.replace(file)
        await eventually(lambda: allow_list.admits(OTHER_VIN), timeout=4 * TIMEOUT)
        async with await connect_vehicle(server, pki, OTHER_VIN) as ws:
            await ws.send(stream_frame(sender=f"vehicle_device.{OTHER_VIN}"))
            assert (await receive(ws)).message_type == MESSAGE_STREAM_ACK
        # A broken version is refused; the last good list stays in force.
        errors = metrics.REGISTRY.get_sample_value("vin_allowed_error_count") or 0.0
        file.write_text("{not json")
        await eventually(
            lambda: (metrics.REGISTRY.get_sample_value("vin_allowed_error_count") or 0.0) > errors,
            timeout=4 * TIMEOUT,
        )
        assert allow_list.admits(OTHER_VIN)
    finally:
        await server.stop()


def test_the_file_forms_the_reference_reads(tmp_path: Path) -> None:
    assert read_allow_list(allow(tmp_path / "a.json", "A", "B")) == {"A", "B"}
    assert read_allow_list(allow(tmp_path / "b.json", "C", key="vins_allowed")) == {"C"}
    (tmp_path / "c.json").write_text("{}")
    assert read_allow_list(tmp_path / "c.json") is None  # no list: every VIN, as the reference
