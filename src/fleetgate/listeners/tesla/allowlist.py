"""The VIN allow-list: Tesla's ``data_connectors`` ``vin_allowed`` check, file connector.

The reference asks its data connector whether a VIN may connect once the WebSocket is up
and the VIN is known from the certificate; a VIN that is not allowed has its connection
closed at once, without a WebSocket close frame, and is logged as ``vin_rejected``. Nothing
of it is dispatched, not even a connectivity record. fleetgate does the same.

The file holds ``{"allowed_vins": ["VIN1", ...]}`` (the key the reference's code reads;
its README shows ``vins_allowed``, which is read as well: the reference would ignore it and
admit every vehicle). A file with neither key admits every VIN, as in the reference, with
a warning. The file is re-read when it changes (checked every second: modification time,
size and inode, so an editor's write-and-rename is seen too); a new version that cannot be
read or parsed is logged and the previous list stays in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import orjson
from prometheus_client import Gauge

from fleetgate.config import Config
from fleetgate.observability.logging import fields
from fleetgate.observability.metrics import REGISTRY
from fleetgate.settings import ConfigError

log = logging.getLogger("fleetgate.tesla")

VIN_ALLOWED = "vin_allowed"
FILE_KEYS = ("allowed_vins", "vins_allowed")
RELOAD_INTERVAL_S = 1.0

# The reference's names, unprefixed and without ``_total`` (counters kept as gauges that
# only ever grow, as for ``reliable_ack``).
VIN_ALLOWED_RESULTS = Gauge(
    "vin_allowed_result_count",
    "VINs checked against the allow-list, by answer",
    ["allowed"],
    registry=REGISTRY,
    multiprocess_mode="sum",
)
VIN_ALLOWED_ERRORS = Gauge(
    "vin_allowed_error_count",
    "Allow-list files that could not be read (previous list kept)",
    registry=REGISTRY,
    multiprocess_mode="sum",
)


class AllowListError(ValueError):
    """The allow-list file cannot be read or does not hold a list of VINs."""


def read_allow_list(path: Path) -> frozenset[str] | None:
    """The VINs the file allows; ``None`` when it names no list (every VIN allowed)."""
    try:
        data = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise AllowListError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except orjson.JSONDecodeError as exc:
        raise AllowListError(f"{path} is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise AllowListError(f'{path} must hold an object such as {{"allowed_vins": [...]}}')
    lists = [data[key] for key in FILE_KEYS if data.get(key) is not None]
    if not lists:
        return None
    vins: set[str] = set()
    for value in lists:
        if not isinstance(value, list) or not all(isinstance(vin, str) for vin in value):
            raise AllowListError(f"{path}: allowed_vins must be a list of VIN strings")
        vins.update(value)
    return frozenset(vins)


@dataclass(frozen=True, slots=True)
class _Stamp:
    mtime_ns: int
    size: int
    inode: int


def _stamp(path: Path) -> _Stamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return _Stamp(st.st_mtime_ns, st.st_size, st.st_ino)


class VinAllowList:
    """Answers whether a VIN may connect; follows its file while running."""

    def __init__(self, path: Path, reload_interval_s: float = RELOAD_INTERVAL_S) -> None:
        self.path = path
        self.reload_interval_s = reload_interval_s
        self._vins: frozenset[str] | None = None
        self._stamp: _Stamp | None = None
        self._task: asyncio.Task[None] | None = None

    def load(self) -> None:
        """Read the file now (raises :class:`AllowListError`)."""
        stamp = _stamp(self.path)
        self._vins = read_allow_list(self.path)
        self._stamp = stamp
        if self._vins is None:
            log.warning(
                "data_connectors.file: %s names no allowed_vins: every VIN is allowed",
                self.path,
            )
        else:
            log.info(
                "vin allow-list loaded", extra=fields(path=str(self.path), vins=len(self._vins))
            )

    def admits(self, vin: str) -> bool:
        """Whether ``vin`` may connect (counted and logged as the reference does)."""
        allowed = self._vins is None or vin in self._vins
        VIN_ALLOWED_RESULTS.labels(allowed="true" if allowed else "false").inc()
        if not allowed:
            log.info("vin_rejected", extra=fields(vin=vin))
        return allowed

    async def start(self) -> None:
        try:
            self.load()
        except AllowListError as exc:  # preflight names it first; this is the last guard
            raise ConfigError(f"data_connectors.file.path: {exc}") from None
        self._task = asyncio.create_task(self._follow(), name="vin-allow-list")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self.reload_interval_s)
            stamp = _stamp(self.path)
            if stamp is None or stamp == self._stamp:
                continue
            try:
                self.load()
            except AllowListError as exc:
                self._stamp = stamp  # report a bad version once, not every second
                VIN_ALLOWED_ERRORS.inc()
                log.error(
                    "file_connector_invalid_file_content: %s; the previous allow-list stays",
                    exc,
                    extra=fields(path=str(self.path)),
                )


def vin_allow_list(config: Config) -> VinAllowList | None:
    """The allow-list ``data_connectors`` configures, or ``None`` (every VIN allowed)."""
    connectors = config.data_connectors
    if connectors is None or connectors.file is None:
        return None
    if VIN_ALLOWED not in connectors.file.capabilities or not connectors.file.path:
        return None
    return VinAllowList(Path(connectors.file.path))
