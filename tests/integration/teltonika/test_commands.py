"""Device commands end to end: the REST API, the server's sessions, a tracker on a real
socket speaking Teltonika's documented bytes (the doc vectors: the command frames the
server must write and the answers a device sends back)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetgate.app import Server
from fleetgate.config import build_config
from fleetgate.protocols.teltonika.encoder import encode_imei
from tests.integration.stores import stored
from tests.integration.teltonika.helpers import GATED, GatedSink
from tests.teltonika_vectors import frame
from tests.tokens import TEST_SECRET, bearer, make_token

pytestmark = pytest.mark.integration

TIMEOUT = 5.0
IMEI = "352093081452251"  # the device of Teltonika's codec 14 examples
GETINFO_TEXT = bytes.fromhex(frame("doc-c12-getinfo-response").hex()[30:-10]).decode("ascii")


def config(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    teltonika = {
        "host": "127.0.0.1",
        "port": 0,
        "udp_enabled": False,
        **overrides.pop("teltonika", {}),
    }
    return {
        "data_dir": str(tmp_path),
        "tesla_enabled": False,
        "api": {
            "host": "127.0.0.1",
            "port": 0,
            "auth": {"secret": TEST_SECRET},
            "dashboard": {"enabled": False},
        },
        "teltonika": teltonika,
        **overrides,
    }


async def start(tmp_path: Path, **overrides: Any) -> Server:
    server = Server(build_config(config(tmp_path, **overrides), environ={}))
    await server.start()
    return server


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    server = await start(tmp_path)
    yield server
    await server.stop()


def api(server: Server, scope: str = "command read") -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{server.api_port}",
        headers=bearer(make_token(scope=scope)),
        timeout=30,
    )


class Tracker:
    """A tracker on a real socket: handshake, frames, and reading what the server writes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, server: Server, imei: str = IMEI) -> Tracker:
        listener = server.listener("teltonika")
        assert listener is not None
        reader, writer = await asyncio.open_connection(
            "127.0.0.1",
            listener.port,  # type: ignore[attr-defined]
        )
        writer.write(encode_imei(imei))
        assert await asyncio.wait_for(reader.readexactly(1), TIMEOUT) == b"\x01"
        return cls(reader, writer)

    async def read_frame(self) -> bytes:
        head = await asyncio.wait_for(self.reader.readexactly(8), TIMEOUT)
        assert head[:4] == b"\x00\x00\x00\x00", head.hex()
        rest = await asyncio.wait_for(
            self.reader.readexactly(int.from_bytes(head[4:], "big") + 4), TIMEOUT
        )
        return head + rest

    async def read_ack(self) -> int:
        return int.from_bytes(await asyncio.wait_for(self.reader.readexactly(4), TIMEOUT), "big")

    async def nothing_yet(self, seconds: float = 0.3) -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(self.reader.read(1), seconds)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def close(self) -> None:
        self.writer.close()


async def wait_status(client: httpx.AsyncClient, command_id: int, status: str) -> dict[str, Any]:
    async with asyncio.timeout(TIMEOUT):
        while True:
            reply = await client.get(f"/api/v1/devices/{IMEI}/commands/{command_id}")
            assert reply.status_code == 200, reply.text
            if reply.json()["status"] == status:
                return dict(reply.json())
            await asyncio.sleep(0.02)


# -- a connected device --------------------------------------------------------------------
async def test_online_device_gets_the_documented_bytes_and_its_answer_comes_back(
    server: Server,
) -> None:
    device = await Tracker.connect(server)
    async with api(server) as client:
        post = asyncio.create_task(
            client.post(f"/api/v1/devices/{IMEI}/commands", json={"command": "getinfo"})
        )
        assert await device.read_frame() == frame("doc-c12-getinfo-command")
        device.send(frame("doc-c12-getinfo-response"))
        reply = await post
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert (body["status"], body["command"], body["codec"]) == ("answered", "getinfo", 12)
        assert body["response"] == GETINFO_TEXT
        assert body["response"].startswith("INI:2019/7/22 7:22 RTC:2019/7/22 7:53")
        listing = (await client.get(f"/api/v1/devices/{IMEI}/commands")).json()["commands"]
        assert [(c["id"], c["status"]) for c in listing] == [(body["id"], "answered")]
    device.close()
    # The answer is a record as well, as every codec 12 message is.
    [record] = await stored(server.store, IMEI, 1, topic="command_response")
    assert record["data"]["text"] == GETINFO_TEXT


async def test_codec14_command_is_addressed_by_imei_and_a_nack_is_reported(
    server: Server,
) -> None:
    device = await Tracker.connect(server)
    path = f"/api/v1/devices/{IMEI}/commands"
    async with api(server) as client:
        post = asyncio.create_task(client.post(path, json={"command": "getver", "codec": 14}))
        assert await device.read_frame() == frame("doc-c14-getver-command")
        device.send(frame("doc-c14-ack-response"))
        body = (await post).json()
        assert body["status"] == "answered"
        assert body["response"].startswith("Ver:03.18.14_04 GPS:AXN_5.10_3333 Hw:")

        post = asyncio.create_task(client.post(path, json={"command": "getver", "codec": 14}))
        await device.read_frame()
        device.send(frame("doc-c14-nack-response"))
        reply = await post
        assert reply.status_code == 200
        assert (reply.json()["status"], reply.json()["response"]) == ("nack", None)
    device.close()


async def test_a_command_waits_while_the_device_waits_for_its_ack(tmp_path: Path) -> None:
    """Never between a frame and its ack: the device would read the command as the ack."""
    GatedSink.gate = asyncio.Event()
    server = await start(
        tmp_path,
        records={"position": [GATED]},
        ack_policy={"teltonika": [GATED]},
    )
    try:
        device = await Tracker.connect(server)
        device.send(frame("doc-c8-tcp-example1"))
        async with api(server) as client:
            post = asyncio.create_task(
                client.post(f"/api/v1/devices/{IMEI}/commands", json={"command": "getio"})
            )
            await device.nothing_yet(0.5)  # the command is queued behind the owed ack
            GatedSink.gate.set()
            assert await device.read_ack() == 1
            assert await device.read_frame() == frame("doc-c12-getio-command")
            device.send(frame("doc-c12-getio-response"))
            assert (await post).json()["response"].startswith("DI1:1 DI2:0 DI3:0")
        device.close()
    finally:
        GatedSink.gate.set()
        await server.stop()


async def test_no_answer_times_out_and_the_next_command_still_goes(tmp_path: Path) -> None:
    server = await start(tmp_path, teltonika={"command_timeout_s": 0.3})
    try:
        device = await Tracker.connect(server)
        path = f"/api/v1/devices/{IMEI}/commands"
        async with api(server) as client:
            post = asyncio.create_task(client.post(path, json={"command": "getinfo"}))
            await device.read_frame()  # and never answers
            reply = await post
            assert reply.status_code == 504
            assert reply.json()["status"] == "timed_out"
            assert "command_timeout_s" in reply.json()["detail"]
            post = asyncio.create_task(client.post(path, json={"command": "getio"}))
            assert await device.read_frame() == frame("doc-c12-getio-command")
            device.send(frame("doc-c12-getio-response"))
            assert (await post).json()["status"] == "answered"
        device.close()
    finally:
        await server.stop()


async def test_connection_lost_before_the_answer_times_the_command_out(server: Server) -> None:
    device = await Tracker.connect(server)
    async with api(server) as client:
        post = asyncio.create_task(
            client.post(f"/api/v1/devices/{IMEI}/commands", json={"command": "cpureset"})
        )
        await device.read_frame()
        device.close()
        body = (await post).json()
    assert body["status"] == "timed_out"
    assert body["detail"] == "the connection closed before the device answered"


# -- a device that is not connected --------------------------------------------------------
async def test_offline_device_gets_its_command_when_it_connects(server: Server) -> None:
    async with api(server) as client:
        reply = await client.post(f"/api/v1/devices/{IMEI}/commands", json={"command": "getio"})
        assert reply.status_code == 202
        queued = reply.json()
        assert (queued["status"], queued["sent_at"]) == ("queued", None)
        device = await Tracker.connect(server)
        assert await device.read_frame() == frame("doc-c12-getio-command")
        await wait_status(client, queued["id"], "sent")
        device.send(frame("doc-c12-getio-response"))
        answered = await wait_status(client, queued["id"], "answered")
        assert answered["response"].startswith("DI1:1 DI2:0 DI3:0")
        device.close()


async def test_queued_commands_survive_a_restart_and_go_in_order(tmp_path: Path) -> None:
    server = await start(tmp_path)
    try:
        async with api(server) as client:
            path = f"/api/v1/devices/{IMEI}/commands"
            first = (await client.post(path, json={"command": "getinfo"})).json()
            second = (await client.post(path, json={"command": "getio"})).json()
    finally:
        await server.stop()
    server = await start(tmp_path)
    try:
        async with api(server) as client:
            listing = (await client.get(f"/api/v1/devices/{IMEI}/commands")).json()["commands"]
            assert [(c["id"], c["status"]) for c in listing] == [
                (second["id"], "queued"),
                (first["id"], "queued"),
            ]
            device = await Tracker.connect(server)
            assert await device.read_frame() == frame("doc-c12-getinfo-command")
            await device.nothing_yet()  # one command in flight at a time
            device.send(frame("doc-c12-getinfo-response"))
            assert await device.read_frame() == frame("doc-c12-getio-command")
            device.send(frame("doc-c12-getio-response"))
            await wait_status(client, second["id"], "answered")
            device.close()
    finally:
        await server.stop()


# -- refusals ------------------------------------------------------------------------------
async def test_sending_needs_the_command_scope(server: Server) -> None:
    path = f"/api/v1/devices/{IMEI}/commands"
    async with api(server, scope="read stream") as client:
        reply = await client.post(path, json={"command": "getinfo"})
        assert reply.status_code == 403
        assert reply.json()["error"] == "insufficient_scope"
        assert (await client.get(path)).status_code == 200
    async with api(server, scope="command") as client:
        assert (await client.get(path)).status_code == 403


@pytest.mark.parametrize(
    ("imei", "body", "status", "error"),
    [
        ("not-an-imei", {"command": "getinfo"}, 400, "invalid_device"),
        ("12345678901234567", {"command": "getver", "codec": 14}, 400, "invalid_device"),
        (IMEI, {"command": "getinfo\x00"}, 400, "invalid_command"),
        (IMEI, {"command": "gétinfo"}, 400, "invalid_command"),
        (IMEI, {"command": "getinfo", "codec": 13}, 422, None),
        (IMEI, {"command": ""}, 422, None),
    ],
)
async def test_commands_that_cannot_be_sent_are_refused(
    server: Server, imei: str, body: dict[str, Any], status: int, error: str | None
) -> None:
    async with api(server) as client:
        reply = await client.post(f"/api/v1/devices/{imei}/commands", json=body)
    assert reply.status_code == status, reply.text
    if error is not None:
        assert reply.json()["error"] == error


async def test_with_several_workers_a_device_elsewhere_is_refused_not_queued(
    tmp_path: Path,
) -> None:
    server = await start(tmp_path, workers=2)
    try:
        async with api(server) as client:
            reply = await client.post(
                "/api/v1/devices/356307042441013/commands", json={"command": "getinfo"}
            )
            assert reply.status_code == 503
            assert reply.json()["error"] == "device_not_here"
            # A device connected to this worker is reached as with one worker.
            device = await Tracker.connect(server)
            post = asyncio.create_task(
                client.post(f"/api/v1/devices/{IMEI}/commands", json={"command": "getinfo"})
            )
            await device.read_frame()
            device.send(frame("doc-c12-getinfo-response"))
            assert (await post).json()["status"] == "answered"
            device.close()
    finally:
        await server.stop()


# -- fleetgate command ---------------------------------------------------------------------
async def run_cli(server: Server, *args: str, scope: str = "command read") -> int:
    from fleetgate.cli import main

    url = f"http://127.0.0.1:{server.api_port}"
    argv = ["command", *args, "--url", url, "--token", make_token(scope=scope)]
    return await asyncio.to_thread(main, argv)


async def test_cli_prints_the_answer_and_exits_by_the_outcome(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    device = await Tracker.connect(server)
    cli = asyncio.create_task(run_cli(server, IMEI, "getinfo"))
    assert await device.read_frame() == frame("doc-c12-getinfo-command")
    device.send(frame("doc-c12-getinfo-response"))
    assert await cli == 0
    out, err = capsys.readouterr()
    assert out == GETINFO_TEXT + "\n"
    assert "answered" in err

    cli = asyncio.create_task(run_cli(server, IMEI, "getver", "--codec", "14", "--json"))
    assert await device.read_frame() == frame("doc-c14-getver-command")
    device.send(frame("doc-c14-nack-response"))
    assert await cli == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["status"] == "nack"
    assert "nack (the device refused it: the IMEI is not its own)" in err
    device.close()


async def test_cli_reports_a_queued_command_and_a_refused_token(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run_cli(server, "356307042441013", "getinfo", "--no-wait") == 1
    assert "queued" in capsys.readouterr().err
    assert await run_cli(server, IMEI, "getinfo", scope="read") == 2
    assert "HTTP 403: insufficient_scope" in capsys.readouterr().err


async def test_cli_waits_for_a_device_that_connects_later(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = asyncio.create_task(run_cli(server, IMEI, "getio", "--timeout", "20"))
    async with api(server) as client:
        path = f"/api/v1/devices/{IMEI}/commands"
        async with asyncio.timeout(TIMEOUT):
            while not (await client.get(path)).json()["commands"]:  # noqa: ASYNC110 - the API
                await asyncio.sleep(0.05)
    device = await Tracker.connect(server)
    assert await device.read_frame() == frame("doc-c12-getio-command")
    device.send(frame("doc-c12-getio-response"))
    assert await cli == 0
    assert capsys.readouterr().out.startswith("DI1:1 DI2:0 DI3:0")
    device.close()
