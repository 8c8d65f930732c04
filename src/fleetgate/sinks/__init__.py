"""Sinks: one module per backend behind the one :class:`~fleetgate.sinks.base.Sink` interface."""

from fleetgate.sinks.base import (
    Health,
    PermanentSinkError,
    Sink,
    SinkContext,
    SinkError,
    TransientSinkError,
    known_sinks,
    register_sink,
    sink_class,
)

__all__ = [
    "Health",
    "PermanentSinkError",
    "Sink",
    "SinkContext",
    "SinkError",
    "TransientSinkError",
    "known_sinks",
    "register_sink",
    "sink_class",
]
