"""Ledger, router, sink runners, ack policy: everything between a decoded record and its sinks."""

from fleetgate.config import AckLevel
from fleetgate.pipeline.ack import AckPolicy
from fleetgate.pipeline.acks import AckQueue
from fleetgate.pipeline.ledger import Ledger
from fleetgate.pipeline.pipeline import Pipeline
from fleetgate.pipeline.router import Router
from fleetgate.pipeline.runner import RunnerSettings, SinkRunner

__all__ = [
    "AckLevel",
    "AckPolicy",
    "AckQueue",
    "Ledger",
    "Pipeline",
    "Router",
    "RunnerSettings",
    "SinkRunner",
]
