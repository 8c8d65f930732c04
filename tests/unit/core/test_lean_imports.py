"""fleetgate.lean_imports: prometheus_client without its HTTP servers and push client until
something asks the package for them; then the whole package, as prometheus_client wrote it
(issue 11: idle memory)."""

from __future__ import annotations

import json
import subprocess
import sys

# In a child process: the test process has imported prometheus_client whole already.
CHILD = """
import json, sys
import fleetgate
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
import prometheus_client

HEAVY = ("prometheus_client.exposition", "http.server", "wsgiref", "urllib.request", "gzip",
         "prometheus_client.process_collector")
out = {"before": sorted(n for n in HEAVY if n in sys.modules)}
import prometheus_client.metrics as m
out["same"] = [Counter is m.Counter, Gauge is m.Gauge, Histogram is m.Histogram]
registry = CollectorRegistry()
Counter("c", "a counter", registry=registry).inc()
# A name the package's own __init__ sets: it runs now.
start = prometheus_client.start_http_server
out["after"] = sorted(n for n in HEAVY if n in sys.modules)
out["text"] = prometheus_client.generate_latest(registry).decode()
out["process"] = any(
    s.name.startswith("process_") for f in prometheus_client.REGISTRY.collect()
    for s in f.samples
)
from prometheus_client import multiprocess
out["multiprocess"] = multiprocess.__name__
out["same"] += [prometheus_client.Counter is m.Counter, callable(start)]
try:
    prometheus_client.no_such_name
    out["missing"] = False
except AttributeError:
    out["missing"] = True
print(json.dumps(out))
"""


def run_child(code: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    result: dict[str, object] = json.loads(out)
    return result


def test_lean_until_asked_then_whole() -> None:
    result = run_child(CHILD)
    assert result["before"] == []
    assert result["after"] == [
        "gzip", "http.server", "prometheus_client.exposition",
        "prometheus_client.process_collector", "urllib.request", "wsgiref",
    ]
    assert all(result["same"])  # type: ignore[arg-type]
    assert "c_total 1.0" in result["text"]  # type: ignore[operator]
    assert result["process"] is True
    assert result["multiprocess"] == "prometheus_client.multiprocess"
    assert result["missing"] is True


def test_imported_before_fleetgate_it_stays_as_it_is() -> None:
    code = (
        "import sys, json, prometheus_client, fleetgate\n"
        "print(json.dumps({'exposition': 'prometheus_client.exposition' in sys.modules,"
        " 'finder': type(sys.modules['prometheus_client'].__spec__.loader).__name__}))"
    )
    assert run_child(code) == {"exposition": True, "finder": "SourceFileLoader"}
