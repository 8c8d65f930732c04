"""Secrets never reach a log line: URL credentials and secret key=value pairs are masked."""

from __future__ import annotations

import logging
import sys

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetgate.observability.logging import JsonFormatter, TextFormatter, fields
from fleetgate.observability.redact import redact, redact_tree

# What a URL's password may hold unencoded (RFC 3986 userinfo, minus the delimiters).
PASSWORD = st.text(
    alphabet=st.characters(
        codec="ascii", exclude_characters="@/\\\"'<> \t\r\n\x0b\x0c", exclude_categories=["Cc"]
    ),
    min_size=1,
    max_size=40,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nats://alice:s3cret@127.0.0.1:4222", "nats://alice:***@127.0.0.1:4222"),
        ("nats://TOKEN123@nats.example:4222", "nats://***@nats.example:4222"),
        ("redis://:pw@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("postgresql://u:p%40ss@db/x", "postgresql://u:***@db/x"),
        ("host=db user=u password=hunter2 dbname=x", "host=db user=u password=*** dbname=x"),
        ("https://api/x?access_token=abc&n=1", "https://api/x?access_token=***&n=1"),
        (
            '{"sasl.password": "pw", "bootstrap.servers": "k:9092"}',
            '{"sasl.password": "***", "bootstrap.servers": "k:9092"}',
        ),
        ("{'password': 'pw'}", "{'password': '***'}"),
        # Nothing secret: unchanged.
        ("http://host:8080/path@x", "http://host:8080/path@x"),
        ("tracker connected imei=356307042441013", "tracker connected imei=356307042441013"),
        ("mail admin@example.com", "mail admin@example.com"),
        ("idle_timeout_s=600 records=3", "idle_timeout_s=600 records=3"),
        # The sign-in link is logged on purpose; its token is in the fragment.
        (
            "sign-in link: http://127.0.0.1:8080/#token=eyJabc",
            "sign-in link: http://127.0.0.1:8080/#token=eyJabc",
        ),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


@given(PASSWORD, st.sampled_from(["nats", "redis", "mqtt", "postgresql", "amqp", "https"]))
def test_any_url_password_is_masked(password: str, scheme: str) -> None:
    text = f"{scheme}: {scheme}://fleet:{password}@10.0.0.7:4222 unreachable"
    assert redact(text) == f"{scheme}: {scheme}://fleet:***@10.0.0.7:4222 unreachable"


def test_redact_tree_masks_nested_strings_only() -> None:
    body = {
        "sinks": {"nats": {"status": "down", "queued": 3, "error": "nats://a:b@h:1 refused"}},
        "list": ["x://t@h"],
    }
    assert redact_tree(body) == {
        "sinks": {"nats": {"status": "down", "queued": 3, "error": "nats://a:***@h:1 refused"}},
        "list": ["x://***@h"],
    }


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("fleetgate.test", logging.ERROR, __file__, 1, msg, args, None)
    record.fields = fields(**extra)["fields"]
    return record


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()])
def test_both_log_formats_mask_message_fields_and_tracebacks(
    formatter: logging.Formatter,
) -> None:
    record = _record("%s: down", "nats://bob:pa55word@h:4222", servers=["nats://bob:pa55word@h"])
    try:
        raise ConnectionError("cannot reach nats://bob:pa55word@h:4222")
    except ConnectionError:
        record.exc_info = sys.exc_info()
    line = formatter.format(record)
    assert "pa55word" not in line
    # message, field, exception text (and the traceback's source line)
    assert line.count("bob:***@") >= 3
    if isinstance(formatter, JsonFormatter):
        orjson.loads(line)  # still one valid JSON object
