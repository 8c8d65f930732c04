"""``fleetgate tesla configure`` and ``status`` against a loopback Fleet API stand-in.

The stand-in (tests/tesla_fleet_api.py) checks every request's method, path, bearer token
and JSON body, and answers with Fleet API's reply shapes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetgate.cli import main
from fleetgate.pki import init_pki
from fleetgate.protocols.tesla.fleet_config import (
    FleetApiReplyError,
    describe_status,
    read_configure_reply,
)
from tests.ports import free_port
from tests.tesla_fleet_api import (
    KNOWN_VINS,
    TOKEN,
    UNPAIRED_VIN,
    FleetApiStandIn,
    fleet_api_stand_in,
)

VIN = KNOWN_VINS[0]


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FleetApiStandIn]:
    for name in ("TESLA_ACCESS_TOKEN", "TESLA_API_BASE_URL", "TESLA_VIN"):
        monkeypatch.delenv(name, raising=False)
    with fleet_api_stand_in(tmp_path) as stand_in:
        yield stand_in


@pytest.fixture
def server_ca(tmp_path: Path) -> Path:
    """The CA of *this* telemetry server, which the vehicles must trust."""
    return init_pki(tmp_path / "server-pki", host="telemetry.example.com").ca_cert


def use_env(monkeypatch: pytest.MonkeyPatch, api: FleetApiStandIn, vin: str = VIN) -> None:
    monkeypatch.setenv("TESLA_ACCESS_TOKEN", TOKEN)
    monkeypatch.setenv("TESLA_API_BASE_URL", api.base_url)
    monkeypatch.setenv("TESLA_VIN", vin)


def configure_args(server_ca: Path, api: FleetApiStandIn, *extra: str) -> list[str]:
    return [
        "tesla", "configure", "--host", "telemetry.example.com", "--port", "4443",
        "--ca", str(server_ca), "--fields", "VehicleSpeed:10,Soc:60,Location:30:0.5",
        "--alert-types", "service", "--api-ca", str(api.pki.ca_cert), *extra,
    ]  # fmt: skip


# -- configure --------------------------------------------------------------------------------


def test_configure_sends_the_body_through_the_proxy(
    api: FleetApiStandIn,
    server_ca: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    use_env(monkeypatch, api)
    code = main(configure_args(server_ca, api))
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert out == f"configured 1 of 1 vehicle(s) to stream to telemetry.example.com:4443: {VIN}\n"
    assert api.problems == []
    [request] = api.requests
    assert request["method"] == "POST"
    assert request["path"] == "/api/1/vehicles/fleet_telemetry_config"
    assert request["authorization"] == f"Bearer {TOKEN}"
    assert request["content_type"] == "application/json"
    assert request["body"] == {
        "vins": [VIN],
        "config": {
            "hostname": "telemetry.example.com",
            "port": 4443,
            "ca": server_ca.read_text(),
            "fields": {
                "VehicleSpeed": {"interval_seconds": 10},
                "Soc": {"interval_seconds": 60},
                "Location": {"interval_seconds": 30, "minimum_delta": 0.5},
            },
            "alert_types": ["service"],
        },
    }
    assert TOKEN not in out + err


def test_flags_win_over_the_environment(
    api: FleetApiStandIn,
    server_ca: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("TESLA_ACCESS_TOKEN", "stale-token")
    monkeypatch.setenv("TESLA_API_BASE_URL", "https://127.0.0.1:1")
    monkeypatch.setenv("TESLA_VIN", "IGNORED")
    code = main(
        configure_args(
            server_ca, api,
            "--api-base-url", f"{api.base_url}/api/1/",  # the /api/1 prefix is tolerated
            "--access-token", TOKEN, "--vin", KNOWN_VINS[0], "--vin", KNOWN_VINS[1],
        )
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    [request] = api.requests
    assert request["path"] == "/api/1/vehicles/fleet_telemetry_config"
    assert request["body"]["vins"] == list(KNOWN_VINS)


def test_a_skipped_vehicle_is_named_with_its_reason_and_exit_3(
    api: FleetApiStandIn,
    server_ca: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    use_env(monkeypatch, api)
    code = main(configure_args(server_ca, api, "--vin", VIN, "--vin", UNPAIRED_VIN))
    out, err = capsys.readouterr()
    assert code == 3
    assert out == f"configured 1 of 2 vehicle(s) to stream to telemetry.example.com:4443: {VIN}\n"
    assert err == (
        f"fleetgate tesla configure: skipped {UNPAIRED_VIN}: the application's virtual key is "
        "not paired with the vehicle (the owner adds it from https://tesla.com/_ak/<your "
        "domain>)\n"
    )


# -- status -------------------------------------------------------------------------------------


def test_status_shows_the_configuration_and_the_vehicles_errors(
    api: FleetApiStandIn,
    server_ca: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    use_env(monkeypatch, api)
    api.errors[VIN] = [
        {"name": "telemetry-client", "error": "tls: unknown certificate authority", "vin": VIN}
    ]
    assert main(configure_args(server_ca, api)) == 0
    capsys.readouterr()
    code = main(["tesla", "status", "--api-ca", str(api.pki.ca_cert)])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"{VIN}: streams to telemetry.example.com:4443, synced (the vehicle uses it)",
        "  fields: Location every 30 s (minimum delta 0.5), Soc every 60 s, "
        "VehicleSpeed every 10 s",
        "  alert types: service",
        "  virtual key paired: yes",
        "  configuration limit reached: no",
        "  errors reported by the vehicle (1):",
        "    - telemetry-client: tls: unknown certificate authority",
    ]
    gets = [(r["method"], r["path"], r["authorization"]) for r in api.requests[1:]]
    assert gets == [
        ("GET", f"/api/1/vehicles/{VIN}/fleet_telemetry_config", f"Bearer {TOKEN}"),
        ("GET", f"/api/1/vehicles/{VIN}/fleet_telemetry_errors", f"Bearer {TOKEN}"),
    ]


def test_status_of_an_unconfigured_vehicle_as_json(
    api: FleetApiStandIn, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_env(monkeypatch, api, vin=KNOWN_VINS[1])
    code = main(["tesla", "status", "--api-ca", str(api.pki.ca_cert), "--json"])
    out, _ = capsys.readouterr()
    assert code == 0
    assert json.loads(out) == {
        "vin": KNOWN_VINS[1],
        "fleet_telemetry_config": {
            "response": {
                "synced": False,
                "config": None,
                "limit_reached": False,
                "key_paired": True,
            }
        },
        "fleet_telemetry_errors": {"response": {"fleet_telemetry_errors": []}},
    }
    code = main(["tesla", "status", "--api-ca", str(api.pki.ca_cert)])
    assert capsys.readouterr().out.splitlines()[0] == (
        f"{KNOWN_VINS[1]}: no fleet telemetry configuration"
    )


# -- failures: one clear line, non-zero exit, never the token ----------------------------------


def run_failing(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert TOKEN not in err
    return code, lines[0]


def test_a_refused_token_is_one_line_exit_1(
    api: FleetApiStandIn,
    server_ca: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    use_env(monkeypatch, api)
    monkeypatch.setenv("TESLA_ACCESS_TOKEN", "expired-" + TOKEN)
    code, line = run_failing(configure_args(server_ca, api), capsys)
    assert code == 1
    assert line == (
        "fleetgate tesla configure: fleet_telemetry_config: the access token was refused "
        "(HTTP 401: invalid bearer token); set a current token in TESLA_ACCESS_TOKEN"
    )
    assert "expired-" not in line


def test_an_unknown_vin_is_one_line_exit_1(
    api: FleetApiStandIn, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_env(monkeypatch, api, vin="5YJ3E1EA7KF999999")
    code, line = run_failing(["tesla", "status", "--api-ca", str(api.pki.ca_cert)], capsys)
    assert code == 1
    assert line == (
        "fleetgate tesla status: fleet_telemetry_config: not found (HTTP 404: not_found: "
        f"vehicle 5YJ3E1EA7KF999999 not found); check the VIN and that {api.base_url} is the "
        "vehicle-command proxy or Fleet API"
    )


def test_an_unreachable_proxy_is_one_line_exit_1(
    api: FleetApiStandIn, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_env(monkeypatch, api)
    port = free_port()  # nothing listens there
    monkeypatch.setenv("TESLA_API_BASE_URL", f"https://127.0.0.1:{port}")
    code, line = run_failing(["tesla", "status"], capsys)
    assert code == 1
    assert line == (
        f"fleetgate tesla status: cannot reach https://127.0.0.1:{port}: connection refused "
        "(is the proxy running?)"
    )


def test_an_untrusted_proxy_certificate_is_one_line_exit_1(
    api: FleetApiStandIn,
    server_ca: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    use_env(monkeypatch, api)
    argv = configure_args(server_ca, api)
    argv.remove("--api-ca")
    argv.remove(str(api.pki.ca_cert))  # the system CAs do not know the proxy's CA
    code, line = run_failing(argv, capsys)
    assert code == 1
    assert line.startswith(
        f"fleetgate tesla configure: TLS: the certificate of {api.base_url} is not trusted ("
    )
    assert line.endswith(
        "); pass --api-ca with the certificate of the proxy's CA (or its self-signed certificate)"
    )
    assert api.requests == []  # nothing, token included, went out before TLS was verified


def test_plain_http_to_a_remote_host_is_refused_before_sending_the_token(
    api: FleetApiStandIn, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_env(monkeypatch, api)
    monkeypatch.setenv("TESLA_API_BASE_URL", "http://fleet-api.example.com")
    code, line = run_failing(["tesla", "status"], capsys)
    assert code == 2
    assert line == (
        "fleetgate tesla status: refusing to send the access token over plain http to "
        "fleet-api.example.com; use https"
    )


@pytest.mark.parametrize(
    ("unset", "argv", "needle"),
    [
        ("TESLA_ACCESS_TOKEN", ["tesla", "status"], "no access token: set TESLA_ACCESS_TOKEN"),
        ("TESLA_API_BASE_URL", ["tesla", "status"], "no API base URL: pass --api-base-url"),
        ("TESLA_VIN", ["tesla", "status"], "no VIN: pass --vin or set TESLA_VIN"),
        (None, ["tesla", "status", "--api-ca", "/nonexistent/ca.pem"], "cannot read --api-ca"),
    ],
)
def test_missing_settings_are_one_line_exit_2(
    api: FleetApiStandIn,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    unset: str | None,
    argv: list[str],
    needle: str,
) -> None:
    use_env(monkeypatch, api)
    if unset is not None:
        monkeypatch.delenv(unset)
    code, line = run_failing(argv, capsys)
    assert code == 2
    assert needle in line
    assert api.requests == []


def test_configure_checks_the_body_before_calling_the_api(
    api: FleetApiStandIn,
    server_ca: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    use_env(monkeypatch, api)
    argv = configure_args(server_ca, api)
    argv[argv.index("--fields") + 1] = "VehicleSped:10"
    code, line = run_failing(argv, capsys)
    assert code == 2
    assert "unknown field 'VehicleSped' (did you mean VehicleSpeed" in line
    assert api.requests == []


# -- reading replies -----------------------------------------------------------------------------


def test_unexpected_reply_shapes_are_refused() -> None:
    with pytest.raises(FleetApiReplyError, match="updated_vehicles"):
        read_configure_reply({"response": {"result": True}})
    with pytest.raises(FleetApiReplyError, match="fleet_telemetry_errors"):
        describe_status(VIN, {"response": {"config": None}}, {"response": {}})


def test_a_bare_reply_without_the_response_wrapper_is_read() -> None:
    outcome = read_configure_reply(
        {"updated_vehicles": 0, "skipped_vehicles": {"max_configs": [VIN]}}
    )
    assert (outcome.updated, outcome.skipped) == (0, {VIN: "max_configs"})


def test_a_proxy_without_tls_is_a_tls_line_and_plain_http_on_loopback_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with fleet_api_stand_in(tmp_path / "plain", tls=False) as plain:
        use_env(monkeypatch, plain)
        code, line = run_failing(["tesla", "status"], capsys)  # https to a plain-http server
        assert code == 1
        assert line.startswith(
            f"fleetgate tesla status: TLS handshake with {plain.base_url} failed"
        )
        monkeypatch.setenv("TESLA_API_BASE_URL", f"http://127.0.0.1:{plain.port}")
        assert main(["tesla", "status"]) == 0
        assert capsys.readouterr().out.startswith(f"{VIN}: no fleet telemetry configuration")
