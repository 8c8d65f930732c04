"""metrics.adder: the per-frame increment that skips ``inc``'s checks adds exactly what
``inc`` adds, in one process and with several workers (prometheus_client's per-process
files). It relies on prometheus_client's value layout (``child._value.inc``): these tests
fail should a release change it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, values
from prometheus_client.multiprocess import MultiProcessCollector

from fleetgate.observability import metrics


def test_an_adder_adds_what_inc_adds() -> None:
    registry = CollectorRegistry()
    counter = Counter("frames", "frames", ["topic"], registry=registry)
    gauge = Gauge("signals", "signals", ["topic"], registry=registry)
    twin = CollectorRegistry()
    counter_twin = Counter("frames", "frames", ["topic"], registry=twin)
    gauge_twin = Gauge("signals", "signals", ["topic"], registry=twin)
    add_counter = metrics.adder(counter.labels("V"))
    add_gauge = metrics.adder(gauge.labels("V"))
    for amount in (1, 1, 250, 0, 3.5):
        add_counter(amount)
        counter_twin.labels("V").inc(amount)
        add_gauge(amount)
        gauge_twin.labels("V").inc(amount)
    for name in ("frames_total", "signals"):
        assert registry.get_sample_value(name, {"topic": "V"}) == 255.5
        assert twin.get_sample_value(name, {"topic": "V"}) == 255.5


def test_an_unlabelled_metric_has_an_adder_too() -> None:
    registry = CollectorRegistry()
    counter = Counter("acks", "acks", registry=registry)
    metrics.adder(counter)(2)
    assert registry.get_sample_value("acks_total") == 2


def test_labelled_adders_are_cached_per_metric_and_labels() -> None:
    add = metrics.labelled_adder(metrics.RECORDS, "adder-test", "V")
    assert metrics.labelled_adder(metrics.RECORDS, "adder-test", "V") is add
    before = (
        metrics.REGISTRY.get_sample_value(
            "fleetgate_records_total", {"source": "adder-test", "topic": "V"}
        )
        or 0
    )
    add(3)
    metrics.labelled(metrics.RECORDS, "adder-test", "V").inc(2)
    after = metrics.REGISTRY.get_sample_value(
        "fleetgate_records_total", {"source": "adder-test", "topic": "V"}
    )
    assert after == before + 5


def test_an_adder_writes_the_per_process_file_of_several_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a worker's metrics are when the supervisor set PROMETHEUS_MULTIPROC_DIR.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue(lambda: 7))
    counter = Counter("worker_frames", "frames", ["topic"], registry=None)
    metrics.adder(counter.labels("V"))(4)
    counter.labels("V").inc(1)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))  # type: ignore[no-untyped-call]
    assert registry.get_sample_value("worker_frames_total", {"topic": "V"}) == 5
    values.close_all_multiprocess_files()  # type: ignore[no-untyped-call]


_FORKING_WORKER = """
import os, sys
from fleetgate.observability import metrics
metrics.RECORDS.labels("fork-test", "V").inc(2)
child = os.fork()
if child == 0:
    metrics.RECORDS.labels("fork-test", "V").inc(5)
    os._exit(0)
os.waitpid(child, 0)
print(os.getpid(), child)
"""


def test_a_worker_that_forks_counts_in_its_own_file_and_the_sum_holds_both(
    tmp_path: Path,
) -> None:
    # The pid behind every increment is remembered, not asked of the kernel each time; a
    # fork must still give the child a file of its own (or it would overwrite the parent's).
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", _FORKING_WORKER], env=env, capture_output=True, text=True,
        timeout=60, check=True,
    )
    parent, child = done.stdout.split()
    files = sorted(path.name for path in tmp_path.glob("counter_*.db"))
    assert files == sorted([f"counter_{parent}.db", f"counter_{child}.db"])
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))  # type: ignore[no-untyped-call]
    sample = {"source": "fork-test", "topic": "V"}
    assert registry.get_sample_value("fleetgate_records_total", sample) == 7
