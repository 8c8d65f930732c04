"""Children fleetgate (and the test harness) starts end with the process, not with a thread."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fleetgate.lifetime import end_with_parent, popen_ending_with_parent

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG")

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def _gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie nobody reaps counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in {"Z", "X"}


def _wait_gone(pid: int, bound_s: float = 20.0) -> bool:
    deadline = time.monotonic() + bound_s
    while not _gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_child_started_from_a_short_lived_thread_outlives_that_thread() -> None:
    started: dict[str, subprocess.Popen[bytes]] = {}

    def start_both() -> None:
        # The plain way ties the child to this thread; the helper ties it to the process.
        started["plain"] = subprocess.Popen(SLEEPER, preexec_fn=end_with_parent)  # noqa: PLW1509
        started["ours"] = popen_ending_with_parent(SLEEPER)

    thread = threading.Thread(target=start_both)
    thread.start()
    thread.join()
    plain, ours = started["plain"], started["ours"]
    try:
        # The plain child's SIGTERM proves the thread has ended and the kernel has acted.
        assert plain.wait(timeout=20) == -signal.SIGTERM
        assert ours.poll() is None, "a child must not die with the thread that started it"
    finally:
        for proc in (plain, ours):
            proc.kill()
            proc.wait()


def test_a_child_ends_when_its_parent_is_killed_with_sigkill() -> None:
    parent_code = (
        "import sys, threading\n"
        "from fleetgate.lifetime import popen_ending_with_parent\n"
        "box = {}\n"
        "t = threading.Thread(target=lambda: box.update(p=popen_ending_with_parent("
        f"{SLEEPER!r})))\n"
        "t.start(); t.join()\n"
        "print(box['p'].pid, flush=True)\n"
        "sys.stdin.read()\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert parent.stdout is not None
    child_pid = int(parent.stdout.readline())
    try:
        assert not _gone(child_pid)
        parent.kill()
        parent.wait()
        assert _wait_gone(child_pid), "the child outlived its parent"
    finally:
        if not _gone(child_pid):
            os.kill(child_pid, signal.SIGKILL)
        if parent.stdin is not None:
            parent.stdin.close()
        if parent.stdout is not None:
            parent.stdout.close()
