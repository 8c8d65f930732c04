"""The simulated gateway's REST API, the same three endpoints as the gateway's own:

* ``GET /health``: broker connection state per gateway, queue depth, counts, and a
  summary of the configuration;
* ``POST /publish``: publish now. A JSON body like ``{"engine_rpm": 2000,
  "vehicle_speed": 80}`` publishes those signals (keys are ``<group>_<signal>``, values
  are checked against the signal table: 422 for an unknown key or an impossible value);
  no body or ``{}`` publishes the whole tree. ``?gateway_id=`` picks one gateway when
  several run (default: all);
* ``GET /config``: the effective configuration (no key material).

Served by uvicorn on the simulator's own event loop (``--api-port``, default 5000 as the
gateway's Flask app; bound to 127.0.0.1 unless ``--api-host`` says otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from fastapi import Body, FastAPI, HTTPException, Query

from fleetgate.protocols.mqtt import SignalValueError
from fleetgate.sim.can_gateway import FIELD_NAMES, CanGatewaySimulator


def create_app(simulator: CanGatewaySimulator) -> FastAPI:
    app = FastAPI(
        title="fleetgate CAN gateway simulator",
        description="Health, manual publish and configuration of simulated CAN gateways.",
    )

    @app.get("/health", summary="Broker connection state and a configuration summary")
    def health() -> dict[str, Any]:
        return simulator.health()

    @app.post("/publish", summary="Publish signals now (no body: the whole tree)")
    def publish(
        values: dict[str, Any] | None = Body(default=None),  # noqa: B008 - FastAPI idiom
        gateway_id: str | None = Query(default=None),
    ) -> dict[str, Any]:
        try:
            published = simulator.publish(values or {}, gateway_id)
        except KeyError as exc:
            known = ", ".join(FIELD_NAMES)
            detail = f"unknown signal or gateway {exc.args[0]!r}; signals: {known}"
            raise HTTPException(status_code=422, detail=detail) from None
        except SignalValueError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        return {"published": published}

    @app.get("/config", summary="The effective configuration")
    def config() -> dict[str, Any]:
        return simulator.settings.summary()

    return app


class ApiServer:
    """uvicorn serving :func:`create_app` inside the running event loop."""

    def __init__(self, simulator: CanGatewaySimulator, host: str, port: int) -> None:
        import uvicorn

        config = uvicorn.Config(
            create_app(simulator),
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="off",
        )
        self.server = uvicorn.Server(config)
        # The simulator's own SIGINT/SIGTERM handling owns shutdown.
        self.server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self.server.serve(), name="can-gateway-api")
        while not self.server.started:
            if self._task.done():
                self._task.result()
                raise OSError("the REST API could not start")
            await asyncio.sleep(0.01)

    @property
    def port(self) -> int:
        for server in self.server.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return 0

    async def stop(self) -> None:
        self.server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
