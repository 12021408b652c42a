"""pyproject.toml and environment.yml pin the same packages at the same versions."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s#;]+)$")


def pyproject_pins() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for dep in deps:
        m = PIN.match(dep.strip())
        assert m, f"pyproject.toml: {dep!r} is not an exact pin (name==version)"
        pins[m.group(1).lower()] = m.group(2)
    return pins


def environment_pins() -> dict[str, str]:
    pins, in_pip = {}, False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        stripped = line.split("#", 1)[0].strip()
        if stripped == "- pip:":
            in_pip = True
            continue
        if in_pip and stripped.startswith("- ") and "==" in stripped:
            name, version = stripped[2:].split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def test_pins_agree():
    assert pyproject_pins() == environment_pins()


def test_reference_stack_is_pinned():
    pins = pyproject_pins()
    assert pins["torch"] == "2.13.0"
    assert pins["transformers"] == "5.24.0"
    assert pins["peft"] == "0.21.2"
    assert pins["bitsandbytes"] == "0.50.2"
    assert pins["datasets"] == "5.2.0"
    assert pins["evaluate"] == "0.4.6"
    assert pins["accelerate"] == "1.15.0"
    for name in ("matplotlib", "ipywidgets", "jupytext", "nbval", "ipykernel", "jupyterlab", "tqdm", "pytest"):
        assert name in pins, name


def test_environment_is_python_311_and_installs_the_kit():
    text = (ROOT / "environment.yml").read_text()
    assert "python=3.11" in text
    assert "- -e ." in text
