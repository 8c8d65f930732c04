"""The API's lazy entry (issue 11): /health and /metrics answered as the full application
answers them, the application built once, on the first other request; HS tokens signed
without PyJWT are the tokens PyJWT makes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from fastapi.testclient import TestClient

from fleetgate.api.app import create_api
from fleetgate.api.auth import Authenticator, hmac_token
from fleetgate.api.lazy import LazyApi
from fleetgate.app import Server
from fleetgate.config import build_config
from tests.tokens import TEST_SECRET, bearer, make_token


def make_server(tmp_path: Path, **auth: Any) -> Server:
    config = build_config(
        {"data_dir": str(tmp_path), "teltonika": {"enabled": False}, "tesla_enabled": False,
         "api": {"auth": {"secret": TEST_SECRET, **auth}}},
        environ={},
    )
    return Server(config)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    server = make_server(tmp_path)
    yield server
    assert server.store is not None
    server.store.close()


def lazy_and_full(server: Server, public: set[str]) -> tuple[LazyApi, Any, list[int]]:
    auth = Authenticator(server.config.api.auth, server.config.data_path)
    builds: list[int] = []

    def build() -> Any:
        builds.append(1)
        return create_api(server.store, server.health_report, auth=auth,
                          settings=server.config.api)

    return LazyApi(build, server.health_report, public), build(), builds


@pytest.mark.parametrize("path", ["/health", "/metrics"])
def test_public_paths_answer_as_the_application_does(server: Server, path: str) -> None:
    lazy, full, builds = lazy_and_full(server, {"/health", "/metrics"})
    mine, theirs = TestClient(lazy).get(path), TestClient(full).get(path)  # type: ignore[arg-type]
    assert not lazy.built and len(builds) == 1  # only the reference application
    assert mine.status_code == theirs.status_code == 200
    assert mine.headers["content-type"] == theirs.headers["content-type"]
    if path == "/health":
        body, expected = mine.json(), theirs.json()
        body.pop("uptime_s"), expected.pop("uptime_s")
        assert body == expected
    else:
        assert b"fleetgate_open_connections" in mine.content


def test_down_health_is_503(server: Server) -> None:
    lazy = LazyApi(lambda: pytest.fail("built"), lambda: {"status": "down"}, {"/health"})
    response = TestClient(lazy).get("/health")  # type: ignore[arg-type]
    assert response.status_code == 503 and response.json() == {"status": "down"}


def test_other_requests_build_the_application_once(server: Server) -> None:
    lazy, _full, builds = lazy_and_full(server, {"/health", "/metrics"})
    client = TestClient(lazy, headers=bearer(make_token()))  # type: ignore[arg-type]
    assert client.get("/api/v1/devices").json() == {"devices": []}
    assert lazy.built and len(builds) == 2
    assert client.get("/health").status_code == 200
    assert client.get("/api/v1/devices").status_code == 200
    assert len(builds) == 2


def test_a_guarded_health_goes_to_the_application(tmp_path: Path) -> None:
    server = make_server(tmp_path, public_paths=[])
    lazy, _full, _builds = lazy_and_full(server, set(server.config.api.auth.public_paths))
    response = TestClient(lazy).get("/health")  # type: ignore[arg-type]
    assert response.status_code == 401 and lazy.built
    assert server.store is not None
    server.store.close()


def test_concurrent_first_requests_share_one_build() -> None:
    calls: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def build() -> Any:
        calls.append(1)
        return app

    lazy = LazyApi(build, lambda: {"status": "ok"}, set())

    async def main() -> None:
        sent: list[Any] = []

        async def send(message: Any) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": "/x"}
        await asyncio.gather(*(lazy(scope, lambda: None, send) for _ in range(5)))  # type: ignore[arg-type]
        assert len(sent) == 10

    asyncio.run(main())
    assert calls == [1]


@pytest.mark.parametrize("algorithm", ["HS256", "HS384", "HS512"])
def test_hmac_tokens_are_pyjwt_tokens(algorithm: str) -> None:
    key = b"k" * 64
    claims = {"sub": "dashboard é/\"", "iat": 1, "nbf": 1, "exp": 2**40, "scope": "read stream",
              "iss": "me", "aud": "you"}
    assert hmac_token(claims, key, algorithm) == jwt.encode(claims, key, algorithm=algorithm)
    decoded = jwt.decode(hmac_token(claims, key, algorithm), key, algorithms=[algorithm],
                         audience="you", issuer="me")
    assert decoded == claims


def test_concurrent_first_starts_share_one_whole_secret(tmp_path: Path) -> None:
    """A server starting faster than before met ``fleetgate token`` creating the secret:
    the file existed but was still empty ("api.auth.secret: empty")."""
    import threading

    from fleetgate.api.auth import _data_dir_secret

    for round_ in range(20):
        path = tmp_path / str(round_) / "api-secret.key"
        results: list[tuple[str, bool]] = []
        start = threading.Barrier(8)

        def one(path: Path, start: threading.Barrier, results: list[tuple[str, bool]]) -> None:
            start.wait()
            results.append(_data_dir_secret(path))

        threads = [threading.Thread(target=one, args=(path, start, results)) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        secrets_seen = {secret for secret, _ in results}
        assert len(secrets_seen) == 1 and "" not in secrets_seen
        assert sum(created for _, created in results) == 1
        assert path.stat().st_mode & 0o777 == 0o600
        assert [p.name for p in path.parent.iterdir()] == ["api-secret.key"]
