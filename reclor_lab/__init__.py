"""reclor-lab: fine-tune a decoder LLM with 4-bit quantization + LoRA (QLoRA) on ReClor.

The notebooks in ``notebooks/`` teach the ideas; this package does the plumbing, one module per
job. The modules directly in ``reclor_lab/`` are the QLoRA core a student reads; the machinery
lives in sub-packages: ``runs/`` (run directories, resume, several processes), ``results/``
(analysis and baselines), ``course/`` (exercise checks and grading) and ``tools/`` (the data and
tiny-model generators). Modules sit in layers, lowest first; a module imports only from its own
layer or a lower one, and no imports go in a circle (``tests/test_layers.py`` reads every
import, function-local ones too):

1. ``errors``, ``cpu4bit``, ``loss``, ``results.qtypes``, ``runs.cache``, ``runs.adapters``,
   ``runs.bnb_import``, ``course.stored_outputs``, ``course.plain``: they import nothing of the kit.
   ``errors`` (``ReclorLabError``, the one base of every expected error), ``cpu4bit`` (which 4-bit
   kernel a CPU runs), ``loss`` (the weighted cross-entropy), ``results.qtypes`` (ReClor's question
   types), ``runs.cache`` (tokenized splits kept on disk, many texts encoded at once),
   ``runs.adapters`` (what peft's adapters need around them: its deprecation noise, checkpointing's
   two names, a cheaper CPU dropout mask), ``runs.bnb_import`` (bitsandbytes imported without the
   TorchInductor its eager ``torch.compile`` wraps pull in; installed by the package's
   ``__init__``), ``course.stored_outputs`` (nbconvert's filter of the notebooks' stored outputs),
   ``course.plain`` (the plain data that crosses the grading sandbox's wall).
2. ``config``, ``runs.config_checks``: the run config and its presets, and its machinery (every
   field's constraint, the validator that ``RunConfig.__post_init__`` calls, reading a config
   from JSON, changing it by name, its printed table).
3. ``data``, ``shapes``, ``metrics``, ``plots``, ``results.letters``, ``tools.plan``, ``tools.synth``,
   ``tools.tiny``, ``tools.honest``, ``runs.rundir``, ``runs.distributed``, ``runs.loading``,
   ``runs.data_checks``, ``course.notebook``, ``course.sandbox``:
   ``data`` (ReClor files → tokenized datasets), ``shapes`` (model shapes, NF4 bytes per weight,
   LoRA counts: pure arithmetic, no torch), ``metrics``, ``plots``, ``results.letters`` (the
   answer letters as tokens and the letter head), ``tools.plan`` (the GPU memory planner and
   ``batch_size="auto"``: no torch), ``tools.synth`` (the bundled ReClor-format data),
   ``tools.tiny`` (the offline tiny Llama), ``tools.honest`` (honest independent solutions of the
   exercises), ``runs.rundir`` (a run directory's layout, checkpoints and lock),
   ``runs.distributed`` (several processes), ``runs.loading`` (what loading a model needs around
   it: a model folder's and a tokenizer's checks, one error for what cannot load, transformers'
   load report, the shipped metric scripts), ``runs.data_checks`` (a ReClor file's checks: one
   ``DataError`` naming the file and record),
   ``course.notebook`` (the notebooks' first cell), ``course.sandbox`` (the OS sandbox a
   submission is graded in: bubblewrap and limits).
4. ``model``, ``lora``, ``runs.session``: the 4-bit model (loading, memory report, NF4 made
   visible), the adapters (a hand-written ``LoRALinear``, injection through peft, counts), and
   what the training loop reaches through a few named calls (``runs.session``: the run
   directory, resume, signals, several processes, the history's rows and printed lines).
5. ``train``, ``runs.trainer``: the manual loop (and the kit's one inference loop,
   ``train.predict_logits``) and the Hugging Face Trainer path.
6. ``results.analysis``, ``results.baselines``, ``runs.job``: a run's results, what guessing and
   the untrained model score, and the kit's main job (train, reload, evaluate, predict).
7. ``course.checks.common``, ``course.checks.nb01``, ``course.checks.nb02``, ``course.checks.nb03``,
   ``course.checks.nb04``, ``course.checks.nb05``, ``course.checks.nb06``, ``course.checks``,
   ``course.build``, ``course.judge``, ``course.runner``, ``course.grading.exercises``,
   ``course.grading.replay``, ``course.grade``: the student exercises, the student copies,
   reading a submission's exercise code (``judge``), running it inside the sandbox (``runner``,
   the only kit code that touches it), the grader's side of the wall (``grading``: references,
   hidden cases, comparisons, never visible inside) and the grading command. The checks are one
   module per notebook (``course.checks.nb01`` …) beside what they share
   (``course.checks.common``); ``course.checks`` re-exports them all.
8. ``course.outfiles``, ``course.roster``, ``course.export``, ``course.similar``, ``course.feedback``,
   ``course.report``: the instructor's view of a graded class: files written safely, the class
   list, the gradebook in otter's, Canvas's and Moodle's layouts, copied work, feedback per
   student and the HTML class report.
9. ``cli``, ``__main__``: the ``reclor-lab`` command.

The core reaches into the sub-packages in these places only (``tests/test_layers.py`` holds the
list): ``train`` → ``runs.session`` (``fit``'s named calls: the run directory, resume, signals,
the epoch's records), ``train`` → ``runs.distributed`` (which process this is, for ``setup`` and
the evaluation's gather), ``train`` → ``tools.plan`` (``setup`` settles ``batch_size="auto"``
when its caller has not), ``data`` → ``runs.cache`` (tokenized splits kept on disk,
``encode_texts``), ``data`` → ``runs.data_checks`` (``read_reclor`` calls its file and record
checks, ``tokenize_records`` its passage cut to ``max_len`` and token statistics), ``config`` →
``runs.config_checks`` (``RunConfig.__post_init__`` calls its validator, ``problems``; ``load``,
``replace``, ``summary`` and ``describe`` its reader, name check and printers), ``model`` →
``runs.loading`` (``load_model`` and ``load_tokenizer`` call its checks, error and report
wrappers and the SentencePiece fix), ``metrics`` → ``runs.loading`` (``load_metric``, the shipped
metric scripts loaded by path), ``lora`` → ``runs.adapters`` (``inject_lora`` calls its peft
glue, target check and dropout; ``trainable_report`` returns its ``TrainableReport``), ``model``
→ ``results.letters`` (``load_model`` starts the head as the zero-shot scorer when
``head_init="letters"``).
"""

__version__ = "0.1.0"

from reclor_lab.cpu4bit import quiet_kernels_hub_notice
from reclor_lab.runs import bnb_import

# Before anything imports bitsandbytes, which logs a hub-kernel notice at import time on
# avx512_bf16 CPUs about a kernel the kit never runs (see reclor_lab/cpu4bit.py), and wraps
# functions the kit never calls in torch.compile, importing TorchInductor for nothing
# (see reclor_lab/runs/bnb_import.py).
quiet_kernels_hub_notice()
bnb_import.install()
