"""HTTP API: health, Prometheus metrics, the REST view of the store, ``/stream``, dashboard.

OpenAPI docs are served at ``/docs`` (from local files). Record JSON is the one record form
of :mod:`fleetgate.records`; times are RFC 3339 UTC with milliseconds. Everything but the
pages, ``/docs`` and the paths in ``api.auth.public_paths`` (``/health`` and ``/metrics`` by
default) needs a bearer token (:mod:`fleetgate.api.auth`); a refusal is a 401 or 403 with a
JSON body ``{"error": ..., "detail": ...}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response

from fleetgate import __version__
from fleetgate.api.auth import Authenticator, AuthError
from fleetgate.api.bearer import bearer_dependency
from fleetgate.api.commands import create_command_router
from fleetgate.api.dashboard import add_dashboard
from fleetgate.api.history import DeviceIdPaths, create_history_router
from fleetgate.api.responses import JsonResponse
from fleetgate.api.stream import add_stream_route
from fleetgate.config import ApiConfig
from fleetgate.observability import metrics
from fleetgate.pipeline.hub import LiveHub
from fleetgate.runtime import DeviceCommands
from fleetgate.sinks.base import Health
from fleetgate.store import RecordStore

# Returns the ``/health`` body; its ``status`` is ok, degraded or down.
HealthReport = Callable[[], dict[str, Any]]

__all__ = ["HealthReport", "JsonResponse", "create_api"]


def create_api(
    record_store: RecordStore | None,
    health_report: HealthReport,
    *,
    auth: Authenticator,
    settings: ApiConfig | None = None,
    hub: LiveHub | None = None,
    commands: DeviceCommands | None = None,
) -> FastAPI:
    """The HTTP application over a record store (``None``: disabled), a health report, the
    token checker, the live hub (``None``: no ``/stream``) and the device command queue
    (``None``: the command routes answer 503)."""
    settings = settings or ApiConfig()
    api = FastAPI(
        title="fleetgate",
        version=__version__,
        description=(
            "Vehicle telemetry gateway: devices, records, live stream, health and metrics. "
            "Send `Authorization: Bearer <token>` (`fleetgate token` prints one)."
        ),
        default_response_class=JsonResponse,
        docs_url=None,
        redoc_url=None,
    )

    @api.exception_handler(AuthError)
    async def refused(_request: Request, exc: AuthError) -> Response:
        return JsonResponse(
            exc.as_json(),
            status_code=exc.status,
            headers={"WWW-Authenticate": exc.www_authenticate()},
        )

    public = set(settings.auth.public_paths)

    def guard(path: str) -> list[Any]:
        return [] if path in public else [Depends(bearer_dependency(auth, "read"))]

    @api.get("/health", summary="Server, listener and sink health", dependencies=guard("/health"))
    def health() -> Response:
        body = health_report()
        return JsonResponse(body, status_code=503 if body["status"] == Health.DOWN.value else 200)

    @api.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        dependencies=guard("/metrics"),
    )
    def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    # Device ids holding "/" (percent-encoded by clients) stay one path segment.
    api.add_middleware(DeviceIdPaths)
    api.include_router(create_history_router(record_store, auth, settings.online_window_s))
    api.include_router(create_command_router(commands, auth))
    if hub is not None:
        add_stream_route(api, hub, auth, settings.stream)
    add_dashboard(api, settings.dashboard, settings.online_window_s)
    return api
