"""bitsandbytes' import without its eager ``torch.compile``: about half of a kit process's start.

At import, bitsandbytes 0.50 wraps four functions of its default backend (blockwise and 4-bit
dequantization, two 32-bit optimizer updates) in ``torch.compile``. Compiling happens at the
first call; *wrapping* already imports TorchDynamo and TorchInductor, which costs more CPU time
than importing torch itself (``bench/import_cost.py`` measures it). The kit never calls those
four functions on a CPU (its 4-bit layers run bitsandbytes' CPU backend: see
``reclor_lab/cpu4bit.py``), so every notebook kernel, command and grading sandbox paid for
nothing.

:func:`install` (called when ``reclor_lab`` is imported) makes the import of bitsandbytes, when it
happens, run with a ``torch.compile`` that defers to the real one at the first call: the same
compiled function then, the same fallback when compiling fails (bitsandbytes catches the error
at the call as it did at the wrap), and no Dynamo or Inductor before. ``torch.compile`` itself
is restored as soon as bitsandbytes' import ends, so nobody else sees the deferral. Set
``RECLOR_LAB_EAGER_BNB_COMPILE=1`` to import bitsandbytes as it comes.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import sys
from typing import Any, Callable

PACKAGE = "bitsandbytes"


def deferred(compile_fn: Callable) -> Callable:
    """A ``torch.compile`` that calls ``compile_fn`` (the real one) at the compiled function's first call."""

    def compile_later(model: Any = None, **options: Any) -> Any:
        if model is None:  # used as @torch.compile(**options)
            return lambda fn: compile_later(fn, **options)
        compiled = []

        def first_call_compiles(*args: Any, **kwargs: Any) -> Any:
            if not compiled:
                compiled.append(compile_fn(model, **options))
            return compiled[0](*args, **kwargs)

        first_call_compiles.__wrapped__ = model
        return first_call_compiles

    return compile_later


@contextlib.contextmanager
def compile_deferred():
    """``torch.compile`` deferred (see :func:`deferred`) inside the block, restored after it."""
    import torch

    real = torch.compile
    torch.compile = deferred(real)
    try:
        yield
    finally:
        torch.compile = real


class _Finder(importlib.abc.MetaPathFinder):
    """Finds bitsandbytes as Python would, and runs its module code under :func:`compile_deferred`."""

    def find_spec(self, name: str, path: Any = None, target: Any = None):
        if name != PACKAGE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            with compile_deferred():
                run(module)

        spec.loader.exec_module = exec_module  # this spec's loader only
        return spec


def install() -> None:
    """Defer bitsandbytes' compiles for this process (idempotent; imports nothing; a no-op once
    bitsandbytes is imported, or with ``RECLOR_LAB_EAGER_BNB_COMPILE=1``)."""
    if os.environ.get("RECLOR_LAB_EAGER_BNB_COMPILE") == "1" or PACKAGE in sys.modules:
        return
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
