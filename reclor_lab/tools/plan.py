"""Predict the peak GPU memory of a QLoRA run from the model's shape, before loading anything.

Pure arithmetic: no model, no GPU. Each component is one function whose docstring gives its
formula, so a test can recompute it by hand for a small shape. The total is what
``torch.cuda.max_memory_allocated`` should report for a training step; the device needs that plus
the CUDA context and the caching allocator's slack (:data:`CUDA_CONTEXT_BYTES`,
:data:`ALLOCATOR_OVERHEAD`), which is what a memory budget is compared with.

What a training step holds at its peak (the start of the backward pass):

- **weights**: the 7 projections of every decoder layer in NF4 (4 bits, one 8-bit absmax per
  64 weights, one fp32 scale per 256 absmax with double quantization); embeddings and norms in
  16 bits, or 32 bits where the k-bit preparation upcasts them (``PlanSettings.upcast``); the
  classification head (4 × hidden, no ``lm_head``) in fp32, twice (peft keeps the original
  beside the trained copy).
- **LoRA state**: parameters, gradients and AdamW's two moments, all fp32 (16 bytes a
  parameter), plus autocast's compute-dtype copy of each LoRA weight.
- **activations**: what autograd saves, per token and layer (:func:`layer_activation_bytes`).
  With gradient checkpointing only each layer's input is kept, plus one layer recomputed in full
  during its backward.
- **transients** of the backward pass: the incoming and outgoing gradients of the widest tensors,
  and one projection's weight dequantized to the compute dtype (bitsandbytes dequantizes per
  matmul and frees it after).
- **logits**: the head's ``(batch, tokens, 4)`` output.

Evaluation runs without gradients and keeps one layer's tensors at a time: at the presets'
``eval_batch_size`` it needs less than a training step, and is not planned.

>>> plan = Planner(LLAMA2_7B_SHAPE, PlanSettings())
>>> e = plan.estimate(batch=8, seq_len=512, checkpointing=True)
>>> 6 < e.allocated / GIB < 9
True
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from reclor_lab.config import KbitUpcast, RunConfig
from reclor_lab.runs.config_checks import parse_memory
from reclor_lab.errors import PlanError
from reclor_lab.shapes import LLAMA2_7B_SHAPE, NF4_BLOCKSIZE, ModelShape, lora_params, nf4_bytes_per_param

GIB = 2**30
#: Memory the device gives away before the first tensor: the CUDA context, cuBLAS / cuDNN
#: workspaces and loaded kernels. ~0.5 GiB with torch 2.x on an A100 / H100 class GPU
#: (``nvidia-smi`` minus ``torch.cuda.memory_reserved``); a stated constant, not measured here.
CUDA_CONTEXT_BYTES = int(0.5 * GIB)
#: The caching allocator reserves more than it hands out (block rounding, fragmentation between
#: differently sized steps): reserved ≈ allocated × (1 + this). A stated constant.
ALLOCATOR_OVERHEAD = 0.10
#: Micro-batch sizes and lengths the plan table shows by default.
DEFAULT_BATCHES = (1, 2, 4, 8, 16)
DEFAULT_LENGTHS = (256, 512, 640)


# --- the model's shape, from its files -------------------------------------------------------------

_BUILT_IN = {"meta-llama/Llama-2-7b-hf": LLAMA2_7B_SHAPE}


def model_shape(name_or_path: str) -> tuple[ModelShape, str]:
    """The shape of a model (from its config.json on disk or in the Hugging Face cache, offline),
    or the built-in Llama-2-7B shape for its hub id; and a line saying which."""
    path = Path(name_or_path).expanduser()
    if (path / "config.json").is_file():
        return _shape_from_dict(_read_config(path / "config.json")), f"{name_or_path}/config.json"
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name_or_path, "config.json")
    except Exception:  # not a hub id at all
        cached = None
    if isinstance(cached, str):
        return _shape_from_dict(_read_config(Path(cached))), f"{name_or_path} (cache)"
    if name_or_path in _BUILT_IN:
        return _BUILT_IN[name_or_path], f"{name_or_path} (built-in shape; its files are not on this machine)"
    raise PlanError(f"{name_or_path}: no config.json on disk or in the Hugging Face cache; the planner "
                    f"knows {', '.join(_BUILT_IN)} without files")


def _read_config(path: Path) -> dict:
    """A model's config.json; an unreadable one (bad JSON, nested too deeply, a 5,000-digit
    number) is one PlanError."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError too
        raise PlanError(f"{path}: not a readable model config ({type(e).__name__})") from None
    if not isinstance(raw, dict):
        raise PlanError(f"{path}: not a model config (expected a JSON object)")
    return raw


def _shape_from_dict(raw: dict) -> ModelShape:
    try:
        shape = ModelShape(hidden=raw["hidden_size"], intermediate=raw["intermediate_size"],
                           layers=raw["num_hidden_layers"], heads=raw["num_attention_heads"],
                           kv_heads=raw.get("num_key_value_heads") or raw["num_attention_heads"],
                           vocab=raw["vocab_size"])
    except KeyError as e:
        raise PlanError(f"config.json lacks {e}: not a Llama-style decoder the planner knows") from None
    bad = [k for k, v in vars(shape).items() if not (isinstance(v, int) and not isinstance(v, bool) and v > 0)]
    if bad:
        raise PlanError(f"config.json: {', '.join(bad)} must be positive integers, got "
                        + ", ".join(repr(getattr(shape, k))[:40] for k in bad))
    return shape


# --- the run's settings that change memory ---------------------------------------------------------

@dataclass(frozen=True)
class PlanSettings:
    """The settings of a run that change its memory. ``compute_bytes``: 2 (bf16) or 4 (fp32)."""

    compute_bytes: int = 2
    lora_r: int = 16
    dropout: bool = True
    double_quant: bool = True
    upcast: KbitUpcast = "trainable"  # see RunConfig.kbit_upcast: where fp32 copies are kept
    #: On a CUDA GPU bitsandbytes' 4-bit matmul saves no activation; on a CPU the kit's
    #: dequantize + ``F.linear`` path (:mod:`reclor_lab.cpu4bit`) saves each layer's input.
    base_saves_input: bool = False

    @classmethod
    def from_config(cls, cfg: RunConfig, compute_bytes: int = 2, base_saves_input: bool = False) -> "PlanSettings":
        return cls(compute_bytes=compute_bytes, lora_r=cfg.lora_r, dropout=cfg.lora_dropout > 0,
                   double_quant=cfg.double_quant, upcast=cfg.kbit_upcast, base_saves_input=base_saves_input)

    @property
    def stream_bytes(self) -> int:
        """Bytes per element of the residual stream: fp32 embeddings (peft's upcast) make every
        residual add fp32; otherwise it stays in the compute dtype."""
        return 4 if self.upcast == "peft" else self.compute_bytes


# --- the components -------------------------------------------------------------------------------

def weight_bytes(shape: ModelShape, s: PlanSettings) -> dict[str, float]:
    """Frozen weights: ``Q·nf4_bytes_per_param`` for the projections (scales included),
    ``E·b`` for embeddings and norms (``b`` = 4 with peft's upcast, else the compute dtype's
    bytes), and the head twice in fp32 (``2·4·labels·hidden``)."""
    return {"4-bit projections": shape.quantized_params * nf4_bytes_per_param(s.double_quant, NF4_BLOCKSIZE),
            "embeddings + norms": shape.sixteen_bit_params * s.stream_bytes,
            "head (original + trained)": 2 * 4 * shape.head_params}


def lora_state_bytes(shape: ModelShape, s: PlanSettings) -> dict[str, float]:
    """fp32 LoRA parameters, gradients and AdamW's two moments (4 bytes each), autocast's
    compute-dtype copy of each LoRA weight, and the head's gradient and moments (3·4 bytes)."""
    n, head = lora_params(shape, s.lora_r), shape.head_params
    out = {"LoRA parameters": 4 * n, "LoRA gradients": 4 * n, "AdamW moments": 8 * n + 12 * head}
    if s.compute_bytes != 4:
        out["LoRA weights in compute dtype"] = s.compute_bytes * n
    return out


def layer_activation_bytes(shape: ModelShape, s: PlanSettings, seq_len: int) -> dict[str, int]:
    """Bytes autograd saves per token in one decoder layer (SDPA attention, SwiGLU MLP,
    RMSNorm, LoRA on all 7 projections), by where they come from. ``c``: compute-dtype bytes,
    ``st``: residual-stream bytes, ``m``: 1 byte of dropout mask per LoRA input element (0 without
    dropout), ``h`` hidden, ``I`` intermediate, ``r`` LoRA rank, ``T`` the padded length.

    - RMSNorm (×2): its input in fp32, ``4h`` each (the weight is frozen: its product saves nothing).
    - a LoRA input of width ``d``: the dropout mask ``m·d`` and lora_A's input in the compute
      dtype ``c·d``; lora_B's input ``c·r``. The 4-bit base matmul saves no activation
      (bitsandbytes keeps the packed weight and dequantizes it again in backward). Without
      dropout, q/k/v (and gate/up) share one input when it is already in the compute dtype.
    - SDPA: q, k, v and its output in the compute dtype (``4·c·kv``-ish, exactly
      ``c·(2h + 2·kv)``), the fp32 log-sum-exp per head, and the padding mask it converts
      to an additive ``c·T`` bias row per token.
    - SwiGLU: gate's output (saved by SiLU), SiLU's output and up's output (saved by the
      product), ``3·st·I``.
    - only where the 4-bit matmul is a plain ``F.linear`` (the CPU path): its inputs, one shared
      by q/k/v, one by gate/up, o's (when dropout makes lora_A's another) and down's:
      ``st·2h + m·c·h + st·I``; none when lora_A saves the same tensors (no dropout, ``st = c``).
    """
    c, st, m, r = s.compute_bytes, s.stream_bytes, int(s.dropout), s.lora_r
    h, I = shape.hidden, shape.intermediate
    kv = shape.kv_heads * shape.head_dim
    shared = not s.dropout and st == c  # one saved input serves q/k/v (and gate/up)
    qkv_inputs = (1 if shared else 3) * c * h + 3 * m * h
    gate_up_inputs = (1 if shared else 2) * c * h + 2 * m * h
    out = {
        "RMSNorm inputs (fp32)": 2 * 4 * h,
        "LoRA inputs (q k v o gate up down)": qkv_inputs + (c + m) * h + gate_up_inputs + (c + m) * I + 7 * c * r,
        "SDPA q k v out + log-sum-exp": c * (2 * h + 2 * kv) + 4 * shape.heads,
        "SDPA padding bias": c * seq_len,
        "SwiGLU (gate, SiLU, up)": 3 * st * I,
    }
    if s.base_saves_input and not shared:  # shared: lora_A saves the very same tensors
        out["4-bit layer inputs (CPU path)"] = st * 2 * h + m * c * h + st * I
    return out


def backward_transient_bytes(shape: ModelShape, s: PlanSettings, tokens: int) -> dict[str, float]:
    """Alive only during backward: the gradients flowing in and out of the widest tensors,
    ``2·st·(h + I)`` per token, and one projection's weight dequantized to the compute dtype,
    ``c·h·I`` (the largest)."""
    return {"backward gradients": 2 * s.stream_bytes * (shape.hidden + shape.intermediate) * tokens,
            "dequantized weight": s.compute_bytes * shape.hidden * shape.intermediate}


@dataclass(frozen=True)
class Estimate:
    """Predicted memory of one training step, by component (bytes)."""

    batch: int
    seq_len: int
    checkpointing: bool
    components: dict[str, float] = field(default_factory=dict)

    @property
    def allocated(self) -> float:
        """What ``torch.cuda.max_memory_allocated`` should report."""
        return sum(self.components.values())

    @property
    def device(self) -> float:
        """What the device must have: allocated, the allocator's slack and the CUDA context."""
        return self.allocated * (1 + ALLOCATOR_OVERHEAD) + CUDA_CONTEXT_BYTES

    def fits(self, budget: float) -> bool:
        return self.device <= budget

    def breakdown(self) -> str:
        rows = [f"  {k:<36}{v / GIB:8.3f} GiB" for k, v in self.components.items()]
        rows.append(f"  {'peak allocated':<36}{self.allocated / GIB:8.3f} GiB")
        rows.append(f"  {'device (+ allocator, CUDA context)':<36}{self.device / GIB:8.3f} GiB")
        return "\n".join(rows)


@dataclass(frozen=True)
class Planner:
    """Estimates for one model shape and run settings."""

    shape: ModelShape
    settings: PlanSettings

    def activation_bytes(self, batch: int, seq_len: int, checkpointing: bool) -> float:
        """Saved activations of a step over ``batch × seq_len`` padded tokens: every layer's
        (:func:`layer_activation_bytes`) plus the final norm's fp32 input; with checkpointing,
        each layer's input (``st·h`` per token and layer) plus one layer recomputed in full."""
        tokens = batch * seq_len
        per_layer = sum(layer_activation_bytes(self.shape, self.settings, seq_len).values())
        final_norm = 4 * self.shape.hidden
        if checkpointing:
            kept = self.shape.layers * self.settings.stream_bytes * self.shape.hidden + per_layer
        else:
            kept = self.shape.layers * per_layer
        return tokens * (kept + final_norm)

    def estimate(self, batch: int, seq_len: int, checkpointing: bool) -> Estimate:
        sh, s, tokens = self.shape, self.settings, batch * seq_len
        comp: dict[str, float] = {}
        comp.update(weight_bytes(sh, s))
        comp.update(lora_state_bytes(sh, s))
        comp["activations" + (" (checkpointed)" if checkpointing else "")] = \
            self.activation_bytes(batch, seq_len, checkpointing)
        comp.update(backward_transient_bytes(sh, s, tokens))
        comp["logits"] = tokens * sh.num_labels * (s.compute_bytes + 4)
        return Estimate(batch, seq_len, checkpointing, comp)

    def grid(self, batches: Iterable[int], lengths: Iterable[int]) -> list[Estimate]:
        return [self.estimate(b, t, ck) for t in lengths for b in batches for ck in (False, True)]


# --- choosing a shape for a budget ------------------------------------------------------------------

@dataclass(frozen=True)
class BatchChoice:
    """The micro-batch, accumulation and checkpointing ``batch_size="auto"`` settles on."""

    batch_size: int
    grad_accum_steps: int
    gradient_checkpointing: bool
    learning_rate: float
    reason: str
    estimate: Estimate | None = None


#: With ``auto_batch="sqrt-lr"``: the largest micro-batch auto may pick (15× fewer optimizer
#: steps per epoch than the reference's batch 2 already; more has not been tried).
MAX_AUTO_BATCH = 16


def sqrt_lr(lr: float, batch: int, base_batch: int) -> float:
    """Adam's square-root scaling rule (Malladi et al., 2022, "On the SDEs and Scaling Rules for
    Adaptive Gradient Algorithms"): ``lr · sqrt(batch / base_batch)`` keeps the update's noise
    scale when the batch grows.

    >>> sqrt_lr(1e-4, 8, 2)
    0.0002
    """
    return lr * (batch / base_batch) ** 0.5


def choose_batch(planner: Planner, cfg: RunConfig, budget: float) -> BatchChoice:
    """The largest micro-batch that fits ``budget`` (device bytes) at ``cfg.max_len``, without
    gradient checkpointing if it fits, else with it.

    ``auto_batch="accumulate"``: micro-batches are divisors of ``base_batch_size`` and
    gradient accumulation makes up the rest, so every optimizer step sees ``base_batch_size``
    examples at the configured learning rate: the optimisation the rate was tuned for.
    ``auto_batch="sqrt-lr"``: one micro-batch per step, up to :data:`MAX_AUTO_BATCH`, with the
    learning rate scaled by :func:`sqrt_lr`.
    """
    base = cfg.base_batch_size
    if cfg.auto_batch == "accumulate":
        candidates = [b for b in range(base, 0, -1) if base % b == 0]
    else:
        candidates = [b for b in range(MAX_AUTO_BATCH, 0, -1)]
    for b in candidates:
        for ck in (False, True):
            e = planner.estimate(b, cfg.max_len, ck)
            if e.fits(budget):
                accum = base // b if cfg.auto_batch == "accumulate" else 1
                lr = cfg.learning_rate if cfg.auto_batch == "accumulate" else sqrt_lr(cfg.learning_rate, b, base)
                why = (f"{b} x {accum} accumulated = {b * accum} per step" if cfg.auto_batch == "accumulate"
                       else f"{b} per step, lr {cfg.learning_rate:g} x sqrt({b}/{base}) = {lr:.3g}")
                return BatchChoice(b, accum, ck, lr, f"{why}; checkpointing {'on' if ck else 'off'}; predicted "
                                   f"{e.device / GIB:.2f} GiB of {budget / GIB:.2f} GiB", e)
    smallest = planner.estimate(1, cfg.max_len, True)
    raise PlanError(f"batch 1 at max_len {cfg.max_len} with checkpointing needs ~{smallest.device / GIB:.1f} GiB, "
                    f"more than the budget of {budget / GIB:.1f} GiB; lower `max_len` or raise `gpu_memory`")


def gpu_compute_bytes(cfg: RunConfig) -> int:
    """Bytes per element of a GPU run's compute dtype: 4 with `float32`, else 2 (bf16, or fp16
    where ``auto`` finds no bf16: a T4 or V100). fp16's loss scaler adds no tensor worth counting
    (a scale and a counter), and unscales the gradients in place."""
    return 4 if cfg.compute_dtype == "float32" else 2


def resolve_batch(cfg: RunConfig, budget: float | None = None, verbose: bool = True) -> RunConfig:
    """``cfg`` with ``batch_size="auto"`` made concrete (a concrete config comes back as it is).

    On a CUDA device: :func:`choose_batch` for the budget (``cfg.gpu_memory``, else the device's
    total memory). Without CUDA there is no device memory to plan for: auto takes
    ``base_batch_size`` and the configured checkpointing, and says so. ``budget`` (bytes) plans
    for that budget on any machine (what a test or a benchmark asks).
    """
    if cfg.batch_size != "auto":
        return cfg
    import torch  # here, not at the top: importing the planner stays torch-free (`reclor-lab plan`)

    if budget is None and not torch.cuda.is_available():
        if verbose:
            print(f"batch_size auto: no CUDA device, so batch {cfg.base_batch_size} (base_batch_size) "
                  f"and checkpointing {'on' if cfg.gradient_checkpointing else 'off'} as configured")
        return cfg.replace(batch_size=cfg.base_batch_size)
    if budget is None and cfg.gpu_memory is not None:
        budget = parse_memory(cfg.gpu_memory)
    if budget is None:
        budget = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    shape, source = model_shape(cfg.model_name_or_path)
    choice = choose_batch(Planner(shape, PlanSettings.from_config(cfg, gpu_compute_bytes(cfg))), cfg, budget)
    if verbose:
        print(f"batch_size auto: {choice.reason} (shape from {source})")
    return cfg.replace(batch_size=choice.batch_size, grad_accum_steps=choice.grad_accum_steps,
                       gradient_checkpointing=choice.gradient_checkpointing, learning_rate=choice.learning_rate)


# --- the table -----------------------------------------------------------------------------------

def plan_table(planner: Planner, budget: float | None, batches: Iterable[int] = DEFAULT_BATCHES,
               lengths: Iterable[int] = DEFAULT_LENGTHS) -> str:
    """One row per (max length, batch, checkpointing): weights, LoRA state, activations, peak
    allocated, device need, and whether it fits ``budget``."""
    head = (f"{'max_len':>7} {'batch':>5} {'ckpt':>4} {'weights':>8} {'LoRA+opt':>8} {'activ.':>8} "
            f"{'peak alloc':>10} {'device':>8}" + ("  fits" if budget else ""))
    rows = [head, "-" * len(head)]
    w = sum(weight_bytes(planner.shape, planner.settings).values())  # the same for every row
    lo = sum(lora_state_bytes(planner.shape, planner.settings).values())
    for e in planner.grid(batches, lengths):
        act = next(v for k, v in e.components.items() if k.startswith("activations"))
        row = (f"{e.seq_len:>7} {e.batch:>5} {'on' if e.checkpointing else 'off':>4} {w / GIB:8.2f} {lo / GIB:8.2f} "
               f"{act / GIB:8.2f} {e.allocated / GIB:10.2f} {e.device / GIB:8.2f}")
        if budget:
            row += "  yes" if e.fits(budget) else "  no"
        rows.append(row)
    rows.append(f"(GiB; device = peak allocated x {1 + ALLOCATOR_OVERHEAD:.2f} (allocator) + "
                f"{CUDA_CONTEXT_BYTES / GIB:.1f} GiB (CUDA context); every batch padded to max_len)")
    return "\n".join(rows)


__all__ = [
    "ALLOCATOR_OVERHEAD", "BatchChoice", "CUDA_CONTEXT_BYTES", "Estimate", "GIB", "LLAMA2_7B_SHAPE", "ModelShape",
    "PlanError", "PlanSettings", "Planner", "backward_transient_bytes", "choose_batch", "gpu_compute_bytes",
    "layer_activation_bytes", "lora_state_bytes", "parse_memory", "plan_table", "resolve_batch", "sqrt_lr",
    "weight_bytes",
]
