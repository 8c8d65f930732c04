"""The README's shell commands, as written, for tests that run them literally."""

from __future__ import annotations

import re
import shutil
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def sh_lines(heading: str) -> list[str]:
    """Commands of the ``sh`` blocks under ``heading`` (continuations joined, comments
    and blank lines dropped), in order."""
    text = README.read_text()
    start = text.index(f"\n{heading}\n")
    level = heading.split(" ", 1)[0]
    following = re.search(rf"\n#{{2,{len(level)}}} ", text[start + 1 :])
    end = start + 1 + following.start() if following else len(text)
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text[start:end], flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = " ".join(line.split())
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def port_open(port: int) -> bool:
    """True when something listens on loopback ``port``."""
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def readme_workdir(directory: Path, ports: Sequence[int]) -> Path:
    """``directory`` laid out as the README assumes (``.venv/bin/fleetgate`` at hand), once
    the fixed ``ports`` the README's literal commands use are known to be free."""
    if any(port_open(port) for port in ports):
        pytest.fail(f"ports {tuple(ports)} must be free for the README's literal commands")
    (directory / ".venv" / "bin").mkdir(parents=True)
    fleetgate = shutil.which("fleetgate", path=str(Path(sys.executable).parent))
    assert fleetgate is not None, "the fleetgate console script next to this Python"
    (directory / ".venv" / "bin" / "fleetgate").symlink_to(fleetgate)
    return directory
