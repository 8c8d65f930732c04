"""IO tables per device: the default family, IMEI prefixes (longest wins), whole IMEIs,
and configuration errors that name the key."""

from __future__ import annotations

import pytest

from fleetgate.config import ConfigError, TeltonikaConfig, build_config
from fleetgate.listeners.teltonika.io_naming import IoTables
from fleetgate.protocols.teltonika.io_names import FM6_TABLE, FMB_TABLE, GH_TABLE


def test_longest_prefix_wins_and_others_get_the_default() -> None:
    tables = IoTables(
        TeltonikaConfig(
            io_family="fm6",
            io_families={"3520": "GH3000", "352093081": "fmb", "352093081452251": "gh"},
        )
    )
    assert tables.default is FM6_TABLE
    assert tables.for_imei("352011111111111") is GH_TABLE
    assert tables.for_imei("352093081000000") is FMB_TABLE
    assert tables.for_imei("352093081452251") is GH_TABLE
    assert tables.for_imei("356307042441013") is FM6_TABLE


def test_the_default_is_the_common_table() -> None:
    assert IoTables(TeltonikaConfig()).for_imei("356307042441013") is FMB_TABLE


@pytest.mark.parametrize(
    ("teltonika", "message"),
    [
        ({"io_family": "XYZ123"}, "teltonika.io_family: no Teltonika IO table for 'XYZ123'"),
        ({"io_families": {"3520": "nokia"}}, "teltonika.io_families: no Teltonika IO table"),
        ({"io_families": {"35x": "fmb"}}, "'35x': keys are IMEIs or IMEI prefixes"),
        (
            {"allowed_imeis": ["1"], "allowed_imeis_redis": {"key": "k"}},
            "configure one of them",
        ),
    ],
)
def test_bad_settings_are_refused_with_the_key(teltonika: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        build_config({"teltonika": teltonika}, environ={})
    assert message in str(refused.value)
