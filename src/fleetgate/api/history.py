"""REST view of the embedded store: devices (online state, last position), record pages,
tracks as GeoJSON, and the names and units of signals. Every route needs the ``read`` scope.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote, unquote

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import Response
from starlette.convertors import Convertor, register_url_convertor
from starlette.types import ASGIApp, Receive, Scope, Send

from fleetgate.api.auth import Authenticator
from fleetgate.api.bearer import bearer_dependency
from fleetgate.api.responses import JsonResponse
from fleetgate.pipeline.hub import parse_filter_values, select_signals
from fleetgate.protocols.teltonika.io_names import IO_NAMES
from fleetgate.records import MAX_TIME_MS, MIN_TIME_MS, format_rfc3339_ms, now_ms, parse_rfc3339_ms
from fleetgate.store import DeviceSummary, PageCursor, RecordStore

MAX_LIMIT = 10_000
MAX_TRACK_POINTS = 50_000
DEFAULT_TRACK_WINDOW_MS = 24 * 3600 * 1000

# Units of the fields every Teltonika record has (the IO table gives the named IO elements').
TELTONIKA_BASE_UNITS = {"speed": "km/h", "altitude": "m", "angle": "°"}


def time_param(value: str | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        ms: int | None = parse_rfc3339_ms(value)
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


# -- device ids in paths --------------------------------------------------------------------
# Ids are validated where devices enter (fleetgate.records.valid_device_id), but a store may
# hold older ones with "/" (a certificate CN such as "a/../b"). Clients percent-encode the
# id ("a%2F..%2Fb"); servers decode the whole path before routing, which would split it.
DEVICES_PREFIX = "/api/v1/devices/"


class DeviceIdPaths:
    """ASGI middleware: below ``/api/v1/devices/`` each raw path segment is decoded on its
    own, and a ``/`` or ``%`` inside it stays encoded (``%2F``, ``%25``), so a device id is
    always one path segment for the router; the ``device_id`` convertor decodes it."""

    _prefix = DEVICES_PREFIX.encode()

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = scope.get("raw_path") if scope["type"] in ("http", "websocket") else None
        if raw and raw.startswith(self._prefix):
            segments = raw.decode("latin-1").split("?", 1)[0].split("/")
            path = "/".join(_one_segment(unquote(part)) for part in segments)
            scope = {**scope, "path": path}
        await self.app(scope, receive, send)


def _one_segment(text: str) -> str:
    return text.replace("%", "%25").replace("/", "%2F")


class DeviceIdConvertor(Convertor[str]):
    """``{device_id:device_id}``: one path segment, percent-decoded (see DeviceIdPaths)."""

    regex = "[^/]+"

    def convert(self, value: str) -> str:
        return unquote(value)

    def to_string(self, value: str) -> str:
        return quote(value, safe="")


register_url_convertor("device_id", DeviceIdConvertor())


def signal_units() -> dict[str, dict[str, str]]:
    """Units by source and signal name: Teltonika's from the IO table (CAN gateway records
    carry theirs in ``data.unit``; Tesla's signals come without units)."""
    teltonika = dict(TELTONIKA_BASE_UNITS)
    teltonika.update({entry.name: entry.unit for entry in IO_NAMES if entry.unit})
    return {"teltonika": teltonika}


def create_history_router(
    record_store: RecordStore | None, auth: Authenticator, online_window_s: float
) -> APIRouter:
    router = APIRouter(prefix="/api/v1", dependencies=[Depends(bearer_dependency(auth, "read"))])
    online_window_ms = int(online_window_s * 1000)

    def store() -> RecordStore:
        if record_store is None:
            raise HTTPException(status_code=503, detail="the embedded store is disabled")
        return record_store

    def device_json(device: DeviceSummary, position: Any, now: int) -> dict[str, Any]:
        body = device.as_json()
        body["online"] = now - device.last_seen <= online_window_ms
        body["position"] = (
            None
            if position is None
            else {
                "latitude": position[0],
                "longitude": position[1],
                "at": format_rfc3339_ms(position[2]),
            }
        )
        return body

    @router.get("/devices", summary="Devices seen, most recently heard first")
    def devices(
        search: Annotated[
            str | None, Query(description="part of the device id (case-insensitive)")
        ] = None,
    ) -> Response:
        found = store().devices()
        if search:
            needle = search.lower()
            found = [device for device in found if needle in device.device_id.lower()]
        positions = store().positions([device.device_id for device in found])
        now = now_ms()
        return JsonResponse(
            {"devices": [device_json(d, positions.get(d.device_id), now) for d in found]}
        )

    @router.get(
        "/devices/{device_id:device_id}", summary="One device: counters, online state, position"
    )
    def device(device_id: str) -> Response:
        summary = store().device(device_id)
        if summary is None:
            raise HTTPException(status_code=404, detail=f"no records for device {device_id!r}")
        position = store().positions([device_id]).get(device_id)
        return JsonResponse(device_json(summary, position, now_ms()))

    @router.get(
        "/devices/{device_id:device_id}/records",
        summary="A device's records, newest first, a page at a time",
        description=(
            "Pass `next` from a response as `cursor` for the following (older) page; "
            "`next` is null on the last page. `fields=a,b` keeps only those keys of each "
            "record's data (a CAN gateway record, one signal, is kept when its signal is named)."
        ),
    )
    def records(  # noqa: PLR0917 - FastAPI query parameters
        device_id: str,
        since: Annotated[str | None, Query(description="RFC 3339 time or epoch ms")] = None,
        until: Annotated[str | None, Query(description="RFC 3339 time or epoch ms")] = None,
        topic: Annotated[str | None, Query(description="only this topic")] = None,
        fields: Annotated[str | None, Query(description="comma-separated data keys")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
        cursor: Annotated[str | None, Query(description="`next` of the previous page")] = None,
    ) -> Response:
        after = None
        if cursor:
            try:
                after = PageCursor.decode(cursor)
            except ValueError as exc:
                raise HTTPException(status_code=400, detail=f"cursor: {exc}") from None
        items, next_cursor = store().records_page(
            device_id,
            since=time_param(since, "since"),
            until=time_param(until, "until"),
            topic=topic or None,
            limit=limit,
            after=after,
        )
        if fields:
            wanted = parse_filter_values([fields])
            for item in items:
                item["data"] = select_signals(item["data"], wanted) or {}
        # Returned as a ready response: skips FastAPI's per-field re-encoding of records.
        return JsonResponse(
            {"records": items, "next": next_cursor.encode() if next_cursor else None}
        )

    @router.get("/devices/{device_id:device_id}/latest", summary="A device's newest record")
    def latest(device_id: str) -> Response:
        items = store().records(device_id, limit=1)
        if not items:
            raise HTTPException(status_code=404, detail=f"no records for device {device_id!r}")
        return JsonResponse(items[0])

    @router.get(
        "/devices/{device_id:device_id}/track",
        summary="A device's positions as a GeoJSON Feature",
        description=(
            "A LineString (a Point for one position, null geometry for none) of "
            "[longitude, latitude] pairs, oldest first, with each point's time in "
            "`properties.times`. Defaults: the 24 hours before `until` (or now)."
        ),
    )
    def track(
        device_id: str,
        since: Annotated[str | None, Query(description="RFC 3339 time or epoch ms")] = None,
        until: Annotated[str | None, Query(description="RFC 3339 time or epoch ms")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_TRACK_POINTS)] = 5000,
    ) -> Response:
        until_ms = time_param(until, "until")
        since_ms = time_param(since, "since")
        if since_ms is None:
            since_ms = (now_ms() if until_ms is None else until_ms) - DEFAULT_TRACK_WINDOW_MS
        points = store().track(device_id, since_ms, until_ms, limit)
        coordinates = [[lon, lat] for lat, lon, _ in points]
        geometry: dict[str, Any] | None
        if len(points) >= 2:
            geometry = {"type": "LineString", "coordinates": coordinates}
        elif points:
            geometry = {"type": "Point", "coordinates": coordinates[0]}
        else:
            geometry = None
        return JsonResponse(
            {
                "type": "Feature",
                "geometry": geometry,
                "properties": {
                    "device_id": device_id,
                    "count": len(points),
                    "times": [format_rfc3339_ms(created) for _, _, created in points],
                },
            },
            media_type="application/geo+json",
        )

    @router.get("/signals", summary="Units of signals by source")
    def signals() -> dict[str, dict[str, str]]:
        return signal_units()

    return router
