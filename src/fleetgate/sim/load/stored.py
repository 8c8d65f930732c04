"""How many records of the run's devices fleetgate stored, read from its REST API.

``GET /api/v1/devices`` lists every device with its ``record_count``; only the run's own
devices (its IMEIs, VINs and gateway ids) are counted, so other traffic on the same server
does not mix in. The count is read once before the run starts (the baseline: a restarted
run's devices may already have records) and again after it, until the store has caught
up with what was acknowledged.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from fleetgate.sim.load.settings import PROTOCOLS, LoadSettings

Counts = dict[str, int]


class ApiError(RuntimeError):
    """The API could not be read."""


def device_ids(settings: LoadSettings) -> dict[str, set[str]]:
    """The device ids each protocol's devices are stored under."""
    return {
        "teltonika": {settings.imei(i) for i in range(settings.teltonika)},
        "tesla": {settings.vehicle(i).vin for i in range(settings.tesla)},
        "gateways": {settings.gateway_id(i) for i in range(settings.gateways)},
    }


def read_counts(
    api: str, ids: Mapping[str, set[str]], token: str | None = None, timeout_s: float = 10.0
) -> Counts:
    """Records stored per protocol for the devices in ``ids`` (``token``: a bearer token
    with the ``read`` scope, which the API asks for by default)."""
    url = api.rstrip("/") + "/api/v1/devices"
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            devices = json.loads(response.read())["devices"]
    except (OSError, ValueError, KeyError) as exc:
        raise ApiError(f"cannot read {url}: {exc}") from None
    counts = dict.fromkeys(PROTOCOLS, 0)
    for device in devices:
        for protocol, members in ids.items():
            if device["id"] in members:
                counts[protocol] += int(device["record_count"])
    return counts


@dataclass(slots=True)
class StoredResult:
    counts: Counts
    waited_s: float
    caught_up: bool


def wait_stable(
    read: Callable[[], Counts], quiet_s: float = 0.5, timeout_s: float = 10.0
) -> Counts:
    """Counts once they have not changed for ``quiet_s`` (records still being committed)."""
    deadline = time.monotonic() + timeout_s
    last = read()
    since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
    return last


def wait_caught_up(
    read: Callable[[], Counts],
    baseline: Counts,
    expected: Counts,
    timeout_s: float,
    quiet_s: float = 3.0,
) -> StoredResult:
    """Stored counts (minus ``baseline``) once they reach ``expected``, or once they stop
    moving for ``quiet_s`` (something was not stored), or at ``timeout_s``."""
    started = time.monotonic()
    last: Counts | None = None
    since = started
    while True:
        now = read()
        delta = {name: now[name] - baseline.get(name, 0) for name in now}
        if all(delta[name] >= expected.get(name, 0) for name in delta):
            return StoredResult(delta, time.monotonic() - started, True)
        if now != last:
            last, since = now, time.monotonic()
        elapsed = time.monotonic() - started
        if elapsed >= timeout_s or time.monotonic() - since >= quiet_s:
            return StoredResult(delta, elapsed, False)
        time.sleep(0.2)
