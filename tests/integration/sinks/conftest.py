"""Sink conformance plumbing: capability markers decide which tests a harness gets.

``@sinks_require("restartable")`` on a conformance test means "only for harnesses whose
class has ``restartable = True``". Tests a harness cannot run are deselected at collection,
not skipped: a ZMQ run simply has no restart tests.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sink_requires(*capabilities): generate only for harnesses having them"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        harness = getattr(getattr(item, "cls", None), "harness_class", None)
        marker = item.get_closest_marker("sink_requires")
        if (
            harness is not None
            and marker is not None
            and not all(getattr(harness, capability) for capability in marker.args)
        ):
            drop.append(item)
            continue
        keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
