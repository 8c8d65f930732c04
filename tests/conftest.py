"""Fixtures every test gets."""

from __future__ import annotations

import fcntl
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from fleetgate.observability.ratelimit import reset_all

# No timing thresholds in tests: hypothesis's per-example deadline and its "too slow"
# health check fail a correct test on a loaded machine (seen with 4 xdist workers beside
# benchmarks). Tests that set their own settings keep these two unless they name them.
settings.register_profile(
    "fleetgate", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("fleetgate")


@pytest.fixture(autouse=True)
def _fresh_log_limits() -> None:
    """Each test starts with every rate-limited log site's window empty: a line an
    earlier test used up must not be missing from this test's log."""
    reset_all()


# Tests marked ``fixed_ports`` run the README's literal commands on 8080, 5027, 4443...:
# one pytest-xdist worker runs them all (``make test`` uses --dist loadgroup), and a lock
# for the whole machine keeps two suites (a second checkout) from running them at once.
FIXED_PORTS_LOCK = Path(tempfile.gettempdir()) / "fleetgate-tests-fixed-ports.lock"


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("fixed_ports") is not None:
            item.add_marker(pytest.mark.xdist_group("fixed_ports"))


@pytest.fixture(autouse=True)
def _fixed_ports_one_at_a_time(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.get_closest_marker("fixed_ports") is None:
        yield
        return
    with FIXED_PORTS_LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
