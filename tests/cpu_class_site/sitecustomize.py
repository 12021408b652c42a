"""Run a whole process (a notebook kernel too) as on the other CPU class bitsandbytes tells apart.

``tests/helpers_models.force_cpu_class`` does this inside one test; notebooks run in a kernel
process of their own, so for them the same patch is applied at interpreter start-up: put this
folder first on ``PYTHONPATH`` and name the class in ``RECLOR_LAB_CPU_CLASS``::

    RECLOR_LAB_CPU_CLASS=without-avx512bf16 PYTHONPATH=tests/cpu_class_site \\
        .venv/bin/python -m pytest notebooks/

``with-avx512bf16`` makes bitsandbytes build its 4-bit layers as on an Intel Xeon or AMD Zen 4/5,
``without-avx512bf16`` as on an older AMD EPYC. Only the bf16 kernel itself cannot be forced
where the CPU lacks it; the kit never uses it (``reclor_lab.cpu4bit``). Not part of ``make
test``: it re-runs every notebook, which the suite's time budget does not cover twice.
"""

import os

_CLASSES = {"with-avx512bf16": True, "without-avx512bf16": False}
_wanted = os.environ.get("RECLOR_LAB_CPU_CLASS")
if _wanted is not None:
    if _wanted not in _CLASSES:
        raise SystemExit(f"RECLOR_LAB_CPU_CLASS={_wanted!r}: use one of {sorted(_CLASSES)}")
    import bitsandbytes.functional as _bnbf
    import bitsandbytes.nn.modules as _bnb_modules

    _bnb_modules.has_avx512bf16 = _bnbf.has_avx512bf16 = lambda: _CLASSES[_wanted]
