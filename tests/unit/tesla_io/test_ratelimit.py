"""The sliding-window limiter and how the rate_limit config section maps onto it."""

from __future__ import annotations

import pytest

from fleetgate.config import RateLimitConfig
from fleetgate.protocols.tesla.ratelimit import (
    METRICS_ONLY,
    SlidingWindowLimiter,
    rate_limit_settings,
)


def test_allows_up_to_limit_then_refuses_within_window() -> None:
    limiter = SlidingWindowLimiter(3, 10.0)
    assert [limiter.allow(t) for t in (0.0, 1.0, 2.0, 3.0, 9.9)] == [True, True, True, False, False]


def test_window_slides_per_event_not_per_fixed_bucket() -> None:
    limiter = SlidingWindowLimiter(2, 10.0)
    assert limiter.allow(0.0)
    assert limiter.allow(5.0)
    assert not limiter.allow(9.0)
    # The event at 0.0 leaves the window at 10.0; the one at 5.0 is still inside.
    assert limiter.allow(10.0)
    assert not limiter.allow(14.0)
    assert limiter.allow(15.0)


def test_refused_events_do_not_extend_the_window() -> None:
    limiter = SlidingWindowLimiter(1, 1.0)
    assert limiter.allow(0.0)
    for t in (0.1, 0.5, 0.9):
        assert not limiter.allow(t)
    assert limiter.allow(1.0)


def test_invalid_limits_are_rejected() -> None:
    with pytest.raises(ValueError, match="positive"):
        SlidingWindowLimiter(0, 1.0)
    with pytest.raises(ValueError, match="positive"):
        SlidingWindowLimiter(1, 0.0)


def test_absent_or_disabled_is_metrics_only_like_the_reference() -> None:
    assert rate_limit_settings(None) == METRICS_ONLY
    assert rate_limit_settings(RateLimitConfig(enabled=False, message_limit=5)) == METRICS_ONLY
    assert not METRICS_ONLY.enforce
    assert (METRICS_ONLY.limit, METRICS_ONLY.interval_s) == (100, 60.0)


def test_enabled_enforces_limit_per_interval() -> None:
    settings = rate_limit_settings(
        RateLimitConfig(enabled=True, message_limit=1000, message_interval_time=30)
    )
    assert settings.enforce
    assert (settings.limit, settings.interval_s, settings.warning) == (1000, 30.0, None)


def test_zero_limit_warns_and_disables_enforcement() -> None:
    settings = rate_limit_settings(RateLimitConfig(enabled=True, message_limit=0))
    assert not settings.enforce
    assert settings.warning is not None
    assert "message_limit is 0" in settings.warning
    # The limiter the session builds from it must not crash.
    SlidingWindowLimiter(settings.limit, settings.interval_s).allow(0.0)


def test_missing_interval_warns_and_uses_a_minute() -> None:
    settings = rate_limit_settings(RateLimitConfig(enabled=True, message_limit=5))
    assert settings.enforce
    assert settings.interval_s == 60.0
    assert settings.warning is not None


def test_reference_mode_never_enforces() -> None:
    settings = rate_limit_settings(
        RateLimitConfig(enabled=True, message_limit=1, message_interval_time=1, mode="reference")
    )
    assert settings == METRICS_ONLY
