"""SIGHUP reloads the vehicle port's certificate without dropping connected vehicles.

A real ``fleetgate serve`` process, two server certificates from one CA: after the files
are replaced and SIGHUP sent, a connected vehicle keeps its session (its next frame is
acked) and a new vehicle's handshake shows the new certificate. Files that do not load
leave the running certificate in place.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from websockets.asyncio.client import ClientConnection, connect

from fleetgate.pki import DevPki, init_pki, issue_server_cert, write_cert, write_key
from fleetgate.protocols.tesla.envelope import MESSAGE_STREAM_ACK
from tests.e2e.test_workers import free_port
from tests.integration.tesla.helpers import receive, stream_frame, vehicle_context

pytestmark = pytest.mark.e2e

VIN = "5YJ3E1EA7KF000001"
TIMEOUT = 10.0


class Process:
    def __init__(self, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.process = process
        self.log_path = log_path

    def lines(self) -> list[dict[str, Any]]:
        text = self.log_path.read_text(encoding="utf-8")
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    def wait_for(self, msg: str, after: int = 0) -> dict[str, Any]:
        return self.wait_for_prefix(msg, after, exact=True)

    def wait_for_prefix(self, msg: str, after: int = 0, exact: bool = False) -> dict[str, Any]:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = [
                entry
                for entry in self.lines()[after:]
                if (entry["msg"] == msg if exact else entry["msg"].startswith(msg))
            ]
            if found:
                return found[-1]
            assert self.process.poll() is None, self.log_path.read_text()
            time.sleep(0.05)
        raise AssertionError(f"{msg!r} never logged:\n{self.log_path.read_text()}")


def serial_of(ws: ClientConnection) -> int:
    der = ws.transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return int(x509.load_der_x509_certificate(der).serial_number)


def replace_server_certificate(pki: DevPki) -> int:
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    cert, key = issue_server_cert(ca, ca_key, ["localhost"])  # type: ignore[arg-type]
    # Written beside and renamed over: the server never reads a half-written file.
    new_cert, new_key = Path(f"{pki.server_cert}.new"), Path(f"{pki.server_key}.new")
    write_cert(new_cert, cert)
    write_key(new_key, key)
    os.replace(new_key, pki.server_key)
    os.replace(new_cert, pki.server_cert)
    return int(cert.serial_number)


async def vehicle(port: int, pki: DevPki) -> ClientConnection:
    return await connect(
        f"wss://localhost:{port}/",
        ssl=vehicle_context(pki, VIN),
        open_timeout=TIMEOUT,
        ping_interval=None,
        compression=None,
    )


async def acked(ws: ClientConnection, txid: str) -> bool:
    await ws.send(stream_frame(txid=txid, sender=f"vehicle_device.{VIN}"))
    reply = await receive(ws, TIMEOUT)
    return reply.message_type == MESSAGE_STREAM_ACK and reply.txid == txid.encode()


def start(tmp_path: Path, pki: DevPki, port: int, *args: str) -> Process:
    config = {
        "data_dir": str(tmp_path / "data"),
        "json_log_enable": True,
        "host": "127.0.0.1",
        "port": port,
        "teltonika": {"enabled": False},
        "api": {"enabled": False},
        **pki.config_snippet(),
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fleetgate",
                "serve",
                "--config",
                str(tmp_path / "config.json"),
                *args,
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    return Process(process, log_path)


async def test_sighup_reloads_the_certificate_and_keeps_vehicles(tmp_path: Path) -> None:
    pki = init_pki(tmp_path / "pki", host="localhost", vins=[VIN])
    first_serial = x509.load_pem_x509_certificate(pki.server_cert.read_bytes()).serial_number
    port = free_port()
    served = start(tmp_path, pki, port)
    process = served.process
    try:
        served.wait_for("tesla listening")
        connected = await vehicle(port, pki)
        assert serial_of(connected) == first_serial
        assert await acked(connected, "before-reload")

        second_serial = replace_server_certificate(pki)
        mark = len(served.lines())
        process.send_signal(signal.SIGHUP)
        reloaded = served.wait_for("tls certificate reloaded", after=mark)
        assert reloaded["serial"] == format(second_serial, "x")

        # The connected vehicle kept its session; a new one meets the new certificate.
        assert await acked(connected, "after-reload")
        newcomer = await vehicle(port, pki)
        assert serial_of(newcomer) == second_serial
        assert await acked(newcomer, "newcomer")

        # A broken file: the error is logged, the running certificate stays.
        pki.server_cert.write_text("not a certificate")
        mark = len(served.lines())
        process.send_signal(signal.SIGHUP)
        failed = served.wait_for_prefix("tls reload failed", after=mark)
        assert "keeping the running certificate" in failed["msg"]
        third = await vehicle(port, pki)
        assert serial_of(third) == second_serial
        for ws in (connected, newcomer, third):
            await ws.close()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


async def test_the_supervisor_passes_sighup_to_every_worker(tmp_path: Path) -> None:
    pki = init_pki(tmp_path / "pki", host="localhost", vins=[VIN])
    port = free_port()
    served = start(tmp_path, pki, port, "--workers", "2")
    process = served.process
    try:
        served.wait_for("2 workers ready")
        second_serial = replace_server_certificate(pki)
        mark = len(served.lines())
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while True:
            reloaded = [
                entry
                for entry in served.lines()[mark:]
                if entry["msg"] == "tls certificate reloaded"
            ]
            if len(reloaded) == 2:
                break
            assert time.monotonic() < deadline, served.log_path.read_text()
            await asyncio.sleep(0.05)
        assert sorted(entry["worker"] for entry in reloaded) == [0, 1]
        # Whichever worker takes the connection serves the new certificate.
        for _ in range(4):
            ws = await vehicle(port, pki)
            assert serial_of(ws) == second_serial
            await ws.close()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
