"""The OS sandbox a submission runs in: bubblewrap (Linux namespaces), limits, and nothing else in view.

One sandbox per student (:func:`run`), made by ``bwrap`` (Debian's ``bubblewrap``: the tool
Flatpak runs its apps in):

* ``--unshare-all``: its own user, pid, mount, network (no interface but a down loopback), ipc,
  uts and cgroup namespaces; ``--die-with-parent`` and the pid namespace end every process in it
  when it ends (or when the grader dies); ``--new-session``.
* A read-only view built from explicit binds: ``/usr`` (and the ``/lib``, ``/bin`` links), the
  interpreter's prefix, the kit's environment, the kit's package and its tiny model; the
  package's ``course/grading/`` (references, hidden cases, comparisons) is covered by an empty
  folder, and ``tools/honest.py`` (a working solution of every exercise) by an empty file. The
  student's exercise code and the exercises' inputs are bound read-only; a private
  ``/tmp`` and working folder are memory of a fixed size. No class folder, no other student,
  no gradebook, no home of the instructor's, no repository beside the package.
* Limits (``prlimit``): process count, file size, no core files, a CPU and address-space backstop;
  inside, :mod:`reclor_lab.course.runner` sets each exercise's own CPU and memory limit. The
  wall-clock limit is kept from outside. Run as root, the sandbox runs as a uid of its own per
  concurrent sandbox (``SANDBOX_UIDS``), so that the process limit counts only its processes.

Where isolation is unavailable, :func:`unavailable` says what is missing and how to get it, and
nothing is graded.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import reclor_lab
from reclor_lab.config import TINY_MODEL_DIR

#: Where things are inside a sandbox.
INSIDE_JOB, INSIDE_INPUTS, INSIDE_WORK = "/grading/job", "/grading/inputs", "/grading/work"
#: The uids sandboxes run as when the grader is root: one per sandbox running at once.
SANDBOX_UIDS = range(61000, 61256)
#: The package folder that must never be visible inside.
HIDDEN = Path(reclor_lab.__file__).resolve().parent / "course" / "grading"
#: Files of the package that must read empty inside: the honest-solution generator writes a
#: working solution of every exercise (tests and benches use it, a submission must not).
HIDDEN_FILES = (Path(reclor_lab.__file__).resolve().parent / "tools" / "honest.py",)
#: The sandbox's own environment: nothing of the instructor's, offline, one thread.
ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": INSIDE_WORK, "TMPDIR": "/tmp",
       "HF_HOME": INSIDE_WORK + "/hf", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0",
       "MPLBACKEND": "Agg", "TQDM_DISABLE": "1"}
#: The sandbox's ``oom_score_adj``: the highest, so that it is killed first when memory runs out.
OOM_SCORE_ADJ = 1000
INSTALL_HINT = ("install bubblewrap (Debian/Ubuntu: `apt-get install -y bubblewrap`, Fedora: `dnf install "
                "bubblewrap`) on a Linux machine with user namespaces enabled")


@dataclass(frozen=True)
class Limits:
    """What one exercise of a submission may use (the sandbox as a whole gets backstops from these)."""

    cpu_seconds: int = 60  # CPU seconds of an exercise's process (a correct one needs 1-5)
    memory_bytes: int = 2 * 2**30  # address space an exercise may add to what the runner holds
    wall_seconds: int = 180  # wall-clock seconds of an exercise
    file_bytes: int = 16 * 2**20  # the largest file it may write (in its memory-backed folders)
    processes: int = 64  # processes and threads of the whole sandbox
    scratch_bytes: int = 64 * 2**20  # each of its two writable folders (/tmp, its working folder)
    startup_seconds: int = 180  # the runner's start (Python, torch, the tiny model) before the first exercise

    def as_dict(self) -> dict:
        return {"cpu_seconds": self.cpu_seconds, "memory_bytes": self.memory_bytes,
                "wall_seconds": self.wall_seconds}


def binds() -> list[Path]:
    """What a sandbox sees read-only besides ``/usr``: the interpreter's prefix, the environment,
    the kit's package and tiny model (each a folder, resolved; nested ones once)."""
    wanted = [Path(sys.base_prefix), Path(sys.prefix), Path(reclor_lab.__file__).parent, TINY_MODEL_DIR]
    found: list[Path] = []
    for p in sorted({w.resolve() for w in wanted if w.exists()}, key=lambda p: len(p.parts)):
        if not any(p == f or f in p.parents for f in found):
            found.append(p)
    return found


_UNAVAILABLE: str | None = None


def unavailable() -> str:
    """``""`` when a sandbox can be made here; else one line: what is missing and how to get it."""
    global _UNAVAILABLE
    if _UNAVAILABLE is None:
        _UNAVAILABLE = _probe()
    return _UNAVAILABLE


def _probe() -> str:
    if not sys.platform.startswith("linux"):
        return f"grading needs Linux namespaces, which {sys.platform} does not have: grade on a Linux machine"
    for tool in ("bwrap", "prlimit", "choom"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed: {INSTALL_HINT}" if tool == "bwrap" else \
                f"`{tool}` (util-linux) is not installed: `apt-get install -y util-linux`"
    if os.geteuid() == 0:
        for tool in ("unshare", "setpriv", "mount"):
            if shutil.which(tool) is None:
                return f"`{tool}` (util-linux) is not installed: `apt-get install -y util-linux mount`"
    try:
        with tempfile.TemporaryDirectory(prefix="reclor-lab-probe-") as tmp:
            Path(tmp, "job").mkdir()
            r = subprocess.run(command(Path(tmp, "job"), Path(tmp, "job"), ["/usr/bin/true"], 0, Limits()),
                               capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        return f"bubblewrap could not start a sandbox ({type(e).__name__}: {e}): {INSTALL_HINT}"
    if r.returncode != 0:
        why = (r.stderr.strip().splitlines() or ["no message"])[-1]
        return (f"bubblewrap could not make a sandbox here ({why}): user namespaces may be disabled "
                "(sysctl user.max_user_namespaces, kernel.unprivileged_userns_clone, or an AppArmor "
                f"restriction), or {INSTALL_HINT}")
    return ""


def command(job: Path, inputs: Path, argv: list[str], slot: int, limits: Limits, n_exercises: int = 1) -> list[str]:
    """The command line of one sandbox running ``argv`` (see the module's docstring)."""
    root = os.geteuid() == 0
    stage = Path(tempfile.gettempdir()) / "reclor-lab-stage"
    sources = binds() + [job.resolve(), inputs.resolve()]
    targets = [str(p) for p in binds()] + [INSIDE_JOB, INSIDE_INPUTS]
    if root:  # the sandbox's uid may not reach these paths (a home of mode 700): bind them where it can
        seen = [str(stage / str(k)) for k in range(len(sources))]
    else:
        seen = [str(p) for p in sources]
    args = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session",
            "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
            "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin"]
    if Path("/etc/ld.so.cache").exists():
        args += ["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    for src, dst in zip(seen, targets):
        args += ["--ro-bind", src, dst]
    if HIDDEN.exists():
        args += ["--tmpfs", str(HIDDEN), "--remount-ro", str(HIDDEN)]
    for f in HIDDEN_FILES:
        if f.exists():
            args += ["--ro-bind", "/dev/null", str(f)]
    args += ["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev",
             "--size", str(limits.scratch_bytes), "--tmpfs", "/tmp",
             "--size", str(limits.scratch_bytes), "--tmpfs", INSIDE_WORK, "--remount-ro", "/",
             "--chdir", INSIDE_WORK, "--clearenv"]
    for k, v in ENV.items():
        args += ["--setenv", k, v]
    backstop_cpu = limits.cpu_seconds * (n_exercises + 1) + limits.startup_seconds
    # the kernel's out-of-memory killer takes a sandbox's processes before anything else (the
    # grader, another student's runner is as likely as this one): memory is limited per process,
    # so a sandbox of many processes could still fill the machine's
    limit = ["choom", "-n", str(OOM_SCORE_ADJ), "--",
             "prlimit", f"--nproc={limits.processes + (0 if root else _own_tasks())}",
             f"--fsize={limits.file_bytes}", "--core=0", "--nofile=256", f"--cpu={backstop_cpu}",
             f"--as={limits.memory_bytes + 16 * 2**30}", "--"]
    if not root:
        return limit + args + ["--"] + argv
    uid = str(SANDBOX_UIDS[slot % len(SANDBOX_UIDS)])
    mounts = [f"mkdir -p {shlex.quote(s)} && mount --rbind {shlex.quote(str(src))} {shlex.quote(s)}"
              for s, src in zip(seen, sources)]
    script = " && ".join(mounts) + ' && exec "$@"'
    return (["unshare", "--mount", "--propagation", "private", "--", "sh", "-ec", script, "sh",
             "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
            + limit + args + ["--"] + argv)


def _own_tasks() -> int:
    """Processes and threads of this uid now (RLIMIT_NPROC counts them all)."""
    uid, n = os.getuid(), 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{name}").st_uid == uid:
                    n += len(os.listdir(f"/proc/{name}/task"))
    return n


@contextlib.contextmanager
def slot():
    """A sandbox slot no other sandbox on this machine holds now (a lock file per slot), so that
    two sandboxes never share a uid, whichever grader started them."""
    folder = Path(tempfile.gettempdir()) / "reclor-lab-slots"
    folder.mkdir(mode=0o700, exist_ok=True)
    while True:
        for k in range(len(SANDBOX_UIDS)):
            fd = os.open(folder / f"{k}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                yield k
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            return
        time.sleep(0.1)


def _end_uid(uid: int, seconds: float = 30.0) -> None:
    """Kill every process of the slot's own ``uid`` and wait until none is left: the pid namespace
    ends them when bwrap dies, but asynchronously; nothing of a sandbox outlives :func:`run`. Only
    this slot's sandbox runs as ``uid`` (its lock is held)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = []
        for name in os.listdir("/proc"):
            if name.isdigit():
                with contextlib.suppress(OSError, IndexError):
                    state = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[0]
                    if os.stat(f"/proc/{name}").st_uid == uid and state not in ("Z", "X"):  # a zombie is dead
                        alive.append(int(name))
        if not alive:
            return
        for pid in alive:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


@dataclass
class Outcome:
    """What came out of one sandbox: the runner's frames, why it stopped early if it did, and the
    end of its error output (for a crash's message)."""

    frames: list
    stopped: str = ""  # "", "time", "size", or "exit status N" / "signal NAME"
    stderr: str = ""


def run(job: Path, inputs: Path, limits: Limits, n_exercises: int, max_bytes: int) -> Outcome:
    """Run the runner on ``job`` in a sandbox of its own and collect its frames (file descriptor 3
    inside is the write end of a pipe); kill it at the wall-clock limit. Every process of the
    sandbox has ended when this returns."""
    for p in (job, inputs):  # the sandbox's uid reads them through the bind: world-readable, not writable
        p.chmod(0o755)
        for f in p.iterdir():
            f.chmod(0o644)
    with slot() as k:
        def start(w: int, err) -> subprocess.Popen:
            argv = [sys.executable, "-I", "-m", "reclor_lab.course.runner", INSIDE_JOB, INSIDE_INPUTS, str(w),
                    "--sweep"]
            return subprocess.Popen(command(job, inputs, argv, k, limits, n_exercises), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err, pass_fds=(w,), start_new_session=True)

        # bwrap and its monitor are killed at the end; the pid namespace takes the rest, and as root
        # every process of the slot's own uid is waited for
        uid = SANDBOX_UIDS[k % len(SANDBOX_UIDS)] if os.geteuid() == 0 else None
        return _collect(start, limits, n_exercises, max_bytes, lambda: uid is not None and _end_uid(uid))


def run_unsandboxed(job: Path, inputs: Path, limits: Limits, n_exercises: int, max_bytes: int) -> Outcome:
    """The runner as a plain child process, without namespaces (``--no-sandbox``: trusted
    submissions only; the gradebook says so in every row)."""
    with tempfile.TemporaryDirectory(prefix="reclor-lab-work-") as work:
        def start(w: int, err) -> subprocess.Popen:
            argv = [sys.executable, "-I", "-m", "reclor_lab.course.runner", str(job), str(inputs), str(w)]
            env = dict(ENV, HOME=work, HF_HOME=work + "/hf", TMPDIR=work)
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                    pass_fds=(w,), start_new_session=True, cwd=work, env=env)

        return _collect(start, limits, n_exercises, max_bytes, lambda: None)


def _collect(start, limits: Limits, n_exercises: int, max_bytes: int, after) -> Outcome:
    """Start the runner (``start(w, err)``, ``w`` the pipe's write end it answers on), read its
    frames until it ends, the wall-clock deadline or ``max_bytes``; kill its process group, wait,
    ``after()``; what it wrote on stderr (the end of it) for a crash's message."""
    from reclor_lab.course.plain import read_frames

    r, w = os.pipe()
    os.set_inheritable(w, True)
    with tempfile.TemporaryFile() as err:
        try:
            proc = start(w, err)
        finally:
            os.close(w)
        deadline = time.monotonic() + limits.startup_seconds + n_exercises * (limits.wall_seconds + 5)
        try:
            frames, stopped = read_frames(r, deadline, max_bytes)
        finally:
            os.close(r)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
            after()
        err.seek(0)
        text = err.read()[-4000:].decode("utf-8", "replace")
    if not stopped and code and not frames:
        stopped = f"signal {signal.Signals(-code).name}" if code < 0 and -code in signal.Signals._value2member_map_ \
            else f"exit status {code}"
    return Outcome(frames, stopped, text)
