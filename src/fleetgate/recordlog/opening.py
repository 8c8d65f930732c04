"""A reader of the log a configuration writes to (its ``kafka`` or ``nats`` section)."""

from __future__ import annotations

from fleetgate.config import Config
from fleetgate.recordlog.reader import LogKind, LogReader, ReadOptions
from fleetgate.settings import ConfigError


def open_reader(config: Config, kind: LogKind, options: ReadOptions) -> LogReader:
    """A reader of the log the config's ``kafka`` or ``nats`` section writes to."""
    section = config.sink_section(kind)
    if kind == "kafka":
        from fleetgate.recordlog.kafka import KafkaLogReader
        from fleetgate.sinks.kafka import KafkaSettings

        if not isinstance(section, KafkaSettings):
            raise ConfigError("kafka: reading the log needs the kafka section (bootstrap.servers)")
        return KafkaLogReader(section.properties, config.namespace, options)
    from fleetgate.recordlog.nats import NatsLogReader
    from fleetgate.sinks.nats import NatsSettings

    settings = section if isinstance(section, NatsSettings) else NatsSettings()
    return NatsLogReader(settings, config.namespace, options)
