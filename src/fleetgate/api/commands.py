"""Device commands over REST: send one to a tracker and get its answer, list them.

``POST /api/v1/devices/{imei}/commands`` (scope ``command``) with
``{"command": "getinfo"}`` (optional ``"codec": 14`` to address it by IMEI, and
``"timeout_s"``) sends the command on the device's open connection and waits for the
answer: 200 with ``status`` ``answered`` (``response`` holds the text) or ``nack``; 504
``timed_out``; 202 while the command is still ``queued`` (the device is not connected:
it is delivered on the device's next connection) or ``sent`` when the wait ended.
``GET .../commands`` lists the device's commands, newest first, and
``GET .../commands/{id}`` shows one (scope ``read``). The commands themselves live behind
:class:`~fleetgate.runtime.DeviceCommands`; this module only speaks HTTP.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field

from fleetgate.api.auth import Authenticator
from fleetgate.api.bearer import bearer_dependency
from fleetgate.api.responses import JsonResponse
from fleetgate.runtime import CommandRefusedError, DeviceCommands

MAX_LIST = 1000
# The longest a request may ask to wait for an answer.
MAX_WAIT_S = 600.0

# HTTP status of a command's state once the request stops waiting.
_STATUS_CODES = {"answered": 200, "nack": 200, "timed_out": 504, "queued": 202, "sent": 202}


class CommandRequest(BaseModel):
    """The body of ``POST /api/v1/devices/{imei}/commands``."""

    command: str = Field(min_length=1, max_length=1024, examples=["getinfo"])
    # 12: the device runs it; 14: addressed by IMEI, a device with another IMEI says nACK.
    codec: Literal[12, 14] = 12
    # How long to wait for the answer; default: teltonika.command_timeout_s (+1 s).
    timeout_s: float | None = Field(None, gt=0, le=MAX_WAIT_S)


def _refused(exc: CommandRefusedError) -> Response:
    return JsonResponse({"error": exc.code, "detail": exc.message}, status_code=exc.status)


def _unavailable() -> Response:
    return JsonResponse(
        {
            "error": "commands_unavailable",
            "detail": "device commands need the Teltonika listener (teltonika.enabled)",
        },
        status_code=503,
    )


def create_command_router(commands: DeviceCommands | None, auth: Authenticator) -> APIRouter:
    router = APIRouter(prefix="/api/v1/devices", tags=["commands"])
    may_send = [Depends(bearer_dependency(auth, "command"))]
    may_read = [Depends(bearer_dependency(auth, "read"))]

    @router.post(
        "/{imei}/commands",
        summary="Send a command to a tracker and wait for its answer (scope: command)",
        dependencies=may_send,
    )
    async def send(imei: str, body: CommandRequest) -> Response:
        if commands is None:
            return _unavailable()
        try:
            view = await commands.submit(
                imei, body.command, codec=body.codec, wait_s=body.timeout_s
            )
        except CommandRefusedError as exc:
            return _refused(exc)
        return JsonResponse(view, status_code=_STATUS_CODES.get(view["status"], 200))

    @router.get(
        "/{imei}/commands",
        summary="A tracker's commands and their states, newest first",
        dependencies=may_read,
    )
    async def listing(imei: str, limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 100) -> Response:
        if commands is None:
            return _unavailable()
        try:
            body: dict[str, Any] = {"commands": await commands.history(imei, limit)}
        except CommandRefusedError as exc:  # routed through Redis, which is away
            return _refused(exc)
        return JsonResponse(body)

    @router.get(
        "/{imei}/commands/{command_id}",
        summary="One command of a tracker",
        dependencies=may_read,
    )
    async def one(imei: str, command_id: Annotated[int, Path(ge=1, le=2**63 - 1)]) -> Response:
        if commands is None:
            return _unavailable()
        try:
            view = await commands.get(imei, command_id)
        except CommandRefusedError as exc:
            return _refused(exc)
        if view is None:
            return JsonResponse(
                {"error": "not_found", "detail": f"no command {command_id} for {imei}"},
                status_code=404,
            )
        return JsonResponse(view)

    return router
