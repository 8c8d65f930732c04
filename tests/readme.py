"""The README's shell commands, as written, for tests that run them literally."""

from __future__ import annotations

import re
from pathlib import Path

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
