"""bitsandbytes imported without its eager torch.compile (reclor_lab/runs/bnb_import.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from reclor_lab.runs.bnb_import import deferred

PROBE = """
import sys, torch
real = torch.compile
import reclor_lab, bitsandbytes
import bitsandbytes.functional as F
x = torch.randn(64, 64)
q, state = F.quantize_4bit(x, quant_type="nf4")
back = F.dequantize_4bit(q, state)
print("inductor" if "torch._inductor.compile_fx" in sys.modules else "no inductor",
      "restored" if torch.compile is real else "torch.compile changed",
      f"{(back - x).abs().max().item() <= x.abs().max().item() * 0.5}")
"""


def _probe(eager: bool) -> list[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", RECLOR_LAB_EAGER_BNB_COMPILE="1" if eager else "0")
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


@pytest.mark.parametrize("eager", [False, True])
def test_importing_bitsandbytes_through_the_kit_leaves_inductor_out_and_torch_compile_as_it_was(eager):
    """Through the kit: no TorchInductor, ``torch.compile`` the real one afterwards, and NF4 still
    round-trips on a CPU. With the escape hatch the eager import is back: the probe can tell."""
    words = _probe(eager)
    assert words[-1] == "True" and "restored" in words
    assert ("inductor" if eager else "no") == words[0]


def test_a_deferred_compile_compiles_once_at_the_first_call_with_the_same_options():
    calls = []

    def fake_compile(fn, **options):
        calls.append(options)
        return lambda *a, **k: ("compiled", fn(*a, **k))

    compile_later = deferred(fake_compile)
    f = compile_later(lambda x: x + 1, dynamic=False)
    g = compile_later(dynamic=True)(lambda x: x * 2)  # the decorator form
    assert calls == []  # wrapping compiles nothing
    assert f(1) == ("compiled", 2) and f(2) == ("compiled", 3)
    assert g(3) == ("compiled", 6)
    assert calls == [{"dynamic": False}, {"dynamic": True}]  # once each, options kept


def test_a_compile_that_fails_fails_at_the_call_where_bitsandbytes_falls_back():
    def failing_compile(fn, **options):
        raise RuntimeError("no compiler here")

    f = deferred(failing_compile)(lambda x: x)
    with pytest.raises(RuntimeError, match="no compiler here"):
        f(1)
