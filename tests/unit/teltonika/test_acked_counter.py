"""AckedCounter: an acked frame adds one to the frames-accepted and acks counters, exactly
what the two ``labels(...).inc()`` it replaces add, in one process and with several
workers (prometheus_client's per-process files)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, values
from prometheus_client.multiprocess import MultiProcessCollector

from fleetgate.listeners.teltonika.acked import AckedCounter
from fleetgate.observability import metrics


def _sample(registry: CollectorRegistry, name: str, labels: dict[str, str]) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def _counts(registry: CollectorRegistry, protocol: str) -> tuple[float, ...]:
    return (
        _sample(registry, "fleetgate_teltonika_frames_total", {"codec": "8E", "result": "accepted"}),
        _sample(registry, "fleetgate_teltonika_frames_total", {"codec": "16", "result": "accepted"}),
        _sample(registry, "fleetgate_acks_total", {"protocol": protocol, "result": "acked"}),
    )


def test_each_frame_is_counted_at_once() -> None:
    count = AckedCounter("acked-test")
    before = _counts(metrics.REGISTRY, "acked-test")
    count("8E")
    assert _counts(metrics.REGISTRY, "acked-test") == (before[0] + 1, before[1], before[2] + 1)
    for codec in ("8E", "16", "8E"):
        count(codec)
    assert _counts(metrics.REGISTRY, "acked-test") == (before[0] + 3, before[1] + 1, before[2] + 4)


def test_several_workers_see_every_acked_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a worker's metrics are when the supervisor set PROMETHEUS_MULTIPROC_DIR: each
    # count is in the per-process file the moment it is made.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue(lambda: 7))
    monkeypatch.setattr(metrics, "_children", {})
    monkeypatch.setattr(metrics, "_adders", {})
    registry = CollectorRegistry()
    frames = Counter("fleetgate_teltonika_frames", "frames", ["codec", "result"], registry=None)
    acks = Counter("fleetgate_acks", "acks", ["protocol", "result"], registry=None)
    monkeypatch.setattr(metrics, "TELTONIKA_FRAMES", frames)
    monkeypatch.setattr(metrics, "ACKS", acks)
    count = AckedCounter("teltonika")
    MultiProcessCollector(registry, path=str(tmp_path))  # type: ignore[no-untyped-call]
    for expected in range(1, 4):
        count("8E")
        assert _counts(registry, "teltonika") == (expected, 0, expected)
    values.close_all_multiprocess_files()  # type: ignore[no-untyped-call]
