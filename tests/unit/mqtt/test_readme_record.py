"""The README's CAN-gateway record is what the decoder makes of the README's own example:
the signed rpm message of gw-001 (key ``gw-001-secret``, the MAC the README prints)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from fleetgate.protocols.mqtt.decoder import GatewayDecoder
from fleetgate.records import Record, parse_rfc3339_ms, record_dict

README = Path(__file__).resolve().parents[3] / "README.md"


def test_the_readme_gateway_record_comes_from_its_example_message() -> None:
    text = README.read_text()
    section = text[text.index("## CAN-bus gateways over MQTT") :]
    block = section[section.index("A record:") :]
    start = block.index("```json") + len("```json")
    shown = json.loads(block[start : block.index("```", start)])
    mac = re.search(r"→ ([0-9a-f]{64})", section)
    assert mac is not None
    payload = {"value": 3500, "ts": 1700000000000, "unit": "rpm", "seq": 7, "hmac": mac[1]}
    decoder = GatewayDecoder(hmac_keys={"gw-001": b"gw-001-secret"})
    record = decoder.decode(
        "vehicles/gw-001/engine/rpm",
        json.dumps(payload).encode(),
        parse_rfc3339_ms(shown["received_at"]),
    )
    assert isinstance(record, Record)
    assert record_dict(record) == shown
