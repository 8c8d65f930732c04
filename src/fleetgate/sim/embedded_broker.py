"""An MQTT broker inside the fleetgate process, for ``fleetgate demo`` without a broker.

amqtt (a pure-Python asyncio broker) on loopback, anonymous, plain TCP, in the running
event loop, with persistent sessions (QoS 1 messages wait for a subscriber that is away,
in memory). It speaks **MQTT 3.1.1 only**: the subscriber must be configured with
``protocol: "3.1.1"`` (:meth:`EmbeddedBroker.ingest_settings` does that) and shared
subscriptions are not available. Good for a demo and for trying things out; a real
deployment points ``mqtt_ingest.url`` at mosquitto, EMQX, HiveMQ or AWS IoT Core.

amqtt is the optional ``demo`` extra (``pip install 'fleetgate[demo]'``; ``make install``
includes it), because it pins its own websockets version.
"""

from __future__ import annotations

import logging
from typing import Any

from fleetgate.listeners.mqtt.settings import MqttIngestConfig

# amqtt logs every connection and packet at INFO.
QUIET_LOGGERS = ("amqtt", "transitions")


class EmbeddedBrokerUnavailableError(RuntimeError):
    """amqtt is not installed."""


class EmbeddedBroker:
    """amqtt on ``host:port`` (port 0: any free port, see :attr:`port` after start)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.requested_port = port
        self._broker: Any = None
        self.port = 0

    async def start(self) -> None:
        try:
            from amqtt.broker import Broker
        except ImportError as exc:  # pragma: no cover - part of the demo extra
            raise EmbeddedBrokerUnavailableError(
                "the embedded MQTT broker needs amqtt: pip install 'fleetgate[demo]'"
            ) from exc
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        broker = Broker(
            {
                "listeners": {
                    "default": {"type": "tcp", "bind": f"{self.host}:{self.requested_port}"}
                },
                # No $SYS publisher, no packet logger; every loopback client may connect and
                # keeps its session (see amqtt_auth).
                "plugins": {"fleetgate.sim.amqtt_auth.LoopbackAuthPlugin": {}},
            }
        )
        await broker.start()
        self._broker = broker
        self.port = self._bound_port(broker)

    @staticmethod
    def _bound_port(broker: Any) -> int:
        # amqtt has no public accessor for the bound address of a port-0 listener.
        server = broker._servers["default"].instance
        return int(server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def ingest_settings(self, **overrides: Any) -> MqttIngestConfig:
        """``mqtt_ingest`` settings for this broker (MQTT 3.1.1)."""
        values: dict[str, Any] = {"url": self.url, "protocol": "3.1.1"}
        values.update(overrides)
        return MqttIngestConfig.model_validate(values)

    async def stop(self) -> None:
        broker, self._broker = self._broker, None
        if broker is not None:
            await broker.shutdown()

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
