"""Which trackers may connect: every syntactically valid IMEI, or a configured allow-list."""

from __future__ import annotations


class DeviceAuthority:
    """Decides whether an IMEI may connect: everyone, or the configured allow-list."""

    def __init__(self, allowed: list[str] | None) -> None:
        self._allowed = frozenset(allowed) if allowed is not None else None

    def allows(self, imei: str) -> bool:
        return self._allowed is None or imei in self._allowed
