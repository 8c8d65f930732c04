"""Access to the real Teltonika frames in shared/testdata (shared by unit and socket tests)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

VECTORS_PATH = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "teltonika" / "vectors.json"


@cache
def vectors() -> dict[str, dict[str, Any]]:
    return {v["id"]: v for v in json.loads(VECTORS_PATH.read_text())}


def frame(vector_id: str) -> bytes:
    return bytes.fromhex(vectors()[vector_id]["hex"])
