"""reclor-lab: fine-tune a decoder LLM with 4-bit quantization + LoRA (QLoRA) on ReClor.

The notebooks in ``notebooks/`` teach the ideas; this package does the plumbing, one module per
job. The modules directly in ``reclor_lab/`` are the QLoRA core a student reads; the machinery
lives in sub-packages: ``runs/`` (run directories, resume, several processes), ``results/``
(analysis and baselines), ``course/`` (exercise checks and grading) and ``tools/`` (the data and
tiny-model generators). Modules sit in layers, lowest first; a module imports only from its own
layer or a lower one, and no imports go in a circle (``tests/test_layers.py`` reads every
import, function-local ones too):

1. ``errors``, ``cpu4bit``, ``qtypes``, ``loss``, ``runs.cache``, ``course.stored_outputs``,
   ``course.plain``: they import nothing of the kit. ``errors`` (``ReclorLabError``, the one
   base of every expected error), ``cpu4bit`` (which 4-bit kernel a CPU runs), ``qtypes``
   (ReClor's question types), ``loss`` (the weighted cross-entropy), ``runs.cache`` (tokenized
   splits kept on disk), ``course.stored_outputs`` (nbconvert's filter of the notebooks' stored
   outputs), ``course.plain`` (the plain data that crosses the grading sandbox's wall).
2. ``config``: the run config, its presets and checks.
3. ``data``, ``tools.synth``, ``tools.tiny``, ``metrics``, ``plan``, ``plots``, ``letters``,
   ``runs.rundir``, ``runs.distributed``, ``course.notebook``, ``course.sandbox``: ``data`` (ReClor
   files → tokenized
   datasets), ``tools.synth`` (the bundled ReClor-format data), ``tools.tiny`` (the offline tiny
   Llama), ``metrics``, ``plan`` (model shapes, LoRA counts and the memory model: pure
   arithmetic, no torch), ``plots``, ``letters`` (the answer letters as tokens and the letter
   head), ``runs.rundir`` (a run directory's layout, checkpoints and lock),
   ``runs.distributed`` (several processes), ``course.notebook`` (the notebooks' first cell),
   ``course.sandbox`` (the OS sandbox a submission is graded in: bubblewrap and limits).
4. ``model``, ``lora``: the 4-bit model (loading, memory report, NF4 made visible) and the
   adapters (injection, counts).
5. ``train``, ``runs.trainer``: the manual loop (and the kit's one inference loop,
   ``train.predict_logits``) and the Hugging Face Trainer path.
6. ``results.analysis``, ``results.baselines``, ``runs.job``: a run's results, what guessing and
   the untrained model score, and the kit's main job (train, reload, evaluate, predict).
7. ``course.checks``, ``course.build``, ``course.judge``, ``course.runner``,
   ``course.grading.exercises``, ``course.grading.replay``, ``course.grade``: the student
   exercises, the student copies, reading a submission's exercise code (``judge``), running it
   inside the sandbox (``runner``, the only kit code that touches it), the grader's side of the
   wall (``grading``: references, hidden cases, comparisons, never visible inside) and the
   grading command.
8. ``cli``, ``__main__``: the ``reclor-lab`` command.
"""

__version__ = "0.1.0"

from reclor_lab.cpu4bit import quiet_kernels_hub_notice

# Before anything imports bitsandbytes, which logs a hub-kernel notice at import time on
# avx512_bf16 CPUs about a kernel the kit never runs (see reclor_lab/cpu4bit.py).
quiet_kernels_hub_notice()
