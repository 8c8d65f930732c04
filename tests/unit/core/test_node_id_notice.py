"""A node whose record ids go to a shared log is told when it names itself by host name."""

from __future__ import annotations

import logging
import socket
from typing import Any

import pytest

from fleetgate.commands.serve import warn_shared_node_id
from fleetgate.config import build_config

KAFKA = {"kafka": {"bootstrap.servers": "127.0.0.1:9"}}


def notices(caplog: pytest.LogCaptureFixture, raw: dict[str, Any]) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fleetgate"):
        warn_shared_node_id(build_config(raw, environ={}))
    return [r.getMessage() for r in caplog.records if "node_id" in r.getMessage()]


def test_a_shared_log_without_node_id_names_the_host_and_what_is_shared(
    caplog: pytest.LogCaptureFixture,
) -> None:
    (line,) = notices(caplog, {"records": {"V": ["kafka"]}, **KAFKA})
    assert repr(socket.gethostname()) in line
    assert "sharing kafka" in line


def test_no_notice_with_a_node_id_or_without_a_shared_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert notices(caplog, {"records": {"V": ["kafka"]}, "node_id": "node-1", **KAFKA}) == []
    assert notices(caplog, {"records": {"V": ["jsonl"]}}) == []
