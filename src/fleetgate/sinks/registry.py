"""The one sink registry: every sink a ``records`` list may name, with its settings model.

Each sink module declares what the registry needs on its class: ``name``, ``Settings``
(the model of its config section, also the section's key) and ``label`` (set when the
sink needs its section: the reference's "expected <label> to be configured"). The
configuration reads the sections through :func:`section_models`; the app builds sinks
with :func:`build_sink`. Plug-ins add classes with :func:`register_sink`.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterator, Mapping

from fleetgate.settings import Section
from fleetgate.sinks.base import Sink, SinkContext

# Built-in sinks by name: "module:class", imported when the name is first used (a sink's
# section in the config, a ``records`` rule naming it, building it). Their settings models
# and code cost a server memory it needs only for the sinks it runs.
_BUILT_IN: dict[str, str] = {
    "logger": "fleetgate.sinks.logger:LoggerSink",
    "jsonl": "fleetgate.sinks.jsonl:JsonlSink",
    "sqlite": "fleetgate.sinks.sqlite:SqliteSink",
    "kafka": "fleetgate.sinks.kafka:KafkaSink",
    "kinesis": "fleetgate.sinks.kinesis:KinesisSink",
    "pubsub": "fleetgate.sinks.pubsub:PubSubSink",
    "mqtt": "fleetgate.sinks.mqtt:MqttSink",
    "zmq": "fleetgate.sinks.zmq:ZmqSink",
    "redis": "fleetgate.sinks.redis:RedisSink",
    "nats": "fleetgate.sinks.nats:NatsSink",
    "postgres": "fleetgate.sinks.postgres:PostgresSink",
}
_sinks: dict[str, type[Sink] | str] = dict(_BUILT_IN)
# Sinks whose settings come from a section of their own name in the config file (the
# store's file is the ``store`` section's business).
_NO_SECTION = frozenset({"sqlite"})


# The install extra of each sink whose client library is not part of ``pip install
# fleetgate``, and the modules that extra brings (the sink modules import them lazily).
SINK_EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "kafka": ("kafka", ("confluent_kafka",)),
    "kinesis": ("kinesis", ("aiobotocore",)),
    "pubsub": ("pubsub", ("google.cloud.pubsub_v1",)),
    "redis": ("redis", ("redis",)),
    "nats": ("nats", ("nats",)),
    "postgres": ("postgres", ("psycopg",)),
    "zmq": ("zmq", ("zmq",)),
    "mqtt": ("mqtt", ("aiomqtt",)),
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
    """The class registered as ``name`` (a built-in one is imported now)."""
    cls = _sinks.get(name)
    if cls is None:
        raise KeyError(f"unknown sink {name!r}; known: {', '.join(known_sinks())}")
    if isinstance(cls, str):
        module, _, attribute = cls.partition(":")
        cls = _sinks[name] = getattr(importlib.import_module(module), attribute)
    return cls


class _SectionModels(Mapping[str, type[Section]]):
    """Config key → settings model; a model is imported when its key is looked up."""

    def __init__(self, names: list[str]) -> None:
        self._names = names

    def __getitem__(self, name: str) -> type[Section]:
        if name not in self._names:
            raise KeyError(name)
        return sink_class(name).Settings

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def section_models() -> Mapping[str, type[Section]]:
    """Config key → settings model, for every sink configured by a section of its own
    (imported on lookup: iterating gives the keys alone)."""
    return _SectionModels([name for name in _sinks if name not in _NO_SECTION])


def build_sink(
    name: str, settings: Section | Mapping[str, object] | None, context: SinkContext
) -> Sink:
    """A sink instance from its validated section (``None``: the sink's defaults)."""
    cls = sink_class(name)
    return cls(settings if settings is not None else {}, context)
