"""Load the decoder LLM as a 4-bit (NF4) sequence classifier, and make the memory savings visible.

The reference solution loads Llama-2-7B with NF4 weights, double quantization and bf16 compute as
``AutoModelForSequenceClassification(num_labels=4)`` with pad = eos. On CPU laptops and in CI the
same code path runs on the bundled tiny Llama (bitsandbytes quantizes to 4-bit on CPU too).

>>> from reclor_lab.config import get_preset
>>> cfg = get_preset("tiny")
>>> tok = load_tokenizer(cfg.model_name_or_path)            # doctest: +SKIP
>>> model = load_model(cfg, tok)                            # doctest: +SKIP
>>> print(memory_report(model).table())                     # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Iterator, Literal

import torch
from torch import nn

from reclor_lab.config import NUM_LABELS, RunConfig
from reclor_lab.cpu4bit import use_portable_kernels
# head_init="letters": the head starts as the zero-shot scorer (an experiment of notebook 06, not QLoRA).
from reclor_lab.results.letters import init_letter_head
# A model folder's and a tokenizer's checks, transformers' loading errors and load report, the
# 4-bit probe, the fix that puts transformers 5's Llama tokenizer back on SentencePiece's ids: machinery.
from reclor_lab.runs.loading import (  # QuantizationUnavailable: the error load_model raises, named here too
    QuantizationUnavailable, _check_4bit_support, _load_errors, _load_report, check_model_folder,  # noqa: F401
    check_tokenizer, check_tokenizer_folder, check_vocabulary, sentencepiece_spaces,
)
from reclor_lab.shapes import LLAMA2_7B_SHAPE, NF4_BLOCKSIZE, nf4_bytes_per_param

# The transformers / bitsandbytes imports are heavy (seconds); modules that only need the
# constants below (a notebook plotting NF4 codes, the config printer) should not pay for them.
# They are imported inside the functions that use them.

#: Names of the classification / LM heads. They are never quantized and never get LoRA: the
#: head is small, new (randomly initialised for classification) and trained in full.
HEAD_NAMES: tuple[str, ...] = ("score", "lm_head")

#: The 16 NF4 code values (QLoRA, Dettmers et al. 2023): quantiles of N(0, 1) rescaled to
#: [-1, 1], with an exact 0. A 4-bit index picks one; the block's absmax scales it back.
#: Same table as ``bitsandbytes.functional.get_4bit_type("nf4")`` (a test checks this).
NF4_CODE: tuple[float, ...] = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)

# --- Llama-2-7B, for the "what would this cost on the real model" column -----------------------
# Every count comes from the planner's one shape (reclor_lab.shapes.LLAMA2_7B_SHAPE).
LLAMA2_7B_HIDDEN = LLAMA2_7B_SHAPE.hidden
LLAMA2_7B_INTERMEDIATE = LLAMA2_7B_SHAPE.intermediate
LLAMA2_7B_LAYERS = LLAMA2_7B_SHAPE.layers
LLAMA2_7B_VOCAB = LLAMA2_7B_SHAPE.vocab
#: Parameters in the 7 projections of every decoder layer: these are what QLoRA quantizes.
LLAMA2_7B_QUANTIZED_PARAMS = LLAMA2_7B_SHAPE.quantized_params  # 6_476_005_376
#: The rest of the causal LM: token embeddings, lm_head, and 2 RMSNorms per layer + 1 final.
LLAMA2_7B_OTHER_PARAMS = LLAMA2_7B_SHAPE.sixteen_bit_params + LLAMA2_7B_VOCAB * LLAMA2_7B_HIDDEN  # 262_410_240
#: Llama-2-7B (causal LM, with lm_head) parameter count, as the Hub model card reports it.
LLAMA2_7B_PARAMS = 6_738_415_616
assert LLAMA2_7B_QUANTIZED_PARAMS + LLAMA2_7B_OTHER_PARAMS == LLAMA2_7B_PARAMS
#: What a 4-way classifier keeps besides the projections: embeddings, norms and the new head
#: ``score`` (4 × hidden). It never loads ``lm_head`` (32000 × 4096 = 131 M weights, 0.26 GB in
#: bf16): transformers reports it UNEXPECTED and drops it.
LLAMA2_7B_CLASSIFIER_OTHER_PARAMS = LLAMA2_7B_SHAPE.sixteen_bit_params + LLAMA2_7B_SHAPE.head_params  # 131_354_624
#: Parameters of Llama-2-7B loaded as a 4-way sequence classifier (what the reference trains).
LLAMA2_7B_CLASSIFIER_PARAMS = LLAMA2_7B_QUANTIZED_PARAMS + LLAMA2_7B_CLASSIFIER_OTHER_PARAMS  # 6_607_360_000

_DTYPES: dict[str, torch.dtype] = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_BYTES_PER_GB = 1e9  # decimal GB, the unit model cards and nvidia-smi's marketing use


# --- device and precision ----------------------------------------------------------------------

def pick_device() -> torch.device:
    """The current CUDA device if there is one, else the CPU (never a hard-coded GPU index).

    >>> pick_device().type in {"cuda", "cpu"}
    True
    """
    if torch.cuda.is_available():
        # current_device() honours CUDA_VISIBLE_DEVICES and torch.cuda.set_device().
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def resolve_compute_dtype(cfg: RunConfig) -> torch.dtype:
    """The dtype of the matmuls: ``auto`` → bf16 where the GPU supports it, fp16 on a CUDA GPU
    without bf16 (a T4, a V100: fp16 tensor cores, with loss scaling in the training loop), fp32
    on a CPU (CPU bf16 matmuls are slow on most laptops). An explicit ``bfloat16``, ``float16`` or
    ``float32`` is honoured on any device (a CPU in 16 bits is slower, but closer to a GPU's numerics).

    >>> from reclor_lab.config import get_preset
    >>> resolve_compute_dtype(get_preset("tiny", compute_dtype="float32"))
    torch.float32
    """
    if cfg.compute_dtype == "auto":
        if not torch.cuda.is_available():
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return _DTYPES[cfg.compute_dtype]


def autocast_for(device: torch.device, dtype: torch.dtype):
    """Autocast to ``dtype`` (bf16 or fp16) on ``device``; a no-op context in fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def loss_scaler(device: torch.device, dtype: torch.dtype) -> torch.amp.GradScaler:
    """Dynamic loss scaling for fp16 compute, disabled (every call passes through) otherwise.

    fp16 tops out at 65504 and flushes gradients below ~6e-8 to zero, so fp16 training
    multiplies the loss by a large scale before backward and divides the gradients by it before
    the step. A step whose gradients hold inf or NaN is skipped and the scale halves; after 2,000
    clean steps it doubles (torch's defaults, the Trainer's ``fp16=True`` too). bf16 has fp32's
    range and needs none.
    """
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


# --- quantization ------------------------------------------------------------------------------

def bnb_config(cfg: RunConfig):  # -> BitsAndBytesConfig | None (import kept lazy)
    """The bitsandbytes 4-bit config of the reference solution, or None for ``quantization="none"``.

    NF4 weights, optional double quantization of the block scales, matmuls in the compute dtype.

    >>> from reclor_lab.config import get_preset
    >>> q = bnb_config(get_preset("tiny"))
    >>> q.load_in_4bit, q.bnb_4bit_quant_type, q.bnb_4bit_use_double_quant
    (True, 'nf4', True)
    >>> bnb_config(get_preset("tiny", quantization="none")) is None
    True
    """
    if cfg.quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=cfg.double_quant,
        bnb_4bit_compute_dtype=resolve_compute_dtype(cfg),
    )


# --- loading -----------------------------------------------------------------------------------

def load_tokenizer(path: str):  # -> PreTrainedTokenizerBase
    """The model's tokenizer with ``pad_token = eos_token`` and right padding, nothing else changed.

    Llama-2 ships without a pad token; reusing eos is the reference's choice. The sequence
    classifier reads the logits at :func:`last_token_index`: the rightmost position whose id is
    not ``pad_token_id``. With pad == eos an eos that *ends* the text (a tokenizer set to append
    eos, or a literal ``</s>`` at the end) counts as padding, and the head reads the token before
    it; an eos followed by more text is harmless. ReClor's texts contain none.
    """
    from transformers import AutoTokenizer

    check_tokenizer_folder(path)  # a model folder (or hub id) with a tokenizer's files
    with _load_errors(path, "tokenizer"):
        # never run code a model or run directory ships (an auto_map would ask y/N in a terminal)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    check_tokenizer(tokenizer, path)  # it turns text into tokens, and has an eos to pad with
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    sentencepiece_spaces(tokenizer)  # transformers 5's rebuilt Llama tokenizer: SentencePiece's ids again
    return tokenizer


def last_token_index(input_ids: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """Per row, the position whose hidden state the sequence-classification head reads: the
    rightmost token that is not ``pad_token_id`` (transformers 5.24's rule, for right and left
    padding alike; it looks at the ids only, not at the attention mask).

    >>> last_token_index(torch.tensor([[1, 5, 6, 2, 2], [1, 5, 2, 7, 2]]), pad_token_id=2)
    tensor([2, 3])
    """
    positions = torch.arange(input_ids.shape[-1], device=input_ids.device)
    return (positions * (input_ids != pad_token_id)).argmax(-1)


def load_model(cfg: RunConfig, tokenizer, task: Literal["classification", "causal-lm"] = "classification",
               report: bool = False):  # -> PreTrainedModel
    """``AutoModelForSequenceClassification`` with ``NUM_LABELS`` outputs, 4-bit NF4 unless
    ``cfg.quantization == "none"``, on the device picked from the hardware.

    The head (``score``) is new: random, or with ``head_init="letters"`` the LM head's rows of the
    four answer letters. transformers' load report says ``score.weight`` is MISSING (and
    ``lm_head.weight`` UNEXPECTED for a causal-LM checkpoint): expected here, so that report shows
    only with ``report=True`` (notebook 02 explains it); a report naming any other weight always
    shows. Raises :class:`QuantizationUnavailable` when bitsandbytes cannot quantize here.
    ``task="causal-lm"`` loads the same 4-bit model with its LM head instead (the zero-shot
    scorer of :mod:`reclor_lab.results.baselines`), through the same kernels.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if task not in ("classification", "causal-lm"):
        raise ValueError(f"task must be 'classification' or 'causal-lm', got {task!r}")

    device = pick_device()
    dtype = resolve_compute_dtype(cfg)
    quant = bnb_config(cfg)
    if quant is not None:
        _check_4bit_support(str(device))
    auto, head_args = ((AutoModelForSequenceClassification, {"num_labels": NUM_LABELS})
                       if task == "classification" else (AutoModelForCausalLM, {}))
    check_model_folder(cfg.model_name_or_path)  # a model folder (or hub id) with safetensors weights
    with _load_errors(cfg.model_name_or_path, "model"), _load_report(report):
        model = auto.from_pretrained(
            cfg.model_name_or_path,
            **head_args,
            quantization_config=quant,
            dtype=dtype,  # transformers 5 name (was torch_dtype); the dtype of the unquantized weights
            # torch's fused attention (flash / memory-efficient kernels on a GPU): one call per
            # layer instead of eager's matmul, mask, softmax, matmul, and no T x T scores saved
            attn_implementation="sdpa",
            # Everything on the one picked device: with 4-bit weights a CPU-offloaded layer would fail
            # in bitsandbytes, and "auto" would silently offload when the model does not fit.
            device_map={"": device},
            trust_remote_code=False,
        )
    check_vocabulary(tokenizer, model, cfg.model_name_or_path)  # it pads, and is the model's own
    # Without it Llama's classifier cannot find the last real token of a padded batch and
    # refuses batches larger than 1.
    model.config.pad_token_id = tokenizer.pad_token_id
    if quant is not None:
        # One 4-bit CPU path on every CPU, chosen before the first forward pass: without this an
        # avx512_bf16 CPU switches to a kernel without autograd after the first evaluation.
        use_portable_kernels(model)
    if task == "classification" and cfg.head_init == "letters":
        init_letter_head(model, cfg, tokenizer)
    return model


# --- parameters and their bytes -------------------------------------------------------------------

def is_4bit(param: torch.Tensor) -> bool:
    """True for a bitsandbytes ``Params4bit`` weight (packed two 4-bit values per uint8)."""
    return type(param).__name__ == "Params4bit"


def logical_numel(param: torch.Tensor) -> int:
    """Number of weights a parameter *represents*.

    A quantized ``Params4bit`` stores 2 weights per uint8 byte, so ``numel()`` is half the real
    count; its ``quant_state.shape`` holds the original shape. (peft's
    ``print_trainable_parameters`` doubles ``numel()`` for the same reason.)
    """
    state = getattr(param, "quant_state", None)
    if is_4bit(param) and state is not None:
        return math.prod(state.shape)
    return param.numel()


def quantizable_linears(model: nn.Module) -> Iterator[tuple[str, nn.Linear]]:
    """(qualified name, module) of every linear layer QLoRA quantizes and adapts.

    Every bitsandbytes ``Linear4bit`` when the model is quantized, else every ``nn.Linear``;
    the head (:data:`HEAD_NAMES`) is excluded either way.
    """
    modules = list(model.named_modules())
    quantized = any(type(m).__name__ == "Linear4bit" for _, m in modules)
    for name, module in modules:
        if any(part in HEAD_NAMES for part in name.split(".")):
            continue
        if quantized and type(module).__name__ != "Linear4bit":
            continue
        # peft wraps an adapted layer (lora.Linear4bit has a .base_layer); count the base only.
        if isinstance(module, nn.Linear) and ".lora_" not in name:
            yield name, module


def _quant_state_bytes(param: torch.Tensor) -> int:
    """Bytes of a Params4bit's block scales (absmax, nested absmax, code tables)."""
    state = getattr(param, "quant_state", None)
    if state is None:
        return 0
    tensors = [state.absmax, state.code]
    nested = getattr(state, "state2", None)  # bitsandbytes deletes it when it repacks for bf16
    if nested is not None:
        tensors += [nested.absmax, nested.code, state.offset]
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def measured_bytes(model: nn.Module) -> int:
    """Bytes the model's weights occupy right now: parameters + buffers + 4-bit block scales.

    ``model.get_memory_footprint()`` misses the scales, which live outside the parameters.
    """
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    total += sum(b.numel() * b.element_size() for b in model.buffers())
    total += sum(_quant_state_bytes(p) for p in model.parameters() if is_4bit(p))
    return total


def estimate_bytes(quantized_params: int, other_params: int, mode: str, double_quant: bool = True) -> float:
    """Weight bytes for a model with ``quantized_params`` in its projections and ``other_params``
    elsewhere (embeddings, norms, head).

    ``mode``: ``fp32`` (4 bytes each), ``bf16`` (2 bytes each) or ``4bit`` (projections at
    :func:`nf4_bytes_per_param`, everything else kept in bf16, as QLoRA does).

    >>> estimate_bytes(LLAMA2_7B_QUANTIZED_PARAMS, LLAMA2_7B_OTHER_PARAMS, "bf16") / 1e9
    13.476831232
    """
    n = quantized_params + other_params
    if mode == "fp32":
        return 4.0 * n
    if mode == "bf16":
        return 2.0 * n
    if mode == "4bit":
        return quantized_params * nf4_bytes_per_param(double_quant) + 2.0 * other_params
    raise ValueError(f"mode must be 'fp32', 'bf16' or '4bit', got {mode!r}")


# --- the memory report ---------------------------------------------------------------------------

@dataclass(frozen=True)
class MemoryReport:
    """Weight memory of the loaded model and of Llama-2-7B, in bytes.

    Estimates count weights only (no activations, gradients or optimizer state). Formula:
    ``fp32 = 4 N``, ``bf16 = 2 N``, ``4bit = Q * nf4_bytes_per_param(double_quant) + 2 (N - Q)``,
    with ``N`` all parameters and ``Q`` those in the quantized projections.
    """

    params: int
    quantized_params: int
    double_quant: bool
    fp32_bytes: float
    bf16_bytes: float
    nf4_bytes: float
    measured_bytes: int
    llama2_7b_params: int = LLAMA2_7B_CLASSIFIER_PARAMS
    llama2_7b_fp32_bytes: float = field(default=0.0)
    llama2_7b_bf16_bytes: float = field(default=0.0)
    llama2_7b_nf4_bytes: float = field(default=0.0)

    def table(self) -> str:
        """A small fixed-width table (GB = 10^9 bytes; the tiny model also in KB)."""
        def gb(x: float) -> str:
            return f"{x / _BYTES_PER_GB:10.3f} GB"

        def small(x: float) -> str:
            return f"{x / 1e3:10.1f} KB" if x < 1e8 else gb(x)

        dq = "with" if self.double_quant else "without"
        rows = [
            f"{'weights':<28}{'this model':>14}{'Llama-2-7B':>16}",  # both as 4-way classifiers
            f"{'parameters':<28}{self.params:>14,}{self.llama2_7b_params:>16,}",
            f"{'  in quantized projections':<28}{self.quantized_params:>14,}"
            f"{LLAMA2_7B_QUANTIZED_PARAMS:>16,}",
            f"{'fp32 estimate':<28}{small(self.fp32_bytes):>14}{gb(self.llama2_7b_fp32_bytes):>16}",
            f"{'bf16 estimate':<28}{small(self.bf16_bytes):>14}{gb(self.llama2_7b_bf16_bytes):>16}",
            f"{'4-bit NF4 estimate':<28}{small(self.nf4_bytes):>14}{gb(self.llama2_7b_nf4_bytes):>16}",
            f"{'measured (as loaded)':<28}{small(self.measured_bytes):>14}{'-':>16}",
            f"(4-bit: {nf4_bytes_per_param(self.double_quant) * 8:.3f} bits/weight in the projections, "
            f"{dq} double quant; the estimate keeps embeddings, norms and head in bf16, the GPU's compute "
            "dtype: on a CPU they load in fp32)",
            "(measured: parameters + buffers + 4-bit scales, in the dtypes they have now; "
            "Llama-2-7B as a classifier: its lm_head is never loaded)",
        ]
        return "\n".join(rows)

    def __str__(self) -> str:
        return self.table()


def memory_report(model: nn.Module, double_quant: bool | None = None) -> MemoryReport:
    """Weight footprint of ``model`` in fp32, bf16 and 4-bit (estimated from its parameter count)
    plus what it measures now, next to the same estimates for Llama-2-7B.

    ``double_quant`` defaults to what the model was loaded with (True for an unquantized model,
    the reference setting).
    """
    if double_quant is None:
        double_quant = True
        for p in model.parameters():
            if is_4bit(p) and getattr(p, "quant_state", None) is not None:
                double_quant = getattr(p.quant_state, "state2", None) is not None
                break
    seen: set[int] = set()
    params = 0
    for p in model.parameters():
        if id(p) not in seen:  # tied weights count once
            seen.add(id(p))
            params += logical_numel(p)
    quantized = sum(logical_numel(m.weight) for _, m in quantizable_linears(model))
    other = params - quantized
    return MemoryReport(
        params=params,
        quantized_params=quantized,
        double_quant=double_quant,
        fp32_bytes=estimate_bytes(quantized, other, "fp32"),
        bf16_bytes=estimate_bytes(quantized, other, "bf16"),
        nf4_bytes=estimate_bytes(quantized, other, "4bit", double_quant),
        measured_bytes=measured_bytes(model),
        llama2_7b_fp32_bytes=estimate_bytes(LLAMA2_7B_QUANTIZED_PARAMS, LLAMA2_7B_CLASSIFIER_OTHER_PARAMS, "fp32"),
        llama2_7b_bf16_bytes=estimate_bytes(LLAMA2_7B_QUANTIZED_PARAMS, LLAMA2_7B_CLASSIFIER_OTHER_PARAMS, "bf16"),
        llama2_7b_nf4_bytes=estimate_bytes(
            LLAMA2_7B_QUANTIZED_PARAMS, LLAMA2_7B_CLASSIFIER_OTHER_PARAMS, "4bit", double_quant
        ),
    )


# --- NF4 made visible ---------------------------------------------------------------------------

@dataclass(frozen=True)
class NF4Roundtrip:
    """One weight tensor quantized to NF4 and back.

    ``bytes_after`` counts the packed 4-bit values plus the block scales (and, with double quant,
    the second-level scales); the 16-entry code tables are shared and left out.
    """

    original: torch.Tensor
    dequantized: torch.Tensor
    abs_error: torch.Tensor
    mean_abs_error: float
    max_abs_error: float
    relative_error: float  # ||W - deq(q(W))||_F / ||W||_F
    bytes_before: int
    bytes_after: int

    def summary(self) -> str:
        return (
            f"NF4 round trip of {tuple(self.original.shape)}: mean |err| {self.mean_abs_error:.2e}, "
            f"max |err| {self.max_abs_error:.2e}, relative {self.relative_error:.2%}; "
            f"{self.bytes_before:,} → {self.bytes_after:,} bytes "
            f"({self.bytes_before / self.bytes_after:.1f}x smaller)"
        )


def nf4_roundtrip(
    weight: torch.Tensor, blocksize: int = NF4_BLOCKSIZE, *, double_quant: bool = False
) -> NF4Roundtrip:
    """Quantize ``weight`` to NF4 with bitsandbytes (on the CPU) and dequantize it again.

    >>> r = nf4_roundtrip(torch.randn(64, 64))                     # doctest: +SKIP
    >>> 0 < r.relative_error < 0.15 and r.bytes_after < r.bytes_before / 3   # doctest: +SKIP
    True
    """
    import bitsandbytes.functional as bnbf

    original = weight.detach().to("cpu")
    if not original.is_floating_point():
        raise TypeError(f"nf4_roundtrip needs a float tensor, got {original.dtype}")
    if original.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        original = original.float()
    packed, state = bnbf.quantize_4bit(
        original, blocksize=blocksize, compress_statistics=double_quant, quant_type="nf4"
    )
    dequantized = bnbf.dequantize_4bit(packed, state, quant_type="nf4").reshape(original.shape)
    err = (original.float() - dequantized.float()).abs()
    scales = [state.absmax]
    if state.state2 is not None:
        scales.append(state.state2.absmax)
    return NF4Roundtrip(
        original=original,
        dequantized=dequantized,
        abs_error=err,
        mean_abs_error=err.mean().item(),
        max_abs_error=err.max().item(),
        relative_error=(err.norm() / original.float().norm().clamp_min(1e-12)).item(),
        bytes_before=original.numel() * original.element_size(),
        bytes_after=packed.numel() * packed.element_size()
        + sum(s.numel() * s.element_size() for s in scales),
    )
