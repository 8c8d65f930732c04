"""The one sink registry: every sink a ``records`` list may name, with its settings model.

Each sink module declares what the registry needs on its class: ``name``, ``Settings``
(the model of its config section, also the section's key) and ``label`` (set when the
sink needs its section: the reference's "expected <label> to be configured"). The
configuration reads the sections through :func:`section_models`; the app builds sinks
with :func:`build_sink`. Plug-ins add classes with :func:`register_sink`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping

from fleetgate.settings import Section
from fleetgate.sinks.base import Sink, SinkContext
from fleetgate.sinks.jsonl import JsonlSink
from fleetgate.sinks.kafka import KafkaSink
from fleetgate.sinks.kinesis import KinesisSink
from fleetgate.sinks.logger import LoggerSink
from fleetgate.sinks.mqtt import MqttSink
from fleetgate.sinks.nats import NatsSink
from fleetgate.sinks.postgres import PostgresSink
from fleetgate.sinks.pubsub import PubSubSink
from fleetgate.sinks.redis import RedisSink
from fleetgate.sinks.sqlite import SqliteSink
from fleetgate.sinks.zmq import ZmqSink

_sinks: dict[str, type[Sink]] = {
    cls.name: cls
    for cls in (
        LoggerSink,
        JsonlSink,
        SqliteSink,
        KafkaSink,
        KinesisSink,
        PubSubSink,
        MqttSink,
        ZmqSink,
        RedisSink,
        NatsSink,
        PostgresSink,
    )
}
# Sinks whose settings come from a section of their own name in the config file (the
# store's file is the ``store`` section's business).
_NO_SECTION = frozenset({SqliteSink.name})


# The install extra of each sink whose client library is not part of ``pip install
# fleetgate``, and the modules that extra brings (the sink modules import them lazily).
SINK_EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    KafkaSink.name: ("kafka", ("confluent_kafka",)),
    KinesisSink.name: ("kinesis", ("aiobotocore",)),
    PubSubSink.name: ("pubsub", ("google.cloud.pubsub_v1",)),
    RedisSink.name: ("redis", ("redis",)),
    NatsSink.name: ("nats", ("nats",)),
    PostgresSink.name: ("postgres", ("psycopg",)),
    ZmqSink.name: ("zmq", ("zmq",)),
    MqttSink.name: ("mqtt", ("aiomqtt",)),
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a parent package (``google``) is missing
        return False


def missing_extra(name: str) -> str | None:
    """Why sink ``name`` cannot run here (its extra is not installed), or ``None``."""
    extra, modules = SINK_EXTRAS.get(name, ("", ()))
    absent = [module for module in modules if not _installed(module)]
    if not absent:
        return None
    return (
        f"the {name} sink needs its extra: pip install 'fleetgate[{extra}]' "
        f"({', '.join(absent)} not installed)"
    )


def register_sink(cls: type[Sink]) -> type[Sink]:
    """Class decorator: make a sink available under ``cls.name`` (for plug-ins)."""
    _sinks[cls.name] = cls
    return cls


def known_sinks() -> list[str]:
    """Every sink name a ``records`` list may use."""
    return sorted(_sinks)


def sink_class(name: str) -> type[Sink]:
    """The class registered as ``name``."""
    cls = _sinks.get(name)
    if cls is None:
        raise KeyError(f"unknown sink {name!r}; known: {', '.join(known_sinks())}")
    return cls


def section_models() -> dict[str, type[Section]]:
    """Config key → settings model, for every sink configured by a section of its own."""
    return {name: cls.Settings for name, cls in _sinks.items() if name not in _NO_SECTION}


def build_sink(
    name: str, settings: Section | Mapping[str, object] | None, context: SinkContext
) -> Sink:
    """A sink instance from its validated section (``None``: the sink's defaults)."""
    cls = sink_class(name)
    return cls(settings if settings is not None else {}, context)
