"""The dashboard in real headless Chromium (Debian's, driven by Playwright), against
``fleetgate serve`` with a simulated Teltonika tracker and a simulated Tesla vehicle.

One server, one browser for the module. Screenshots go to ``test-artifacts/dashboard/`` (or
``$FLEETGATE_TEST_ARTIFACTS``). Without /usr/bin/chromium or the playwright package the
module is skipped, except with ``CI=true``, where that fails the run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_cli import free_port, wait_port

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
FLEETGATE = [sys.executable, "-m", "fleetgate"]
VIN = "5YJ3E1EA7KF000001"
IMEI = "356307042441013"
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("FLEETGATE_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "dashboard"
WAIT_MS = 20_000
FEWER_THAN_TWO = re.compile(r"^[01]$")
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(
            f"browser test cannot run in CI: {reason} (make test installs it)", pytrace=False
        )
    pytest.skip(reason)


@dataclass
class Deployment:
    api: str
    token: str
    config: Path


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    base = tmp_path_factory.mktemp("dashboard")
    subprocess.run(
        [
            *FLEETGATE,
            "certs",
            "init",
            "--out",
            str(base / "certs"),
            "--host",
            "localhost",
            "--vin",
            VIN,
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    tracker_port, vehicle_port, api_port = free_port(), free_port(), free_port()
    config = base / "config.json"
    config.write_text(
        json.dumps(
            {
                "data_dir": str(base / "data"),
                "teltonika": {"host": "127.0.0.1", "port": tracker_port},
                "host": "127.0.0.1",
                "port": vehicle_port,
                "tls": {
                    "server_cert": str(base / "certs/server.crt"),
                    "server_key": str(base / "certs/server.key"),
                    "ca_file": str(base / "certs/ca.crt"),
                },
                # No tile server reachable here: the map shows positions on a plain background.
                "api": {"port": api_port, "dashboard": {"tile_url": ""}},
                # Tesla topics not named in records are acked and dropped (as by the reference).
                "records": {"V": ["sqlite"]},
            }
        )
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLEETGATE_")}
    server = subprocess.Popen([*FLEETGATE, "serve", "--config", str(config)], env=env, cwd=base)
    sims: list[subprocess.Popen[bytes]] = []
    try:
        wait_port(api_port, server)
        wait_port(vehicle_port, server)
        token = (
            subprocess.run(
                [
                    *FLEETGATE,
                    "token",
                    "--config",
                    str(config),
                    "--sub",
                    "browser",
                    "--ttl",
                    "1h",
                    "--scope",
                    "read,stream",
                ],
                check=True,
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
                cwd=base,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        sims.append(
            subprocess.Popen(
                [
                    *FLEETGATE,
                    "sim",
                    "teltonika",
                    "--port",
                    str(tracker_port),
                    "--devices",
                    "1",
                    "--rate",
                    "2",
                    "--duration",
                    "300",
                ],
                stdout=subprocess.DEVNULL,
                cwd=base,
            )
        )
        sims.append(
            subprocess.Popen(
                [
                    *FLEETGATE,
                    "sim",
                    "tesla",
                    "--url",
                    f"wss://localhost:{vehicle_port}/",
                    "--ca",
                    str(base / "certs/ca.crt"),
                    "--cert-dir",
                    str(base / "certs/vehicles"),
                    "--rate",
                    "2",
                    "--duration",
                    "300",
                ],
                stdout=subprocess.DEVNULL,
                cwd=base,
            )
        )
        yield Deployment(f"http://127.0.0.1:{api_port}", token, config)
    finally:
        for process in sims:
            _stop(process)
        _stop(server)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is not installed")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed")
    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS
        )
        yield instance
        instance.close()


def _watch_errors(page: Any) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.on("pageerror", lambda error: errors.append(str(error)))
    return errors


def _shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def test_sign_in_devices_on_the_map_live_values_and_chart(
    deployment: Deployment, browser: Any
) -> None:
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1400, "height": 850})
    errors = _watch_errors(page)
    page.set_default_timeout(WAIT_MS)

    page.goto(deployment.api + "/")
    page.wait_for_selector("#sign-in:not([hidden])")
    assert page.locator("#status").get_attribute("data-state") == "signed-out"
    _shot(page, "1-sign-in")
    page.fill("#token-input", deployment.token)
    page.click("#sign-in button[type=submit]")

    # Both simulated devices appear in the list, as online, and on the map.
    tracker = page.locator(f'#device-list li[data-device="{IMEI}"]')
    vehicle = page.locator(f'#device-list li[data-device="{VIN}"]')
    tracker.wait_for()
    vehicle.wait_for()
    assert tracker.locator(".kind").inner_text() == "teltonika"
    assert vehicle.locator(".kind").inner_text() == "tesla"
    page.wait_for_selector("#device-list li .online")
    expect(page.locator("path.device-marker")).to_have_count(2)
    expect(page.locator("path.trail").first).to_be_attached()
    page.wait_for_selector('#status[data-state="live"]')

    # The tracker's page: values with units, updating live from /stream.
    tracker.click()
    speed = page.locator('#values tr[data-signal="latitude"] .value')
    speed.wait_for()
    assert page.locator('#values tr[data-signal="speed"] .unit').inner_text() == "km/h"
    expect(speed).not_to_have_text(speed.inner_text())
    # The chart of a numeric value over the chosen range, from the history API.
    expect(page.locator("#chart")).not_to_have_attribute("data-points", FEWER_THAN_TWO)
    assert page.locator("#chart canvas").count() >= 1
    _shot(page, "2-tracker")

    # The vehicle: Tesla signals by name; its chart switches to another value.
    vehicle.click()
    page.wait_for_selector('#detail-title:text("' + VIN + '")')
    page.locator('#values tr[data-signal="Soc"]').wait_for()
    page.select_option("#chart-field", "Soc")
    expect(page.locator("#chart")).not_to_have_attribute("data-points", FEWER_THAN_TWO)
    _shot(page, "3-vehicle")

    # Search narrows the list.
    page.fill("#search", "5YJ3")
    expect(page.locator("#device-list li")).to_have_count(1)
    page.fill("#search", "")
    expect(page.locator("#device-list li")).to_have_count(2)

    # A phone-sized screen still shows list, map and device.
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(300)
    _shot(page, "4-phone")
    assert page.locator("#map").bounding_box()["width"] <= 390
    assert errors == []
    page.close()


def test_a_refused_token_shows_the_sign_in_again(deployment: Deployment, browser: Any) -> None:
    page = browser.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(deployment.api + "/#token=not-a-valid-token")
    page.wait_for_selector('#status[data-state="expired"]')
    assert "not a JWT" in page.locator("#sign-in-message").inner_text()
    # The token left the address bar and storage.
    assert "#token" not in page.url
    assert page.evaluate("localStorage.getItem('fleetgate.token')") is None
    _shot(page, "5-refused-token")
    page.close()


def test_no_data_and_unreachable_states(deployment: Deployment, browser: Any) -> None:
    from playwright.sync_api import expect

    # An empty server: no devices, a stream that has nothing to say.
    page = browser.new_page()
    page.route("**/api/v1/devices", lambda route: route.fulfill(json={"devices": []}))
    page.route_web_socket(
        "**/stream*", lambda ws: ws.on_message(lambda _message: ws.send('{"type": "ready"}'))
    )
    page.goto(f"{deployment.api}/#token={deployment.token}")
    expect(page.locator('#status[data-state="no-data"]')).to_have_text("no data yet")
    expect(page.locator("#no-devices")).to_be_visible()
    _shot(page, "6-no-data")
    page.close()

    # The server gone: the page says so and retries.
    page = browser.new_page()
    page.route("**/api/v1/**", lambda route: route.abort())
    page.goto(f"{deployment.api}/#token={deployment.token}")
    expect(page.locator('#status[data-state="unreachable"]')).to_contain_text("retrying")
    _shot(page, "7-unreachable")
    page.close()
