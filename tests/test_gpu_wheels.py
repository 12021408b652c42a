"""The pieces of the prepared GPU call that need neither a download nor a GPU: how
``bench/gpu_wheels.py`` reads a wheel's requirements and finds the unmet ones, that ``.whl/`` is
git-ignored, and that ``bench/gpu_run.sh`` installs the wheels with the command the preparation
script states. (``make gpu-check-dry`` runs the whole call on the CPU; it is too heavy for here.)"""

from __future__ import annotations

import importlib.util
import subprocess
import zipfile

import pytest

from reclor_lab.config import REPO_ROOT


@pytest.fixture(scope="module")
def gpu_wheels():
    spec = importlib.util.spec_from_file_location("gpu_wheels", REPO_ROOT / "bench" / "gpu_wheels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wheel(folder, name: str, requires: list[str]):
    path = folder / f"{name}-1.0-py3-none-any.whl"
    meta = "Metadata-Version: 2.1\nName: {}\nVersion: 1.0\n".format(name) + "".join(
        f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}-1.0.dist-info/METADATA", meta)
    return path


def test_requirements_keep_what_applies_on_linux_python_3_12(gpu_wheels, tmp_path):
    w = _wheel(tmp_path, "demo", ["torch<3,>=2.3", "Typing_Extensions>=4", "colorama>=0.4; sys_platform == 'win32'",
                                  "tomli>=1; python_version < '3.11'", "rich; extra == 'fancy'", "iniconfig>=1"])
    assert gpu_wheels.requirements(w) == ["torch", "typing-extensions", "iniconfig"]


def test_unmet_names_what_neither_the_image_nor_another_wheel_provides(gpu_wheels, tmp_path):
    a = _wheel(tmp_path, "alpha", ["torch>=2", "beta", "gamma"])
    b = _wheel(tmp_path, "beta", ["numpy"])
    assert gpu_wheels.unmet([a, b]) == {a.name: ["gamma"]}


def test_the_prepared_wheels_need_nothing_else(gpu_wheels):
    wheels = sorted(gpu_wheels.WHEEL_DIR.glob("*.whl"))
    if not wheels:
        pytest.skip(".whl/ is empty here: `make gpu-wheels` downloads the wheels (this checks them when present)")
    assert {gpu_wheels.wheel_name(w) for w in wheels} == {gpu_wheels.normalise(n) for n in gpu_wheels.WHEELS}
    assert gpu_wheels.unmet(wheels) == {}


def test_the_wheel_folder_is_ignored_and_the_run_installs_with_the_stated_command(gpu_wheels):
    assert subprocess.run(["git", "check-ignore", "-q", ".whl/x.whl"], cwd=REPO_ROOT).returncode == 0
    script = (REPO_ROOT / "bench" / "gpu_run.sh").read_text(encoding="utf-8")
    flags = gpu_wheels.INSTALL.removeprefix("python3 ").split(" --target")[0]
    assert f'"$PYTHON" {flags} --target "$SITE" .whl/*.whl' in script
    assert "PYTHONUNBUFFERED=1" in script and "--dry-run" in script
    assert subprocess.run(["bash", "-n", str(REPO_ROOT / "bench" / "gpu_run.sh")]).returncode == 0
