"""Child processes a test starts, stopped together with everything under them however the test
ends (passed, failed, or timed out in a wait).

A child that outlives its test keeps a core busy or a port or a lock held for the tests after it.
``Popen.kill`` alone does not reach far enough: ``reclor-lab train --processes 2`` starts torch's
launcher, and the launcher starts each worker in a session of its own, so neither the child nor
its process group reaches the workers. The family is found through ``/proc`` (Linux; elsewhere
only the child itself is killed).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path


def children(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (empty where there is no ``/proc``)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, parents before their children."""
    out, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        out += kids
        todo += kids
    return out


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` and every process below it, then reap ``proc``.

    The family is listed before ``proc`` dies (an orphan's parent becomes init, and it could no
    longer be found), and listed again after, for a child started in between."""
    family = descendants(proc.pid) if proc.poll() is None else []
    proc.kill()
    for _ in range(2):
        for pid in family:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        family = [kid for pid in family for kid in descendants(pid)]
    proc.wait()


@contextlib.contextmanager
def started(cmd: list[str], **kwargs):
    """``subprocess.Popen(cmd, **kwargs)``, and on the way out (whatever way) the child and
    everything under it killed (:func:`kill_tree`); a child that has exited is only reaped."""
    proc = subprocess.Popen(cmd, **kwargs)
    try:
        yield proc
    finally:
        kill_tree(proc)


def run(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)``, except
    that a timeout (or any other way out) kills the child's whole family, not the child alone."""
    with started(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs) as proc:
        out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
