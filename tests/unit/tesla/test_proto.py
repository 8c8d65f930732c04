"""Generated protobuf code: matches the reference fact table and the committed .proto files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from fleetgate.protocols.tesla.proto import (
    vehicle_alert_pb2,
    vehicle_connectivity_pb2,
    vehicle_data_pb2,
    vehicle_error_pb2,
    vehicle_metric_pb2,
)

FACTS = json.loads((Path(__file__).parent / "data" / "tesla-protos.json").read_text())
PROTO_DIR = Path(vehicle_data_pb2.__file__).parent
MODULES: dict[str, ModuleType] = {
    "vehicle_alert.proto": vehicle_alert_pb2,
    "vehicle_connectivity.proto": vehicle_connectivity_pb2,
    "vehicle_data.proto": vehicle_data_pb2,
    "vehicle_error.proto": vehicle_error_pb2,
    "vehicle_metric.proto": vehicle_metric_pb2,
}


@pytest.mark.parametrize("proto_file", FACTS["proto_files"], ids=lambda f: f["file"])
def test_descriptors_match_fact_table(proto_file: dict[str, Any]) -> None:
    fd = MODULES[proto_file["file"].rsplit("/", 1)[-1]].DESCRIPTOR
    assert fd.package == proto_file["package"]
    for message in proto_file["messages"]:
        desc = fd.message_types_by_name[message["name"]]
        assert [(f.name, f.number, f.json_name) for f in desc.fields] == [
            (f["name"], f["number"], f["json_name"]) for f in message["fields"]
        ]
        for f in message["fields"]:
            field = desc.fields_by_name[f["name"]]
            oneof = field.containing_oneof
            assert (oneof.name if oneof else None) == f.get("oneof")
            assert field.is_repeated == (f["label"] in ("repeated", "map"))
    for enum in proto_file["enums"]:
        values = fd.enum_types_by_name[enum["name"]].values
        assert [(v.name, v.number) for v in values] == [
            (v["name"], v["number"]) for v in enum["values"]
        ]


def test_counts_match_fact_table() -> None:
    total = FACTS["counts"]["total"]
    messages = fields = enums = values = 0
    for module in MODULES.values():
        fd = module.DESCRIPTOR
        for desc in fd.message_types_by_name.values():
            messages += 1
            fields += len(desc.fields)
        for enum in fd.enum_types_by_name.values():
            enums += 1
            values += len(enum.values)
    assert (messages, fields, enums, values) == (
        total["messages"],
        total["fields"],
        total["enums"],
        total["enum_values"],
    )


def test_value_oneof_has_no_field_20_and_field_enum_ends_at_259() -> None:
    numbers = {f.number for f in vehicle_data_pb2.Value.DESCRIPTOR.fields}
    assert 20 not in numbers
    assert max(numbers) == 54
    assert vehicle_data_pb2.Field.Name(259) == "SelfDrivingMilesSinceReset"
    assert vehicle_data_pb2.Field.Value("Location") == 21


def test_committed_generated_code_is_fresh(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    protos = sorted(str(p) for p in PROTO_DIR.glob("*.proto"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            str(PROTO_DIR),
            f"--python_out={tmp_path}",
            *protos,
        ],
        check=True,
    )
    for proto in protos:
        name = Path(proto).stem + "_pb2.py"
        assert (tmp_path / name).read_text() == (PROTO_DIR / name).read_text(), (
            f"{name} is stale: run scripts/gen_tesla_protos.sh"
        )
