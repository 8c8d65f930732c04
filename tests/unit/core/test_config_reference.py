"""docs/configuration.md is what ``fleetgate config reference`` prints from the model."""

from __future__ import annotations

import re
from pathlib import Path

from fleetgate.commands.config import reference
from fleetgate.config import Config

DOC = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"


def test_the_reference_document_is_up_to_date() -> None:
    assert DOC.read_text() == reference(), (
        "docs/configuration.md is out of date: .venv/bin/fleetgate config reference "
        "> docs/configuration.md"
    )


def test_every_key_of_the_model_is_in_the_reference() -> None:
    documented = set(re.findall(r"^\| `([^`]+)` \|", reference(), flags=re.MULTILINE))
    assert set(Config.model_fields) <= documented
    assert {"data_connectors.file.path", "monitoring.statsd.host", "teltonika.port"} <= documented
