"""reclor-lab: fine-tune a decoder LLM with 4-bit quantization + LoRA (QLoRA) on ReClor.

The notebooks in ``notebooks/`` teach the ideas; this package does the plumbing. One module per
job: ``config`` (the run config and presets), ``data`` (ReClor files → tokenized datasets),
``cache`` (tokenized splits kept on disk), ``synth`` (the bundled ReClor-format data), ``tiny``
(the offline tiny Llama), ``modeling`` (4-bit loading), ``cpu4bit`` (which 4-bit kernel a CPU
runs), ``lora`` (adapter injection),
``metrics``, ``loss``, ``train`` (the manual loop), ``trainer`` (the Hugging Face Trainer path),
``rundir`` (a run directory's layout, checkpoints and lock), ``runs`` and ``plots`` (a run's
results), ``errors`` (``ReclorLabError``, the one base of every expected error), ``checks`` and ``course`` (the student exercises),
``notebook`` (the notebooks' first cell) and ``cli``.
"""

__version__ = "0.1.0"

from reclor_lab.cpu4bit import quiet_kernels_hub_notice

# Before anything imports bitsandbytes, which logs a hub-kernel notice at import time on
# avx512_bf16 CPUs about a kernel the kit never runs (see reclor_lab/cpu4bit.py).
quiet_kernels_hub_notice()
