"""A loopback MQTT broker for ``fleetgate demo`` when no broker is configured.

A private mosquitto (Debian's ``mosquitto`` package, which ``make install`` brings) runs as
a child process on a free loopback port, anonymous, plain TCP, with persistent sessions
in memory: QoS 1 messages wait for a subscriber that is away. It speaks MQTT 5 and 3.1.1,
so the demo's subscriber uses the same settings as against a real deployment's broker
(mosquitto, EMQX, HiveMQ or AWS IoT Core). The broker stops with the demo.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

from fleetgate.lifetime import end_with_parent
from fleetgate.mqtt_settings import MqttIngestConfig

MOSQUITTO_PATHS = ("mosquitto", "/usr/sbin/mosquitto")
START_TIMEOUT_S = 10.0


class EmbeddedBrokerUnavailableError(RuntimeError):
    """No mosquitto binary to run."""


def mosquitto_binary() -> str | None:
    """The mosquitto executable, if installed."""
    for name in MOSQUITTO_PATHS:
        found = shutil.which(name)
        if found:
            return found
    return None


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class EmbeddedBroker:
    """mosquitto on ``host:port`` (port 0: a free port, see :attr:`port` after start)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.requested_port = port
        self.port = 0
        self._process: asyncio.subprocess.Process | None = None
        self._directory: tempfile.TemporaryDirectory[str] | None = None

    async def start(self) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise EmbeddedBrokerUnavailableError(
                "the demo's MQTT broker needs mosquitto (Debian: apt-get install mosquitto; "
                "make install does it), or configure mqtt_ingest.url"
            )
        self.port = self.requested_port or _free_port(self.host)
        self._directory = tempfile.TemporaryDirectory(prefix="fleetgate-broker-")
        conf = Path(self._directory.name) / "mosquitto.conf"
        conf.write_text(
            "\n".join(
                [
                    "user root",  # as root mosquitto would switch to an unprivileged user
                    "persistence false",
                    "log_dest none",
                    "max_queued_messages 0",
                    f"listener {self.port} {self.host}",
                    "allow_anonymous true",
                    "",
                ]
            )
        )
        self._process = await asyncio.create_subprocess_exec(
            binary, "-c", str(conf),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            preexec_fn=end_with_parent,  # a server killed with SIGKILL takes its broker along
        )
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT_S
        while not await self._accepts():
            if self._process.returncode is not None:
                error = b""
                if self._process.stderr is not None:
                    error = await self._process.stderr.read()
                await self.stop()
                raise EmbeddedBrokerUnavailableError(
                    f"mosquitto exited: {error.decode(errors='replace').strip()}"
                )
            if asyncio.get_running_loop().time() > deadline:
                await self.stop()
                raise EmbeddedBrokerUnavailableError("mosquitto did not open its port")
            await asyncio.sleep(0.02)

    async def _accepts(self) -> bool:
        try:
            _, writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def ingest_settings(self, **overrides: Any) -> MqttIngestConfig:
        """``mqtt_ingest`` settings for this broker."""
        values: dict[str, Any] = {"url": self.url}
        values.update(overrides)
        return MqttIngestConfig.model_validate(values)

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                process.kill()
                await process.wait()
        directory, self._directory = self._directory, None
        if directory is not None:
            directory.cleanup()

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
