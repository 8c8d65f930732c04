"""Limits of the Tesla protocol that the listener needs before any frame arrives.

Apart from :mod:`.core` so that a listener can be set up without loading the frame
processing (protobuf, flatbuffers, certificate parsing) before the first vehicle.
"""

from __future__ import annotations

from typing import Final

# The reference server's largest frame; larger ones get the error reply (see core).
MAX_FRAME_BYTES: Final = 1_000_000
