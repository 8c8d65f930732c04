"""The CAN-gateway MQTT subscriber (``mqtt_ingest``) and its settings.

:class:`MqttIngestListener` takes ``(settings, pipeline)``; :func:`create_listener` is
the factory :mod:`fleetgate.app` calls (it returns None while the config has no enabled
``mqtt_ingest`` section).
"""

from __future__ import annotations

from fleetgate.listeners.mqtt.listener import IngestPipeline, MqttIngestListener
from fleetgate.mqtt_settings import MqttIngestConfig, MqttIngestTls
from fleetgate.runtime import ServerContext

__all__ = [
    "IngestPipeline",
    "MqttIngestConfig",
    "MqttIngestListener",
    "MqttIngestTls",
    "create_listener",
]


def create_listener(context: ServerContext) -> MqttIngestListener | None:
    """Listener factory (see :data:`fleetgate.app.LISTENER_FACTORIES`): ``mqtt_ingest``."""
    settings = context.config.mqtt_ingest
    if settings is None or not settings.enabled:
        return None
    return MqttIngestListener(settings, context.pipeline)
