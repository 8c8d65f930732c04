"""The load generator behind ``fleetgate bench load``: all three protocols at once, from
several processes, with pre-encoded frames, measuring what the server acknowledges.

Modules: ``settings`` (what a run is, who runs which device), ``device`` (ack window and
rate), ``teltonika`` / ``tesla`` / ``gateways`` (one device driver each, with its frame
pool), ``stats`` and ``histogram`` (counters and latencies, mergeable across processes),
``worker`` (one generator process), ``run`` (the parent: start, steer, merge),
``report`` (text and JSON), ``procstats`` (server CPU and memory from /proc), ``stored``
(records fleetgate stored, from its API).
"""

from __future__ import annotations

from fleetgate.sim.load.report import LoadReport
from fleetgate.sim.load.run import LoadRunError, run_load
from fleetgate.sim.load.settings import LoadSettings, LoadSettingsError

__all__ = ["LoadReport", "LoadRunError", "LoadSettings", "LoadSettingsError", "run_load"]
