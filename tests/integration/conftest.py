"""Fixtures shared by every integration test: servers the suite owns, and shared services.

Private servers (``private_redis``, ...) are started once per session, on free loopback
ports, only when a test asks for them; restart tests may kill and restart them, and the
sink harnesses make sure they are running again afterwards. Shared services
(``shared_redis``, ...) are the always-running ones on their standard ports; tests using
them must pick unique names and clean up.

A missing binary or service skips the test, except with ``CI=true``, where it fails.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from tests.integration.services import (
    ManagedProcess,
    ServiceUnavailableError,
    mosquitto_server,
    nats_server,
    postgres_server,
    redis_server,
    shared_service,
)


def missing(reason: str) -> NoReturn:
    """A service a test needs is not there: skip locally, fail in CI."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"service missing in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def start_private(factory: Callable[[Path], ManagedProcess], base: Path) -> ManagedProcess:
    """Create and start a private server, turning "unavailable" into :func:`missing`."""
    try:
        return factory(base).start()
    except ServiceUnavailableError as exc:
        missing(str(exc))


@pytest.fixture(scope="session")
def services_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("services")


def _private(factory: Callable[[Path], ManagedProcess]) -> Callable[..., Iterator[ManagedProcess]]:
    def fixture(services_dir: Path) -> Iterator[ManagedProcess]:
        proc = start_private(factory, services_dir)
        try:
            yield proc
        finally:
            proc.destroy()

    return fixture


private_redis = pytest.fixture(scope="session", name="private_redis")(_private(redis_server))
private_nats = pytest.fixture(scope="session", name="private_nats")(_private(nats_server))
private_postgres = pytest.fixture(scope="session", name="private_postgres")(
    _private(postgres_server)
)
private_mosquitto = pytest.fixture(scope="session", name="private_mosquitto")(
    _private(mosquitto_server)
)


def _shared(name: str) -> Callable[[], int]:
    def fixture() -> int:
        try:
            return shared_service(name)
        except ServiceUnavailableError as exc:
            missing(str(exc))

    return fixture


shared_redis = pytest.fixture(scope="session", name="shared_redis")(_shared("redis"))
shared_nats = pytest.fixture(scope="session", name="shared_nats")(_shared("nats"))
shared_postgres = pytest.fixture(scope="session", name="shared_postgres")(_shared("postgres"))
shared_mosquitto = pytest.fixture(scope="session", name="shared_mosquitto")(_shared("mosquitto"))
