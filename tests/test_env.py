"""The install files agree: pyproject.toml's ranges, requirements-lock.txt's pins, environment.yml
and the Makefile.

pyproject.toml declares what the kit works with (a hosted notebook installs from it and keeps its
own torch); the lock holds the exact versions behind the stored outputs, which `make` and the conda
route install. Each test names the file to fix.
"""

import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCK = "requirements-lock.txt"
#: The minor versions the kit supports (the README's Quickstart, the Makefile, the CI smoke).
SUPPORTED = ("3.11", "3.12", "3.13")


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def ranges() -> dict[str, Requirement]:
    """The runtime dependencies and the `dev` extra, by canonical name."""
    deps = project()["dependencies"] + project()["optional-dependencies"]["dev"]
    reqs = [Requirement(d) for d in deps]
    return {canonicalize_name(r.name): r for r in reqs}


def lock_lines() -> list[str]:
    lines = (ROOT / LOCK).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def lock_pins() -> dict[str, Version]:
    pins = {}
    for line in lock_lines():
        name, sep, version = line.partition("==")
        assert sep and re.fullmatch(r"[A-Za-z0-9_.\-]+", name), f"{LOCK}: {line!r} is not an exact pin (name==version)"
        pins[canonicalize_name(name)] = Version(version)
    return pins


def environment() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def test_lock_holds_only_portable_exact_pins():
    names = [canonicalize_name(line.partition("==")[0]) for line in lock_lines()]
    dupes = sorted({n for n in names if names.count(n) > 1})
    assert not dupes, f"{LOCK}: pinned twice: {dupes}"
    local = [f"{n}=={v}" for n, v in lock_pins().items() if v.local]
    # torch==2.13.0+cpu exists only where the CPU wheel lies on disk; 2.13.0 matches it there and
    # the CUDA build everywhere else.
    assert not local, f"{LOCK}: drop the local labels from {local} (make lock does)"


def test_every_range_has_a_pin_inside_it():
    pins, problems = lock_pins(), []
    for name, req in ranges().items():
        if name not in pins:
            problems.append(f"{req} has no pin")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{name}=={pins[name]} lies outside pyproject.toml's {req}")
    assert not problems, f"{LOCK} vs pyproject.toml: " + "; ".join(problems) + " (fix either, then `make lock`)"


def test_ranges_are_ranges():
    """An exact pin in pyproject.toml would make a hosted notebook replace its own CUDA torch."""
    exact = [str(r) for r in ranges().values() if any(s.operator in ("==", "===") for s in r.specifier)]
    assert not exact, f"pyproject.toml pins {exact}: declare a range there, the exact version in {LOCK}"
    assert ranges()["torch"].specifier.contains("2.6.0"), "pyproject.toml: keep torch's range open down to 2.6"


def test_reference_stack_is_locked():
    pins = {name: str(v) for name, v in lock_pins().items()}
    reference = {
        "torch": "2.13.0", "transformers": "5.24.0", "peft": "0.21.2", "bitsandbytes": "0.50.2",
        "datasets": "5.2.0", "evaluate": "0.4.6", "accelerate": "1.15.0",
    }
    assert {n: pins.get(n) for n in reference} == reference


def test_requires_python_admits_exactly_the_supported_versions():
    spec = SpecifierSet(project()["requires-python"])
    admitted = tuple(f"3.{m}" for m in range(8, 16) if spec.contains(f"3.{m}.0"))
    assert admitted == SUPPORTED, f"pyproject.toml: requires-python {spec} admits {admitted}, expected {SUPPORTED}"


def test_makefile_tries_the_supported_versions_newest_first_and_installs_the_lock():
    text = (ROOT / "Makefile").read_text()
    tried = re.search(r"^SUPPORTED\s*:=\s*(.+)$", text, re.M)
    assert tried and tried.group(1).split() == sorted(SUPPORTED, reverse=True), (
        f"Makefile: SUPPORTED should list {sorted(SUPPORTED, reverse=True)}")
    assert re.search(rf"^LOCK\s*:=\s*{re.escape(LOCK)}$", text, re.M), f"Makefile: LOCK := {LOCK}"
    assert re.search(r"^\t\$\(BIN\)/python -m pip install .*-e '\.\[dev\]' -c \$\(LOCK\)$", text, re.M), (
        "Makefile: .venv must install the kit with -c $(LOCK)")
    assert re.search(r"^\$\(VENV\)/\.installed:.*pyproject\.toml.*\$\(LOCK\)", text, re.M), (
        "Makefile: the install stamp must depend on pyproject.toml and the lock")


def test_environment_installs_the_kit_under_the_lock():
    deps = environment()["dependencies"]
    python = [d for d in deps if isinstance(d, str) and d.startswith("python")]
    assert python == ["python" + project()["requires-python"].replace(" ", "")], (
        f"environment.yml: python spec {python} should match pyproject's requires-python")
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    assert f"-c {LOCK}" in pip, f"environment.yml: its pip section must start from `-c {LOCK}`"
    assert "-e .[dev]" in pip, "environment.yml: its pip section must install `-e .[dev]`"
    # Anything pinned there as well must say what the lock says.
    pins = lock_pins()
    own = [Requirement(line) for line in pip if not line.startswith("-")]
    disagree = [str(r) for r in own if not r.specifier.contains(pins.get(canonicalize_name(r.name), "0"))]
    assert not disagree, f"environment.yml pins {disagree}, which disagree with {LOCK}"
