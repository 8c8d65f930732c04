"""Access to the real Teltonika frames in shared/testdata (shared by unit and socket tests)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

_RELATIVE = Path("shared") / "testdata" / "teltonika" / "vectors.json"


def _find_vectors() -> Path:
    """The shared test data sits next to the checkout (``../shared``); a git worktree may be
    nested deeper, so look upwards from this file."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / _RELATIVE
        if candidate.exists():
            return candidate
    return here.parents[2] / _RELATIVE


VECTORS_PATH = _find_vectors()


@cache
def vectors() -> dict[str, dict[str, Any]]:
    return {v["id"]: v for v in json.loads(VECTORS_PATH.read_text())}


def frame(vector_id: str) -> bytes:
    return bytes.fromhex(vectors()[vector_id]["hex"])
