"""The API's ASGI entry: ``/health`` and ``/metrics`` at once, the rest built on first use.

FastAPI, Starlette's routing and the API's routes cost a server ~8 MB of memory, and most
servers only ever answer health checks and metric scrapes. :class:`LazyApi` answers those
two itself while they are public (the default), with the bytes the full application sends,
and builds the application (:func:`fleetgate.api.app.create_api`) in a worker thread on the
first other request: the dashboard, the REST API, ``/stream``, ``/docs``. From then on every
request goes to the application, these two included.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from fleetgate.observability import metrics
from fleetgate.sinks.base import Health

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]

HEALTH_PATH = "/health"
METRICS_PATH = "/metrics"
# What create_api's /metrics route answers with.
METRICS_MEDIA_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


class LazyApi:
    """ASGI application: public ``GET /health`` and ``GET /metrics`` answered here until the
    full application exists; ``build`` makes it (in a thread) for any other request."""

    def __init__(
        self,
        build: Callable[[], AsgiApp],
        health_report: Callable[[], dict[str, Any]],
        public_paths: set[str],
    ) -> None:
        self._build = build
        self._health_report = health_report
        self._public = frozenset(public_paths) & {HEALTH_PATH, METRICS_PATH}
        self._app: AsgiApp | None = None
        self._building: asyncio.Future[AsgiApp] | None = None

    @property
    def built(self) -> bool:
        return self._app is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self._app
        if app is None:
            if (
                scope["type"] == "http"
                and scope["method"] == "GET"
                and scope["path"] in self._public
            ):
                await self._answer(scope["path"], send)
                return
            app = await self.application()
        await app(scope, receive, send)

    async def application(self) -> AsgiApp:
        """The full application, built once (concurrent first requests wait for it)."""
        if self._app is not None:
            return self._app
        if self._building is None:
            self._building = asyncio.ensure_future(asyncio.to_thread(self._build))
        try:
            app = await asyncio.shield(self._building)
        except BaseException:
            if self._building.done():
                self._building = None  # a failed build is tried again by the next request
            raise
        self._app = app
        return app

    async def _answer(self, path: str, send: Send) -> None:
        if path == HEALTH_PATH:
            report = self._health_report()
            status = 503 if report["status"] == Health.DOWN.value else 200
            body, media_type = orjson.dumps(report), b"application/json"
        else:
            status, body, media_type = 200, metrics.render(), METRICS_MEDIA_TYPE
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-length", str(len(body)).encode()),
                    (b"content-type", media_type),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
