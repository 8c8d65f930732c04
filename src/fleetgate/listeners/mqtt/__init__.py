"""The CAN-gateway MQTT subscriber (``mqtt_ingest``) and its settings.

:class:`MqttIngestListener` takes ``(settings, pipeline)``; :func:`create_listener` is
the factory :mod:`fleetgate.app` calls (it returns None while the config has no enabled
``mqtt_ingest`` section).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fleetgate.listeners.mqtt.listener import IngestPipeline, MqttIngestListener
from fleetgate.listeners.mqtt.settings import MqttIngestConfig, MqttIngestTls

if TYPE_CHECKING:
    from fleetgate.app import ServerContext

__all__ = [
    "IngestPipeline",
    "MqttIngestConfig",
    "MqttIngestListener",
    "MqttIngestTls",
    "create_listener",
]


def create_listener(context: ServerContext, worker: int = 0) -> MqttIngestListener | None:
    """Listener factory for :mod:`fleetgate.app` (``config.mqtt_ingest``)."""
    settings = getattr(context.config, "mqtt_ingest", None)
    if settings is None:
        return None
    if not isinstance(settings, MqttIngestConfig):
        settings = MqttIngestConfig.model_validate(settings)
    if not settings.enabled:
        return None
    return MqttIngestListener(settings, context.pipeline, worker=worker)
