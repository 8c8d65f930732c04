"""The fleet_telemetry_config body builder and the ``fleetgate tesla config`` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleetgate.cli import main
from fleetgate.pki import init_pki
from fleetgate.protocols.tesla.fleet_config import (
    FieldSpec,
    FleetConfigError,
    build_fleet_config,
    field_names,
    parse_fields,
)

CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_field_names_come_from_the_proto_enum() -> None:
    names = field_names()
    assert "VehicleSpeed" in names
    assert "SelfDrivingMilesSinceReset" in names
    assert "Unknown" not in names


def test_parse_fields() -> None:
    assert parse_fields("VehicleSpeed:10, Soc:60,Odometer:60:0.5") == [
        FieldSpec("VehicleSpeed", 10),
        FieldSpec("Soc", 60),
        FieldSpec("Odometer", 60, 0.5),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("VehicleSped:10", "did you mean VehicleSpeed"),
        ("Soc", "Name:interval_seconds"),
        ("Soc:x", "not an integer"),
        ("Soc:0", "at least 1"),
        ("Soc:1,Soc:2", "given twice"),
        ("Soc:1:abc", "not a number"),
        ("", "no fields"),
        ("Unknown:5", "unknown field"),
    ],
)
def test_parse_fields_rejects(text: str, message: str) -> None:
    with pytest.raises(FleetConfigError, match=message):
        parse_fields(text)


def test_body_structure() -> None:
    body = build_fleet_config(
        hostname="telemetry.example.com",
        port=4443,
        ca_pem=CA,
        fields=parse_fields("VehicleSpeed:10,Soc:60"),
        vins=["5YJ3E1EA7KF000001"],
        alert_types=["service"],
        exp=1_767_225_600,
    )
    assert body == {
        "vins": ["5YJ3E1EA7KF000001"],
        "config": {
            "hostname": "telemetry.example.com",
            "port": 4443,
            "ca": CA,
            "fields": {
                "VehicleSpeed": {"interval_seconds": 10},
                "Soc": {"interval_seconds": 60},
            },
            "alert_types": ["service"],
            "exp": 1_767_225_600,
        },
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hostname": ""}, "hostname"),
        ({"port": 0}, "port"),
        ({"ca_pem": "not pem"}, "PEM"),
        ({"alert_types": ["all"]}, "alert type"),
        ({"delivery_policy": "sometimes"}, "delivery policy"),
    ],
)
def test_body_rejects(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "hostname": "h", "port": 443, "ca_pem": CA, "fields": [FieldSpec("Soc", 1)],
    }
    args.update(kwargs)
    with pytest.raises(FleetConfigError, match=message):
        build_fleet_config(**args)  # type: ignore[arg-type]


def test_cli_prints_body(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pki = init_pki(tmp_path / "pki", host="telemetry.example.com")
    code = main([
        "tesla", "config", "--host", "telemetry.example.com", "--port", "4443",
        "--ca", str(pki.ca_cert), "--fields", "VehicleSpeed:10,Soc:60",
        "--alert-types", "service", "--exp", "30", "--vin", "VIN1",
    ])
    assert code == 0
    body = json.loads(capsys.readouterr().out)
    config = body["config"]
    assert body["vins"] == ["VIN1"]
    assert config["ca"] == pki.ca_cert.read_text()
    assert config["fields"]["Soc"] == {"interval_seconds": 60}
    assert config["alert_types"] == ["service"]
    assert config["exp"] > 1_700_000_000


def test_cli_rejects_unknown_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pki = init_pki(tmp_path / "pki")
    code = main([
        "tesla", "config", "--host", "h", "--ca", str(pki.ca_cert), "--fields", "Speed:10",
    ])
    assert code == 2
    assert "unknown field 'Speed'" in capsys.readouterr().err
