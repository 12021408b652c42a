"""Shared test setup: offline, no network, and what nbval compares in the notebooks."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import tempfile

import pytest

from helpers_models import force_cpu_class, make_tiny_llama

# Nothing in the kit may reach the Hugging Face hub (or anything else off this machine).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def pytest_configure(config):
    """A token cache of the test run's own (the notebooks' kernels inherit it): tests neither read
    entries a user's earlier runs left in ~/.cache/reclor-lab nor leave any there."""
    config._reclor_cache = tempfile.mkdtemp(prefix="reclor-lab-test-cache-")
    os.environ["RECLOR_LAB_CACHE"] = config._reclor_cache


def pytest_unconfigure(config):
    shutil.rmtree(getattr(config, "_reclor_cache", ""), ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A random tiny Llama and its tokenizer on disk (:func:`helpers_models.make_tiny_llama`),
    built once per test session; tests read it and never write into it."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def cfg(tiny_llama_dir):
    """The tiny preset on the random tiny Llama of :func:`tiny_llama_dir`, computing in fp32."""
    from reclor_lab.config import get_preset

    return get_preset("tiny", model_name_or_path=str(tiny_llama_dir), compute_dtype="float32")


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_dir):
    """The random tiny Llama's tokenizer, loaded as the kit loads it."""
    from reclor_lab.model import load_tokenizer

    return load_tokenizer(str(tiny_llama_dir))


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """The bundled tiny model's tokenizer (``models/tiny-llama``), loaded as the kit loads it.
    Tests that change its settings restore them."""
    from reclor_lab.config import TINY_MODEL_DIR
    from reclor_lab.model import load_tokenizer

    return load_tokenizer(str(TINY_MODEL_DIR))


@pytest.fixture(params=[False, True], ids=["cpu-without-avx512bf16", "cpu-with-avx512bf16"])
def cpu_class(request, monkeypatch) -> bool:
    """Run the test once as on each CPU class bitsandbytes tells apart (AMD EPYC without
    ``avx512_bf16``; Intel Xeon with it, or AMD Zen 4/5), whichever CPU runs the suite."""
    force_cpu_class(monkeypatch, request.param)
    return request.param


def _is_local(address) -> bool:
    if not isinstance(address, tuple):  # AF_UNIX paths
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Fail any test that opens a connection off this machine."""
    real_connect = socket.socket.connect

    def guarded_connect(self, address):
        if not _is_local(address):
            raise AssertionError(f"test tried to reach the network: {address!r}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)


def pytest_collectstart(collector):
    """nbval: compare stdout and rich outputs, not stderr.

    bitsandbytes prints a machine-dependent "Failed to load CPU gemm_4bit_forward…" line and
    libraries print version-dependent warnings there; the cells' real results go to stdout.
    Widget-backed progress bars are widget views, whose ids change every run.
    """
    if getattr(collector, "fspath", None) is not None and str(collector.fspath).endswith(".ipynb"):
        collector.skip_compare += ("stderr", "application/vnd.jupyter.widget-view+json",
                                   "text/html", "application/javascript")
