"""One dataclass that describes a run, with named presets.

Every field carries a one-line help text (``metadata["help"]``) that says what it does and what
it costs. ``__post_init__`` checks every field (the checks are machinery:
:mod:`reclor_lab.runs.config_checks`, like reading, changing and printing a config) and raises
one :class:`ConfigError` listing every problem at once, so a user fixes a config in one go.

>>> cfg = get_preset("tiny")
>>> cfg.lora_r, cfg.quantization
(16, 'nf4')
>>> big = get_preset("llama2-7b", epochs=1)   # overrides go through dataclasses.replace
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from reclor_lab.errors import ConfigError
# The fields' checks, and reading, changing and printing a config: machinery.
from reclor_lab.runs import config_checks

#: ReClor has four answer options per question; the classifier has one logit per option.
NUM_LABELS = 4
#: The option letters, in label order (label 0 is option A).
OPTION_LETTERS = "ABCD"
#: The input layout of the reference solution. Fields: context, question, a, b, c, d.
REFERENCE_TEMPLATE = (
    "Context: {context} Question: {question} "
    "Option A: {a} Option B: {b} Option C: {c} Option D: {d}"
)
#: The tiny preset's layout: the reference layout plus a trailing " Answer:" (why: notebook 01,
#: section 7). The llama2-7b preset keeps the exact reference layout.
TINY_TEMPLATE = REFERENCE_TEMPLATE + " Answer:"
#: Where the kit keeps its bundled data and tiny model, relative to the repository root.
REPO_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_DATA_DIR = REPO_ROOT / "data"
TINY_MODEL_DIR = REPO_ROOT / "models" / "tiny-llama"

Quantization = Literal["nf4", "none"]
ComputeDtype = Literal["auto", "bfloat16", "float16", "float32"]
Schedule = Literal["constant", "cosine"]
LoraBias = Literal["none", "all", "lora_only"]
HeadInit = Literal["random", "letters"]
AutoBatch = Literal["accumulate", "sqrt-lr"]
KbitUpcast = Literal["peft", "trainable"]


def _f(default: Any, help: str) -> Any:
    """A dataclass field with a help text."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one fine-tuning run. Build it from a preset with :func:`get_preset`."""

    preset: str = _f("custom", "Name of the preset this config started from (informational).")
    # --- model -----------------------------------------------------------------------------
    model_name_or_path: str = _f(str(TINY_MODEL_DIR), "Hugging Face model id or local directory. Llama-2 needs "
                                                      "its weights on disk offline.")
    quantization: Quantization = _f("nf4", "`nf4`: 4-bit NormalFloat weights (QLoRA, ~4x less memory); "
                                           "`none`: plain weights.")
    double_quant: bool = _f(True, "Quantize the 4-bit scales too: saves 0.37 bit/param (~0.3 GB on 7B) for a little "
                                  "compute. Ignored with quantization `none`.")
    compute_dtype: ComputeDtype = _f("auto", "Dtype of the matmuls. `auto`: bf16 where the GPU has it, fp16 + loss "
                                             "scaling on a GPU without (T4, V100), fp32 on a CPU; any of the three "
                                             "can be forced on any device.")
    gradient_checkpointing: bool = _f(False, "Recompute activations in backward: much less memory, 1.2x as long per "
                                             "step (README's H200 runs at batch 2: 607 vs 733 tokens/s). "
                                             "With batch_size auto on a GPU the planner decides it.")
    kbit_upcast: KbitUpcast = _f("trainable", "fp32 copies in 4-bit training: `trainable` (LoRA + head; bf16 "
                                              "residual stream, ~half the activations) or `peft` (also embeddings "
                                              "and norms, as prepare_model_for_kbit_training).")
    head_init: HeadInit = _f("random", "Head at start: `random` (reference) or `letters`: the LM head's rows of A-D, "
                                       "i.e. the zero-shot scorer.")
    # --- data ------------------------------------------------------------------------------
    data_dir: str = _f(str(BUNDLED_DATA_DIR), "Folder with train.json / val.json / test.json in the official "
                                              "ReClor format.")
    template: str = _f(REFERENCE_TEMPLATE, "Input layout; fields {context} {question} {a} {b} {c} {d}. "
                                           "Append ' Answer:' to try a cue.")
    max_len: int = _f(512, "Tokens kept per example; longer inputs are truncated (counted and reported).")
    group_by_length: bool = _f(True, "Batch examples of similar length: far less padding, batches stay shuffled.")
    train_limit: int | None = _f(None, "Use only the first N training records (None: all). For quick tries.")
    eval_limit: int | None = _f(None, "Use only the first N validation records (None: all).")
    # --- LoRA ------------------------------------------------------------------------------
    lora_r: int = _f(16, "Rank of the LoRA update: more capacity and more trainable parameters.")
    lora_alpha: int = _f(16, "LoRA scale numerator; the update is multiplied by alpha / r.")
    lora_dropout: float = _f(0.05, "Dropout on the LoRA input: regularises small data sets.")
    lora_bias: LoraBias = _f("none", "Which biases train (`none` like the reference).")
    lora_targets: tuple[str, ...] | None = _f(None, "Module names to adapt; None: every (4-bit) linear layer "
                                                    "except the head.")
    # --- optimisation ----------------------------------------------------------------------
    learning_rate: float = _f(1e-4, "AdamW peak learning rate.")
    weight_decay: float = _f(0.001, "AdamW decoupled weight decay on the trainable weights.")
    epochs: int = _f(3, "Passes over the training set.")
    batch_size: int | str = _f(2, "Examples per forward pass, or `auto`: the largest that fits `gpu_memory` "
                                  "(see `auto_batch`; on a CPU: `base_batch_size`).")
    auto_batch: AutoBatch = _f("accumulate", "How auto keeps the optimisation: `accumulate` (micro-batches adding "
                                             "up to base_batch_size per step, same lr) or `sqrt-lr` (bigger steps, "
                                             "lr x sqrt(batch/base)).")
    base_batch_size: int = _f(2, "Examples per optimizer step the learning rate was tuned for (the reference's "
                                 "2); auto keeps or scales from it.")
    gpu_memory: str | None = _f(None, "Memory budget for batch_size auto, e.g. `24GiB` or `80GB` (None: the GPU's "
                                      "total memory).")
    eval_batch_size: int = _f(8, "Examples per forward pass during evaluation (no gradients).")
    grad_accum_steps: int = _f(1, "Micro-batches per optimizer step: a bigger effective batch, same memory.")
    max_grad_norm: float = _f(0.3, "Clip the gradient norm to this (QLoRA's value); 0 disables clipping.")
    warmup_ratio: float = _f(0.1, "Fraction of optimizer steps with a linear warm-up from 0.")
    lr_schedule: Schedule = _f("constant", "After warm-up: `constant` like the reference, or `cosine` decay.")
    class_weighting: bool = _f(True, "Weight the cross-entropy by inverse answer-position frequency (the "
                                     "reference's loss).")
    seed: int = _f(42, "Seeds Python, NumPy and torch once at the start: same seed, same machine, same numbers.")
    # --- output ----------------------------------------------------------------------------
    output_dir: str = _f("runs/tiny", "Run directory: adapter, config, history, metrics, plots.")
    save_every_steps: int | None = _f(None, "Also checkpoint every N optimizer steps inside an epoch (None: at "
                                            "epoch ends only); each costs one adapter + optimizer write.")
    keep_last_checkpoints: int = _f(1, "Checkpoints kept: the last N plus the best epoch's; each is adapter + "
                                       "optimizer state.")

    def __post_init__(self) -> None:
        if isinstance(self.lora_targets, list):
            object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        # Every field's range, choices and type, and the rule that spans two fields: machinery.
        if found := config_checks.problems(self):
            raise ConfigError("invalid run configuration:\n" + "\n".join(f"  - {p}" for p in found))

    # --- saved, read, changed and shown: machinery as well (config_checks) ----------------------
    def to_dict(self) -> dict[str, Any]:
        return config_checks.as_dict(self)

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        """The config saved as JSON at ``path`` (one ConfigError naming the file if it cannot be)."""
        return config_checks.load(cls, path)

    def replace(self, **overrides: Any) -> "RunConfig":
        """A copy with some fields changed (validated again). Unknown names are an error."""
        config_checks.check_known(type(self), overrides)
        return dataclasses.replace(self, **overrides)

    def summary(self, *names: str) -> str:
        """Some fields, one ``name  value`` line each (paths repo-relative, like :meth:`describe`)."""
        return config_checks.summary(self, names, REPO_ROOT)

    def describe(self) -> str:
        """A readable table of every field, its value and its help text."""
        return config_checks.describe(self, REPO_ROOT)

    def __str__(self) -> str:
        return self.describe()


# --- presets ---------------------------------------------------------------------------------

PRESETS: dict[str, dict[str, Any]] = {
    # CPU, offline, seconds: the bundled data and the bundled tiny Llama, through the same 4-bit
    # + LoRA code path as the reference. Bigger lr and batch because the model is tiny.
    "tiny": dict(
        preset="tiny",
        model_name_or_path=str(TINY_MODEL_DIR),
        data_dir=str(BUNDLED_DATA_DIR),
        template=TINY_TEMPLATE,
        max_len=320,  # above every bundled record under Llama-2's tokenizer (max 311): nothing is cut
        batch_size=8,
        base_batch_size=8,
        eval_batch_size=32,
        learning_rate=2e-3,
        epochs=3,
        output_dir="runs/tiny",
    ),
    # The reference solution: Llama-2-7B, NF4 + double quant, bf16 compute, LoRA r=16/alpha=16/
    # dropout 0.05 on every 4-bit linear layer but the head, lr 1e-4, batch 2, 3 epochs.
    "llama2-7b": dict(
        preset="llama2-7b",
        model_name_or_path="meta-llama/Llama-2-7b-hf",
        data_dir=str(BUNDLED_DATA_DIR / "reclor"),
        max_len=512,
        # auto: the largest micro-batch that fits the GPU, and checkpointing only if needed, while
        # accumulation keeps the reference's 2 examples per optimizer step at lr 1e-4: the
        # optimisation its ~60 % was measured with (larger steps have not been re-checked).
        batch_size="auto",
        auto_batch="accumulate",
        base_batch_size=2,
        eval_batch_size=8,
        learning_rate=1e-4,
        epochs=3,
        gradient_checkpointing=True,
        output_dir="runs/llama2-7b",
    ),
}


def get_preset(name: str, **overrides: Any) -> RunConfig:
    """The named preset, with optional field overrides (validated)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(map(repr, PRESETS))}")
    return RunConfig(**PRESETS[name]).replace(**overrides)
