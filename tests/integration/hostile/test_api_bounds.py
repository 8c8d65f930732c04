"""The REST API under hostile parameters: out-of-range times and ids that hold ``/``.

Served by uvicorn on loopback (not Starlette's TestClient, which decodes a path twice), so
the percent-decoding is the one real clients meet.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import uvicorn

from fleetgate.api.app import create_api
from fleetgate.api.auth import Authenticator
from fleetgate.config import build_config
from fleetgate.records import Record
from fleetgate.store import RecordStore
from tests.tokens import TEST_SECRET, bearer, make_token

pytestmark = pytest.mark.integration

TRACKER = "356307042441013"
# A certificate CN as a vehicle could present it before ids were validated at entry.
ODD_IDS = ["a/../b", "a/b/records", "x y", "ünï/cödé", "%2F"]


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    store = RecordStore(tmp_path / "fleetgate.db")
    store.write([Record("teltonika", TRACKER, "position", 1_000, 5_000, {"speed": 1})])
    store.write(
        [
            Record("tesla", device_id, "V", 2_000, 6_000, {"n": index})
            for index, device_id in enumerate(ODD_IDS)
        ]
    )
    settings = build_config(
        {"data_dir": str(tmp_path), "api": {"auth": {"secret": TEST_SECRET}}}, environ={}
    ).api
    api = create_api(
        store,
        lambda: {"status": "ok"},
        auth=Authenticator(settings.auth, tmp_path),
        settings=settings,
    )
    config = uvicorn.Config(api, host="127.0.0.1", port=0, log_config=None, lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:  # noqa: ASYNC110 - uvicorn has no started event
            await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers=bearer(make_token())
        ) as http:
            yield http
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        store.close()


@pytest.mark.parametrize(
    "value",
    [
        str(2**63),  # one past SQLite's integer
        str(2**64 + 5),
        "-" + str(2**63 + 1),
        "9" * 400,
        str(253_402_300_800_000),  # 10000-01-01T00:00:00Z in epoch ms
        str(-62_135_596_800_001),  # one millisecond before year 1
        "10000-01-01T00:00:00Z",
        "0000-12-31T23:59:59Z",
        "1" * 5000,  # longer than Python converts to int
    ],
)
@pytest.mark.parametrize("name", ["since", "until"])
async def test_times_beyond_64_bits_or_years_1_to_9999_are_a_400(
    client: httpx.AsyncClient, name: str, value: str
) -> None:
    response = await client.get(f"/api/v1/devices/{TRACKER}/records", params={name: value})
    assert response.status_code == 400
    body = response.json()
    assert body["detail"].startswith(f"{name}: expected an RFC 3339 time or epoch milliseconds")
    assert "1..9999" in body["detail"]
    assert len(response.content) < 400  # the value is quoted, not echoed without bound


@pytest.mark.parametrize(
    "value", ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999Z", "-62135596800000"]
)
async def test_the_extreme_valid_times_are_accepted(client: httpx.AsyncClient, value: str) -> None:
    response = await client.get(f"/api/v1/devices/{TRACKER}/records", params={"since": value})
    assert response.status_code == 200


@pytest.mark.parametrize("device_id", ODD_IDS)
async def test_any_stored_id_is_reachable_percent_encoded(
    client: httpx.AsyncClient, device_id: str
) -> None:
    path = quote(device_id, safe="")
    records = (await client.get(f"/api/v1/devices/{path}/records")).json()["records"]
    assert [record["device_id"] for record in records] == [device_id]
    latest = await client.get(f"/api/v1/devices/{path}/latest")
    assert latest.status_code == 200
    assert latest.json()["device_id"] == device_id
    device = await client.get(f"/api/v1/devices/{path}")
    assert device.status_code == 200
    assert device.json()["id"] == device_id
    track = await client.get(f"/api/v1/devices/{path}/track")
    assert track.status_code == 200


async def test_ids_that_only_look_like_paths_do_not_reach_other_devices(
    client: httpx.AsyncClient,
) -> None:
    # "a%2F..%2Fb" is the device "a/../b", never "b" nor a directory walk.
    assert (await client.get("/api/v1/devices/b/latest")).status_code == 404
    assert (await client.get(f"/api/v1/devices/{quote('a/..', safe='')}/latest")).status_code == 404
    # "a/b/records" is a device, not the records of device "a/b".
    one = (await client.get(f"/api/v1/devices/{quote('a/b/records', safe='')}")).json()
    assert one["id"] == "a/b/records"
    assert (await client.get(f"/api/v1/devices/{quote('a/b', safe='')}/records")).json()[
        "records"
    ] == []
