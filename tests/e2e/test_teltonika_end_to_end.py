"""Simulated trackers → server → REST API returns exactly what was sent."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from fleetgate.app import Server
from fleetgate.config import build_config
from fleetgate.protocols.teltonika.model import AvlRecord
from fleetgate.records import format_rfc3339_ms
from fleetgate.sim.teltonika import SimulationSettings, run_simulation
from tests.tokens import TEST_SECRET, bearer, make_token

pytestmark = pytest.mark.e2e


def expected_json(record: AvlRecord) -> dict[str, object]:
    io = {
        str(key): value.hex() if isinstance(value, bytes) else value
        for key, value in record.io.items()
    }
    return {
        "created_at": format_rfc3339_ms(record.timestamp_ms),
        "latitude": record.latitude,
        "longitude": record.longitude,
        "altitude": record.altitude,
        "angle": record.angle,
        "satellites": record.satellites,
        "speed": record.speed,
        "priority": record.priority,
        "event_io_id": record.event_io_id,
        "io": io,
    }


def actual_json(item: dict[str, object]) -> dict[str, object]:
    data = item["data"]
    assert isinstance(data, dict)
    keys = ("latitude", "longitude", "altitude", "angle", "satellites", "speed", "priority",
            "event_io_id", "io")
    return {"created_at": item["created_at"], **{key: data[key] for key in keys}}


@pytest.mark.parametrize(
    ("codec", "io16_group", "transport"),
    [
        ("8", False, "tcp"), ("8E", False, "tcp"), ("16", False, "tcp"),
        ("7", False, "tcp"),  # GH3000
        ("8", True, "tcp"), ("16", True, "tcp"),  # 16-byte IO groups, no model configured
        ("8E", False, "udp"), ("7", False, "udp"), ("16", True, "udp"),
    ],
)
async def test_simulator_records_come_back_from_the_api(
    tmp_path: Path, codec: str, io16_group: bool, transport: str
) -> None:
    config = build_config(
        {
            "data_dir": str(tmp_path),
            "tesla_enabled": False,
            "api": {"host": "127.0.0.1", "port": 0, "auth": {"secret": TEST_SECRET}},
            "teltonika": {"host": "127.0.0.1", "port": 0},
        },
        environ={},
    )
    server = Server(config)
    await server.start()
    try:
        listener = server.listener("teltonika" if transport == "tcp" else "teltonika-udp")
        assert listener is not None
        port = int(listener.health()["address"].rsplit(":", 1)[1])
        settings = SimulationSettings(
            port=port, devices=3, rate=0, codec=codec, records_per_frame=4,
            frames_per_device=5, duration_s=None, io_elements=12, keep_sent=True, seed=7,
            io16_group=io16_group, transport=transport,
        )
        result = await run_simulation(settings)
        assert result.ok, result.summary()
        assert result.records_acked == 3 * 5 * 4

        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{server.api_port}", headers=bearer(make_token())
        ) as client:
            # Acked means spooled; the store commits a moment later.
            async with asyncio.timeout(10):
                while True:
                    devices = (await client.get("/api/v1/devices")).json()["devices"]
                    if sum(d["record_count"] for d in devices) >= 3 * 5 * 4:
                        break
                    await asyncio.sleep(0.02)
            assert sorted(d["id"] for d in devices) == sorted(result.sent)
            assert all(d["record_count"] == 20 and d["source"] == "teltonika" for d in devices)
            for imei, sent in result.sent.items():
                response = await client.get(f"/api/v1/devices/{imei}/records", params={"limit": 100})
                got = response.json()["records"]
                # Newest first from the API; the simulator's clock only moves forward.
                assert [actual_json(item) for item in reversed(got)] == [
                    expected_json(record) for record in sent
                ]
                assert all(item["topic"] == "position" for item in got)
                latest = (await client.get(f"/api/v1/devices/{imei}/latest")).json()
                assert actual_json(latest) == expected_json(sent[-1])
    finally:
        await server.stop()
