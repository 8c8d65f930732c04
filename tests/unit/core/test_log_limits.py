"""Rate-limited log lines: the first lines of a window, then one summary with the count."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from fleetgate.observability import metrics
from fleetgate.observability.ratelimit import LimitedLog


def suppressed_metric(key: str) -> float:
    value = metrics.REGISTRY.get_sample_value("fleetgate_log_lines_suppressed_total", {"key": key})
    return value or 0.0


def wait_until(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.01)


def test_burst_then_one_summary_when_the_window_ends(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.limits.burst")
    limited = LimitedLog(logger, "test.burst", burst=3, interval_s=0.3)
    before = suppressed_metric("test.burst")
    with caplog.at_level(logging.WARNING, logger="test.limits.burst"):
        passed = [limited.warning("junk from %s", f"peer-{i}") for i in range(20)]
        assert passed == [True] * 3 + [False] * 17
        assert [r.getMessage() for r in caplog.records] == [
            "junk from peer-0",
            "junk from peer-1",
            "junk from peer-2",
        ]
        # No further event is needed: a timer writes the summary at the window's end.
        wait_until(lambda: len(caplog.records) == 4)
    summary = caplog.records[3]
    assert summary.levelno == logging.WARNING
    assert summary.getMessage() == "junk from peer-19 (suppressed 17 similar lines in 0.3 s)"
    assert summary.fields == {"suppressed": 17, "log_key": "test.burst"}  # type: ignore[attr-defined]
    assert suppressed_metric("test.burst") == before + 17
    # A new window lets lines through again.
    with caplog.at_level(logging.WARNING, logger="test.limits.burst"):
        assert limited.warning("junk again")


def test_nothing_suppressed_means_no_summary(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.limits.quiet")
    limited = LimitedLog(logger, "test.quiet", burst=5, interval_s=0.1)
    with caplog.at_level(logging.INFO, logger="test.limits.quiet"):
        for _ in range(5):
            limited.info("fine")
        time.sleep(0.3)
        limited.flush()
    assert [r.getMessage() for r in caplog.records] == ["fine"] * 5


def test_a_disabled_level_is_neither_logged_nor_counted(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.limits.disabled")
    limited = LimitedLog(logger, "test.disabled", burst=1, interval_s=60)
    with caplog.at_level(logging.WARNING, logger="test.limits.disabled"):
        for _ in range(5):
            assert not limited.debug("noise")
    assert limited.suppressed == 0
    assert caplog.records == []


def test_threads_share_one_budget(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.limits.threads")
    limited = LimitedLog(logger, "test.threads", burst=10, interval_s=60)
    with caplog.at_level(logging.ERROR, logger="test.limits.threads"):
        threads = [
            threading.Thread(target=lambda: [limited.error("x") for _ in range(200)])
            for _ in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(caplog.records) == 10
        assert limited.suppressed == 8 * 200 - 10
        limited.flush()
    assert caplog.records[-1].getMessage() == "x (suppressed 1590 similar lines in 60 s)"


def test_flush_writes_the_summary_at_once(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.limits.flush")
    limited = LimitedLog(logger, "test.flush", burst=1, interval_s=3600)
    with caplog.at_level(logging.WARNING, logger="test.limits.flush"):
        limited.warning("a")
        limited.warning("b")
        limited.flush()
        limited.flush()  # nothing left: no second summary
    assert [r.getMessage() for r in caplog.records] == [
        "a",
        "b (suppressed 1 similar lines in 3600 s)",
    ]


@pytest.mark.parametrize(("burst", "interval"), [(0, 1.0), (1, 0.0)])
def test_nonsense_limits_are_refused(burst: int, interval: float) -> None:
    with pytest.raises(ValueError, match="burst"):
        LimitedLog(logging.getLogger("x"), "x", burst=burst, interval_s=interval)
