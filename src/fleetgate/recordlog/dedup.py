"""De-duplication of log records by their ``record_id`` within a window.

A node that restarts replays its spool from the sinks' confirmed cursors, and a sink that
lost a delivery report sends a batch again: the log then holds some records twice, with
the same ``record_id`` (``<node>-<offset>``). Replays come soon after the original, so a
window of the most recent ids catches them with bounded memory. Records without an id
(written by a node without a ledger offset) are never taken for duplicates.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

DEFAULT_WINDOW: Final = 100_000


class RecordIdWindow:
    """The last ``size`` record ids seen; :meth:`seen` tells a repeat from a new one."""

    def __init__(self, size: int = DEFAULT_WINDOW) -> None:
        if size < 0:
            raise ValueError("window size must be 0 or more")
        self.size = size
        self.duplicates = 0
        self._ids: OrderedDict[str, None] = OrderedDict()

    def seen(self, record_id: str | None) -> bool:
        """True when ``record_id`` is in the window (a duplicate); else remember it."""
        if record_id is None or self.size == 0:
            return False
        ids = self._ids
        if record_id in ids:
            ids.move_to_end(record_id)
            self.duplicates += 1
            return True
        ids[record_id] = None
        if len(ids) > self.size:
            ids.popitem(last=False)
        return False

    def __len__(self) -> int:
        return len(self._ids)
