"""Prepare ``.whl/`` for the lent GPU machine, and check that what travels with a call fits.

The machine's image has Python 3.12, torch 2.11 (CUDA 13), transformers 5.17, peft, accelerate,
tokenizers, safetensors, pyarrow, fsspec, xxhash and huggingface-hub, and reaches no package
index. ``bench/gpu_run.sh`` needs bitsandbytes (the 4-bit layers) and pytest (the GPU tests) on
top: their wheels, at the lock's versions, are downloaded here into the git-ignored ``.whl/``
folder, and ``gpu_run.sh`` installs them there with :data:`INSTALL` (no index, no dependencies).
The kit's other packages (datasets, evaluate, matplotlib) are imported lazily and the GPU run does
not reach them.

Every requirement of every wheel must be met by the image or by another wheel (checked from the
wheels' metadata), and the tree that travels (tracked files, untracked files git does not ignore,
and ``.whl/``) must stay under :data:`TRAVEL_BUDGET_MIB` with room to spare.

    python3 bench/gpu_wheels.py            # download what is missing, check, print the sizes
    python3 bench/gpu_wheels.py --check    # no download: check and size what is there
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WHEEL_DIR = REPO / ".whl"
#: What one call may carry (working tree + carried folders), and the most this kit lets it use:
#: a margin for the files a session adds before its call (logs, a result table).
TRAVEL_LIMIT_MIB = 64
TRAVEL_BUDGET_MIB = 56
#: The wheels the image lacks, at requirements-lock.txt's versions (each installs on Python 3.12
#: beside torch 2.11: bitsandbytes 0.50 needs torch >= 2.3 and ships its CUDA 13 library).
WHEELS = {
    "bitsandbytes": "0.50.2",
    "pytest": "9.2.0",
    "pluggy": "1.7.0",
    "iniconfig": "2.3.1",
    "pygments": "2.21.0",
}
#: What the image already has (distribution names, normalised), torch's and transformers' own
#: dependencies included: a wheel's requirement on one of these is met there.
IMAGE = {
    "torch", "transformers", "peft", "accelerate", "tokenizers", "safetensors", "pyarrow", "fsspec", "xxhash",
    "huggingface-hub", "numpy", "packaging", "pyyaml", "regex", "tqdm", "filelock", "jinja2", "sympy", "networkx",
    "typing-extensions", "psutil", "setuptools",
}
#: How the machine installs them (gpu_run.sh runs exactly this, then puts /tmp/site first on PYTHONPATH).
INSTALL = ("python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "
           "--target /tmp/site .whl/*.whl")
#: Every manylinux tag a glibc 2.28 x86-64 machine takes (bitsandbytes 0.50's wheel is 2_24).
PLATFORMS = (*[f"manylinux_2_{v}_x86_64" for v in range(28, 16, -1)], "manylinux2014_x86_64", "manylinux1_x86_64")
MIB = 2**20


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def download(names: dict[str, str]) -> None:
    """Python 3.12 manylinux wheels (or pure-Python ones), without their dependencies."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", *[a for p in PLATFORMS for a in ("--platform", p)], "-d", str(WHEEL_DIR),
           *[f"{n}=={v}" for n, v in names.items()]]
    subprocess.run(cmd, check=True)


def wheel_name(path: Path) -> str:
    return normalise(path.name.split("-")[0])


def requirements(path: Path) -> list[str]:
    """The wheel's unconditional requirements and those whose marker holds on Linux, Python 3.12
    (extras are left out)."""
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode("utf-8").splitlines()
    out = []
    for line in lines:
        if not line.startswith("Requires-Dist:"):
            continue
        req, _, marker = line.removeprefix("Requires-Dist:").strip().partition(";")
        if marker and not _marker_holds(marker):
            continue
        out.append(normalise(re.split(r"[\s<>=!~\[(]", req.strip(), maxsplit=1)[0]))
    return out


def _marker_holds(marker: str) -> bool:
    from packaging.markers import Marker

    env = {"python_version": "3.12", "python_full_version": "3.12.0", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
           "implementation_name": "cpython", "extra": ""}
    return Marker(marker).evaluate(env)


def unmet(wheels: list[Path]) -> dict[str, list[str]]:
    """Per wheel, its requirements that neither the image nor another wheel provides."""
    have = IMAGE | {wheel_name(w) for w in wheels}
    return {w.name: missing for w in wheels if (missing := sorted(set(requirements(w)) - have))}


def travelling_files() -> list[Path]:
    """What a call carries besides ``.whl/``: tracked files and untracked files git does not ignore."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         check=True, capture_output=True).stdout.decode()
    return [REPO / p for p in out.split("\0") if p and (REPO / p).is_file()]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="download nothing: check and size what .whl/ holds")
    args = p.parse_args()
    ignored = subprocess.run(["git", "check-ignore", "-q", ".whl/x.whl"], cwd=REPO).returncode == 0
    if not ignored:
        print("error: .whl/ is not git-ignored; add '/.whl/' to .gitignore", file=sys.stderr)
        return 1
    WHEEL_DIR.mkdir(exist_ok=True)
    present = {wheel_name(w): w for w in WHEEL_DIR.glob("*.whl")}
    wanted = {n: v for n, v in WHEELS.items() if not any(
        w.name.startswith(f"{n.replace('-', '_')}-{v}-") or w.name.lower().startswith(f"{n}-{v}-")
        for w in present.values())}
    if wanted and not args.check:
        download(wanted)
    wheels = sorted(WHEEL_DIR.glob("*.whl"))
    names = {wheel_name(w) for w in wheels}
    problems = [f"{n}=={v} is not in .whl/ (run without --check)"
                for n, v in WHEELS.items() if normalise(n) not in names]
    problems += [f"{w}: needs {', '.join(m)}, which neither the image nor .whl/ has" for w, m in unmet(wheels).items()]
    extra = names - {normalise(n) for n in WHEELS}
    if extra:
        problems.append(f".whl/ holds wheels not in the list ({', '.join(sorted(extra))}): remove them")
    wheel_bytes = sum(w.stat().st_size for w in wheels)
    tree_bytes = sum(f.stat().st_size for f in travelling_files())
    for w in wheels:
        print(f"{w.name:<60} {w.stat().st_size / MIB:7.2f} MiB")
    print(f"wheels (.whl/): {wheel_bytes / MIB:.2f} MiB in {len(wheels)} files")
    print(f"working tree that travels (tracked + untracked, not ignored): {tree_bytes / MIB:.2f} MiB")
    total = (wheel_bytes + tree_bytes) / MIB
    print(f"what a call carries: {total:.2f} MiB of {TRAVEL_LIMIT_MIB} MiB "
          f"(this kit's budget {TRAVEL_BUDGET_MIB} MiB, {TRAVEL_BUDGET_MIB - total:.2f} MiB to spare)")
    if total > TRAVEL_BUDGET_MIB:
        problems.append(f"{total:.2f} MiB travels, more than the budget of {TRAVEL_BUDGET_MIB} MiB")
    print(f"on the GPU machine: {INSTALL} && export PYTHONPATH=/tmp/site")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
