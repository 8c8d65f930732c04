from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fleetgate.api.auth import Authenticator
from fleetgate.app import Server
from fleetgate.config import build_config
from fleetgate.records import Record
from tests.tokens import TEST_SECRET, bearer, make_token


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    config = build_config(
        {"data_dir": str(tmp_path), "teltonika": {"enabled": False}, "tesla_enabled": False,
         "api": {"auth": {"secret": TEST_SECRET}}},
        environ={},
    )
    server = Server(config)
    assert server.store is not None
    server.store.write(
        [
            Record("teltonika", "356307042441013", "position", 1_000, 5_000, {"speed": 1}),
            Record("teltonika", "356307042441013", "event", 3_000, 6_000, {"speed": 3}),
            Record("teltonika", "356307042441013", "position", 2_000, 7_000, {"speed": 2}),
            Record("tesla", "5YJ3E1EA7KF000001", "V", 4_000, 8_000, {"VehicleSpeed": 40.5}),
        ]
    )
    yield server
    server.store.close()


@pytest.fixture
def client(server: Server) -> TestClient:
    from fleetgate.api.app import create_api

    auth = Authenticator(server.config.api.auth, server.config.data_path)
    api = create_api(server.store, server.health_report, auth=auth, settings=server.config.api)
    return TestClient(api, headers=bearer(make_token()))


def test_devices_list_counts_and_last_seen(client: TestClient) -> None:
    body = client.get("/api/v1/devices").json()
    assert body["devices"] == [
        {"id": "5YJ3E1EA7KF000001", "source": "tesla", "first_seen": "1970-01-01T00:00:08.000Z",
         "last_seen": "1970-01-01T00:00:08.000Z", "record_count": 1, "online": False,
         "position": None},
        {"id": "356307042441013", "source": "teltonika", "first_seen": "1970-01-01T00:00:05.000Z",
         "last_seen": "1970-01-01T00:00:07.000Z", "record_count": 3, "online": False,
         "position": None},
    ]


def test_records_newest_first_with_since_until_limit(client: TestClient) -> None:
    url = "/api/v1/devices/356307042441013/records"
    records = client.get(url).json()["records"]
    assert [r["data"]["speed"] for r in records] == [3, 2, 1]
    assert records[0] == {
        "source": "teltonika", "device_id": "356307042441013", "topic": "event",
        "created_at": "1970-01-01T00:00:03.000Z", "received_at": "1970-01-01T00:00:06.000Z",
        "data": {"speed": 3},
    }
    since = client.get(url, params={"since": "1970-01-01T00:00:02Z"}).json()["records"]
    assert [r["data"]["speed"] for r in since] == [3, 2]
    until = client.get(url, params={"until": "2000"}).json()["records"]
    assert [r["data"]["speed"] for r in until] == [2, 1]
    assert len(client.get(url, params={"limit": 1}).json()["records"]) == 1


def test_bad_query_values_are_400_or_422(client: TestClient) -> None:
    url = "/api/v1/devices/356307042441013/records"
    response = client.get(url, params={"since": "yesterday"})
    assert response.status_code == 400
    assert "since" in response.json()["detail"]
    assert client.get(url, params={"limit": 0}).status_code == 422


def test_latest_and_unknown_device(client: TestClient) -> None:
    latest = client.get("/api/v1/devices/356307042441013/latest").json()
    assert latest["data"] == {"speed": 3}
    assert client.get("/api/v1/devices/nobody/latest").status_code == 404
    assert client.get("/api/v1/devices/nobody/records").json() == {"records": [], "next": None}


def test_health_reports_sinks_and_metrics_are_prometheus_text(client: TestClient) -> None:
    health = client.get("/health")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok"
    assert body["sinks"]["sqlite"]["status"] == "ok"
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert "fleetgate_records_total" in metrics.text
    assert "fleetgate_teltonika_frames_total" in metrics.text


def test_openapi_docs_are_served(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert "/api/v1/devices/{device_id}/records" in paths


async def test_monitoring_port_serves_prometheus_metrics_like_the_reference(
    tmp_path: Path,
) -> None:
    import socket

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = build_config(
        {
            "data_dir": str(tmp_path), "teltonika": {"enabled": False}, "tesla_enabled": False,
            "api": {"enabled": False},
            "monitoring": {"prometheus_metrics_port": port, "prometheus_metrics_host": "127.0.0.1"},
        },
        environ={},
    )
    server = Server(config)
    await server.start()
    try:
        assert server.metrics_port == port
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{port}/metrics")
        assert response.status_code == 200
        assert "fleetgate_records_total" in response.text
    finally:
        await server.stop()
