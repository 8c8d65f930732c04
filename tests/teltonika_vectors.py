"""Access to the real Teltonika frames in shared/testdata (shared by unit and socket tests)."""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

_RELATIVE = Path("shared") / "testdata" / "teltonika" / "vectors.json"


def _vectors_path() -> Path:
    """``shared/testdata`` beside the checkout (or beside any folder above it, so that a
    git worktree finds it too); ``FLEETGATE_TESTDATA`` names the testdata folder directly."""
    override = os.environ.get("FLEETGATE_TESTDATA")
    if override:
        return Path(override) / "teltonika" / "vectors.json"
    for parent in Path(__file__).resolve().parents:
        if (parent / _RELATIVE).is_file():
            return parent / _RELATIVE
    return Path(__file__).resolve().parents[2] / _RELATIVE


VECTORS_PATH = _vectors_path()


@cache
def vectors() -> dict[str, dict[str, Any]]:
    return {v["id"]: v for v in json.loads(VECTORS_PATH.read_text())}


def frame(vector_id: str) -> bytes:
    return bytes.fromhex(vectors()[vector_id]["hex"])
