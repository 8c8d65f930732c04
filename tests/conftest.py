"""Fixtures every test gets."""

from __future__ import annotations

import pytest

from fleetgate.observability.ratelimit import reset_all


@pytest.fixture(autouse=True)
def _fresh_log_limits() -> None:
    """Each test starts with every rate-limited log site's window empty: a line an
    earlier test used up must not be missing from this test's log."""
    reset_all()
