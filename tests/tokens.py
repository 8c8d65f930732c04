"""Tokens for tests: a fixed shared secret and a signer with every claim adjustable."""

from __future__ import annotations

import time
from typing import Any

import jwt

# Test-only HS256 secret (32+ bytes, so the server does not warn about its length).
TEST_SECRET = "fleetgate-test-secret-0123456789abcdef"


def make_token(
    secret: str = TEST_SECRET,
    *,
    scope: str | None = "read stream",
    ttl_s: float = 3600,
    algorithm: str = "HS256",
    **claims: Any,
) -> str:
    """A token signed with ``secret``; ``claims`` add or override (``exp=None`` removes)."""
    now = int(time.time())
    body: dict[str, Any] = {"sub": "tester", "iat": now, "exp": now + int(ttl_s)}
    if scope is not None:
        body["scope"] = scope
    body.update(claims)
    body = {key: value for key, value in body.items() if value is not None}
    return jwt.encode(body, secret, algorithm=algorithm)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
