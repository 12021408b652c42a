"""tests/procs.py: a child that a test starts goes, with everything under it, however the test ends."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from procs import descendants, started

#: A child that starts a grandchild in a session of its own (as torch's launcher starts its
#: workers), prints the grandchild's pid, then waits.
PARENT = """
import subprocess, sys, time
kid = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
print(kid.pid, flush=True)
time.sleep(300)
"""


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a killed orphan stays a zombie until init reaps it


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the processes through /proc")
def test_a_failing_test_leaves_no_grandchild_behind():
    with pytest.raises(AssertionError):
        with started([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True) as proc:
            grandchild = int(proc.stdout.readline())
            assert descendants(proc.pid) == [grandchild]
            assert False, "the test fails here"
    deadline = time.monotonic() + 10
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild) and proc.returncode == -9
    with pytest.raises(ProcessLookupError):
        os.kill(proc.pid, 0)
