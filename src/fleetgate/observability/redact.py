"""Secrets out of text: credentials in URLs and ``password=...`` pairs become ``***``.

Configured addresses may carry credentials (``nats://user:pass@host``, a Postgres DSN with
``password=``), and client libraries put those addresses into their error messages. Every
log line passes through :func:`redact` in the formatters of
:mod:`fleetgate.observability.logging`, and ``/health`` passes its error texts through
:func:`redact_tree`, so a secret never reaches a log file or an unauthenticated endpoint
even when a library quotes it.

What is replaced:

* the password of a URL's userinfo: ``scheme://user:secret@host`` → ``scheme://user:***@``;
  a userinfo without a password is a token for some services (``nats://TOKEN@host``), so
  it is replaced whole: ``scheme://***@host``;
* the value of a secret-looking key in ``key=value`` text (DSNs, query strings):
  ``password``, ``passwd``, ``pwd``, ``secret``, ``token``, ``api_key``/``apikey``,
  ``sasl.password``: ``password=***``; not in a URL fragment (``#token=``): the sign-in
  link of the dashboard is logged on purpose;
* the same keys quoted in a mapping's text form: ``'password': 'x'`` → ``'password': '***'``.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"

_URL_USERINFO = re.compile(
    r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s\"'<>]*)"
    r"(?::(?P<password>[^@/\s\"'<>]*))?@"
)
_SECRET_KEY = r"(?:sasl\.password|password|passwd|pwd|secret|token|api[_-]?key)"
# Not after "#": a URL fragment never leaves the browser, and the sign-in link the server
# logs on purpose (api.auth.sign_in_link) carries its token there.
_KEY_VALUE = re.compile(rf"(?i)(?P<key>(?<![#\w.-])[\w.-]*{_SECRET_KEY})=(?P<value>[^\s&;,'\"]+)")
_QUOTED = re.compile(
    rf"(?i)(?P<key>[\"'][\w.-]*{_SECRET_KEY}[\"']\s*:\s*)"
    r"(?P<quote>[\"'])(?P<value>[^\"']*)(?P=quote)"
)


# Substrings every secret key contains: lines without any skip the key=value patterns.
_KEY_HINTS = ("pass", "pwd", "secret", "token", "apikey", "api_key", "api-key")


def _userinfo(match: re.Match[str]) -> str:
    if match["password"] is None:
        return f"{match['scheme']}{MASK}@"
    return f"{match['scheme']}{match['user']}:{MASK}@"


def redact(text: str) -> str:
    """``text`` with every credential it carries replaced by ``***``."""
    # Cheap pre-checks: most log lines hold neither a URL with userinfo nor a key=value.
    if "@" in text:
        text = _URL_USERINFO.sub(_userinfo, text)
    lowered = text.lower()
    if any(hint in lowered for hint in _KEY_HINTS):
        text = _KEY_VALUE.sub(lambda m: f"{m['key']}={MASK}", text)
        text = _QUOTED.sub(lambda m: f"{m['key']}{m['quote']}{MASK}{m['quote']}", text)
    return text


def redact_tree(value: Any) -> Any:
    """A JSON-like value (dicts, lists, strings) with every string passed through redact."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redact_tree(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_tree(item) for item in value]
    return value
