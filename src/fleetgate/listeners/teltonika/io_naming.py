"""Which IO table names a tracker's elements: the configured default, or its family's.

``teltonika.io_family`` is the default (the common FMB/FMC/FMT/FMM table unless set);
``teltonika.io_families`` maps IMEIs or IMEI prefixes to a family or model (``fm6``,
``GH3000``, ``FMB640``), the longest matching prefix winning, so one entry can name a
batch of devices and another a single one. Raw ids always stay in ``data.io`` beside the
names (see :mod:`fleetgate.protocols.teltonika.records`).
"""

from __future__ import annotations

from typing import Final

from fleetgate.config import TeltonikaConfig
from fleetgate.protocols.teltonika.io_names import IoTable, io_table

# IMEIs whose table was looked up, kept so a UDP datagram costs one dict lookup.
_CACHE_MAX: Final = 100_000


class IoTables:
    """Looks up the IO table of an IMEI (the config was validated: every name resolves)."""

    def __init__(self, settings: TeltonikaConfig) -> None:
        self.default = io_table(settings.io_family)
        # Longest prefix first, so the first match is the most specific.
        self._prefixes = sorted(
            ((prefix, io_table(name)) for prefix, name in settings.io_families.items()),
            key=lambda item: len(item[0]),
            reverse=True,
        )
        self._cache: dict[str, IoTable] = {}

    def for_imei(self, imei: str) -> IoTable:
        table = self._cache.get(imei)
        if table is None:
            table = next(
                (table for prefix, table in self._prefixes if imei.startswith(prefix)),
                self.default,
            )
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[imei] = table
        return table
