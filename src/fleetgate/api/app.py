"""HTTP API: health, Prometheus metrics and the REST view of the embedded store.

OpenAPI docs are served at ``/docs``. Record JSON is the one record form of
:mod:`fleetgate.records`; times are RFC 3339 UTC with milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import orjson
from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import Response

from fleetgate import __version__
from fleetgate.observability import metrics
from fleetgate.records import MAX_TIME_MS, MIN_TIME_MS, parse_rfc3339_ms
from fleetgate.sinks.base import Health
from fleetgate.store import RecordStore

# Returns the ``/health`` body; its ``status`` is ok, degraded or down.
HealthReport = Callable[[], dict[str, Any]]

MAX_LIMIT = 10_000


class JsonResponse(Response):
    """orjson-encoded JSON (fast, and handles the records' nested data as is)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _time_param(value: str | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        ms = parse_rfc3339_ms(value)
    except (ValueError, OverflowError):
        ms = None
    # Beyond years 1..9999 no record can match, and beyond 64 bits SQLite cannot compare.
    if ms is None or not MIN_TIME_MS <= ms <= MAX_TIME_MS:
        shown = value if len(value) <= 64 else f"{value[:64]}..."
        raise HTTPException(
            status_code=400,
            detail=f"{name}: expected an RFC 3339 time or epoch milliseconds within years "
            f"1..9999, got {shown!r}",
        )
    return ms


def create_api(record_store: RecordStore | None, health_report: HealthReport) -> FastAPI:
    """The HTTP application over a record store (``None``: disabled) and a health report."""
    api = FastAPI(
        title="fleetgate",
        version=__version__,
        description="Vehicle telemetry gateway: devices, records, health and metrics.",
        default_response_class=JsonResponse,
    )
    def store() -> RecordStore:
        if record_store is None:
            raise HTTPException(status_code=503, detail="the embedded store is disabled")
        return record_store

    @api.get("/health", summary="Server, listener and sink health")
    def health() -> Response:
        body = health_report()
        return JsonResponse(body, status_code=503 if body["status"] == Health.DOWN.value else 200)

    @api.get("/metrics", summary="Prometheus metrics", response_class=Response)
    def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @api.get("/api/v1/devices", summary="Devices seen, most recently heard first")
    def devices() -> dict[str, Any]:
        return {"devices": [device.as_json() for device in store().devices()]}

    # ``{device_id:path}``: an id holding ``/`` (percent-encoded by the client as ``%2F``)
    # still reaches its device instead of a 404.
    @api.get(
        "/api/v1/devices/{device_id:path}/records", summary="A device's records, newest first"
    )
    def records(
        device_id: str,
        since: Annotated[str | None, Query(description="RFC 3339 time or epoch ms")] = None,
        until: Annotated[str | None, Query(description="RFC 3339 time or epoch ms")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
    ) -> Response:
        items = store().records(
            device_id, _time_param(since, "since"), _time_param(until, "until"), limit
        )
        # Returned as a ready response: skips FastAPI's per-field re-encoding of records.
        return JsonResponse({"records": items})

    @api.get("/api/v1/devices/{device_id:path}/latest", summary="A device's newest record")
    def latest(device_id: str) -> Response:
        items = store().records(device_id, limit=1)
        if not items:
            raise HTTPException(status_code=404, detail=f"no records for device {device_id!r}")
        return JsonResponse(items[0])

    return api
