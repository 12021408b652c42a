"""LoRA adapters on the (4-bit) linear layers: a hand-written :class:`LoRALinear`, and
:func:`inject_lora`, which puts peft's equal layer on every one of them.

:class:`LoRALinear` is the whole idea in a few lines (rasbt's ``LinearWithLoRA``, torchtune's
``LoRALinear``): a frozen base layer plus ``B @ A`` scaled by ``alpha / r``; a test holds it equal
to peft's layer (outputs and gradients) on a 4-bit and on a plain base. The runs themselves use
peft's (saving, loading, merging, every layer type).

The reference adapts every 4-bit linear layer except the head with r=16, alpha=16, dropout
0.05; the classification head (``score``) is new, so it trains in full (peft's SEQ_CLS task type puts
it in ``modules_to_save``).

>>> from reclor_lab.config import get_preset
>>> cfg = get_preset("tiny")
>>> model = inject_lora(load_model(cfg, tok), cfg)          # doctest: +SKIP
>>> print(trainable_report(model).line())                   # doctest: +SKIP
trainable params: 35,072 || all params: 133,952 || trainable%: 26.1825
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from reclor_lab.config import RunConfig
from reclor_lab.model import HEAD_NAMES, logical_numel, quantizable_linears
# What peft's adapters need around them (its deprecation noise, checkpointing under either
# transformers name, a cheaper CPU dropout mask) and the printed count: machinery. LoRADropout is
# named here for the course's sandbox runner, which builds it by name.
from reclor_lab.runs.adapters import (  # noqa: F401
    CHECKPOINT_KWARGS, LoRADropout, TrainableReport, chosen_targets, enable_checkpointing, use_lora_dropout,
    without_peft_noise,
)
from reclor_lab.shapes import lora_param_count

#: The SEQ_CLS head of Llama in transformers; trained in full, never LoRA-adapted.
CLASSIFIER_HEAD = "score"
#: Why peft wraps a module: the frozen original of a trained-in-full module lives here.
_PEFT_ORIGINAL = "original_module"


def find_lora_targets(model: nn.Module) -> list[str]:
    """Sorted unique leaf names of every linear layer to adapt: each bitsandbytes ``Linear4bit``
    of a quantized model, else each ``nn.Linear``; the head (``score``, ``lm_head``) never.

    >>> find_lora_targets(llama)                                # doctest: +SKIP
    ['down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj']
    """
    names = list(target_shapes(model))  # sorted; a peft-wrapped model gives the same names
    if not names:
        raise ValueError("found no linear layers to adapt (besides the head); pass lora_targets explicitly in "
                         "the run config")
    return names


def lora_config(cfg: RunConfig, targets: Sequence[str]):  # -> peft.LoraConfig
    """The peft ``LoraConfig`` of a run: SEQ_CLS, so the head trains in full next to the adapters."""
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        bias=cfg.lora_bias,
        target_modules=list(targets),
    )


class LoRALinear(nn.Module):
    """``base(x) + B(A(dropout(x))) * alpha / r``: a frozen linear layer (``nn.Linear`` or
    bitsandbytes' ``Linear4bit``) plus a trainable low-rank update, initialised as peft does:
    A (r × in) Kaiming-uniform, B (out × r) zeros, so the layer starts as the base layer."""

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base = base.requires_grad_(False)  # frozen: only A and B train
        self.A = nn.Linear(base.in_features, r, bias=False)  # weight: r × in
        self.B = nn.Linear(r, base.out_features, bias=False)  # weight: out × r
        nn.init.kaiming_uniform_(self.A.weight, a=math.sqrt(5))  # peft's (and nn.Linear's) init
        nn.init.zeros_(self.B.weight)  # B·A = 0: training starts from the base model exactly
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling = alpha / r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base(x)  # W0 x, through the frozen (4-bit) layer
        update = self.B(self.A(self.dropout(x.to(self.A.weight.dtype))))  # two thin matmuls, A and B in fp32
        return result + update.to(result.dtype) * self.scaling


def inject_lora(model: nn.Module, cfg: RunConfig):  # -> peft.PeftModel
    """Freeze the base model and add LoRA adapters (targets from ``cfg.lora_targets`` or
    :func:`find_lora_targets`).

    A 4-bit model is first prepared by :func:`prepare_kbit` (frozen, fp32 where
    ``cfg.kbit_upcast`` says, gradient checkpointing when configured); the trained weights (LoRA
    and the head) are fp32 either way. The dropout on each LoRA input is
    :class:`reclor_lab.runs.adapters.LoRADropout`.
    """
    from peft import get_peft_model

    targets = chosen_targets(cfg.lora_targets, find_lora_targets(model))  # None: every one
    quantized = bool(getattr(model, "is_loaded_in_4bit", False))
    with without_peft_noise():
        if quantized:
            model = prepare_kbit(model, cfg.kbit_upcast, cfg.gradient_checkpointing)
        elif cfg.gradient_checkpointing:
            enable_checkpointing(model)
        if cfg.gradient_checkpointing:
            # The KV cache is useless in training and incompatible with checkpointing;
            # transformers would switch it off on the first forward with a printed notice.
            model.config.use_cache = False
        peft_model = get_peft_model(model, lora_config(cfg, targets))
    use_lora_dropout(peft_model)
    for p in peft_model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()  # AdamW on 16-bit weights would round most updates away
    return peft_model


def prepare_kbit(model: nn.Module, upcast: str, checkpointing: bool) -> nn.Module:
    """Freeze a 4-bit model for LoRA training.

    ``upcast="peft"``: peft's ``prepare_model_for_kbit_training``, which also casts every
    non-4-bit weight (embeddings, norms, head) to fp32. On Llama-2-7B that is +0.25 GiB of
    weights, and it turns the whole residual stream fp32 (the embeddings' output is fp32, so
    every residual add is): about twice the activation memory of the bf16 stream, and a cast
    before and after every 4-bit matmul. ``upcast="trainable"``: only what trains is fp32 (LoRA
    and the head, done by :func:`inject_lora`); embeddings, norms and the stream stay in the
    compute dtype, as in ordinary bf16 training. RMSNorm computes its variance in fp32 either way.
    On a CPU the tiny model loads in fp32, so the two are the same there.
    """
    if upcast == "peft":
        from peft import prepare_model_for_kbit_training

        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing,
                                               gradient_checkpointing_kwargs=dict(CHECKPOINT_KWARGS))
    for p in model.parameters():
        p.requires_grad_(False)
    if checkpointing:
        # Non-reentrant checkpointing needs no input that requires grad (peft's input hook is
        # only for the re-entrant variant).
        enable_checkpointing(model)
    return model


# --- counting ------------------------------------------------------------------------------------

def trainable_report(model: nn.Module) -> TrainableReport:
    """Count trainable and all parameters as peft's ``print_trainable_parameters`` does: each tensor
    once, a 4-bit weight by the weights it represents (its ``numel()`` is half that), and the
    frozen original of the head that peft keeps beside its trained copy (``score.original_module``)."""
    params = {id(p): p for p in model.parameters()}.values()  # a shared tensor once
    return TrainableReport(trainable=sum(logical_numel(p) for p in params if p.requires_grad),
                           total=sum(logical_numel(p) for p in params))


def target_shapes(model: nn.Module) -> dict[str, list[tuple[int, int]]]:
    """``(out_features, in_features)`` of every adaptable linear layer, by leaf name; the same
    before and after :func:`inject_lora` (peft's wrapper keeps the layer as ``….base_layer``).

    >>> target_shapes(tiny_llama)["q_proj"]                   # doctest: +SKIP
    [(64, 64), (64, 64)]
    """
    shapes: dict[str, list[tuple[int, int]]] = {}
    for name, module in quantizable_linears(model):
        leaf = [p for p in name.split(".") if p != "base_layer"][-1]
        shapes.setdefault(leaf, []).append((module.out_features, module.in_features))
    return dict(sorted(shapes.items()))


def predicted_lora_params(model: nn.Module, targets: Sequence[str], r: int) -> int:
    """Trainable parameters LoRA *should* add, from the layer shapes alone: ``r * (in + out)`` per
    adapted layer (A is r×in, B is out×r), plus the classification head trained in full.

    Llama-2-7B, r=16, all 7 projections: 32 * 16 * (4*(4096+4096) + 3*(4096+11008)) = 39,976,960
    plus the 4×4096 head = 39,993,344 trainable (0.6% of 6.6 B). Assumes ``lora_bias="none"``.
    Works on the model before or after :func:`inject_lora`.
    """
    shapes = target_shapes(model)
    lora = lora_param_count((shape for t in set(targets) for shape in shapes.get(t, [])), r)
    head = 0
    seen: set[int] = set()
    for name, p in model.named_parameters():
        parts = name.split(".")
        if CLASSIFIER_HEAD in parts and _PEFT_ORIGINAL not in parts and id(p) not in seen:
            seen.add(id(p))
            head += logical_numel(p)
    return lora + head


# --- how close "equal" can be in floating point --------------------------------------------------

def rounding_gamma(n: int, dtype: torch.dtype) -> float:
    """Higham's ``γ_n = n·u / (1 − n·u)``: the relative error bound of ``n`` chained roundings in
    ``dtype`` (``u`` = half its machine epsilon), whatever order a kernel sums in.

    >>> f"{rounding_gamma(64, torch.float32):.2e}", f"{rounding_gamma(64, torch.bfloat16):.2e}"
    ('3.81e-06', '3.33e-01')
    """
    u = torch.finfo(dtype).eps / 2
    if n * u >= 1:
        raise ValueError(f"{n} roundings in {dtype} can lose every digit; no bound")
    return n * u / (1 - n * u)


def lora_error_bound(x: torch.Tensor, W0: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                     scaling: float, layer_dtype: torch.dtype,
                     reference_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Elementwise bound on ``|layer(x) − x @ (W0 + scaling·B·A).T|`` when the adapted layer
    computes in ``layer_dtype`` and the merged product is computed in ``reference_dtype``.

    Both sides are sums of the same products ``W0[i,j]·x[j]`` and ``scaling·B[i,k]·A[k,j]·x[j]``.
    The matmul kernels (CPU fp32 and bf16, GPU tensor cores) accumulate in fp32: at most
    ``in + r + 4`` fp32 roundings along any path. Rounding to the layer's own dtype happens only
    at the casts (``x`` and ``W0`` into it, the result out of it, the final add): at most 4. So
    each side lies within ``(γ_4(dtype) + γ_{in+r+4}(fp32))·S`` of the exact value, with
    ``S = |W0|·|x| + |scaling|·|B|·|A|·|x|``, and their difference within the sum of the two.
    A tolerance derived from the dtypes actually used, not a guessed constant: ~1e-5 of ``S``
    in fp32, ~3 % in bf16.
    """
    x, W0, A, B = (t.detach().double().abs() for t in (x, W0, A, B))
    S = x @ W0.T + abs(scaling) * (x @ A.T) @ B.T
    accumulate = rounding_gamma(W0.shape[1] + A.shape[0] + 4, torch.float32)
    per_side = [rounding_gamma(4, dtype) + accumulate for dtype in (layer_dtype, reference_dtype)]
    return sum(per_side) * S


__all__ = [
    "CLASSIFIER_HEAD",
    "HEAD_NAMES",
    "TrainableReport",
    "find_lora_targets",
    "inject_lora",
    "prepare_kbit",
    "lora_config",
    "lora_error_bound",
    "predicted_lora_params",
    "rounding_gamma",
    "target_shapes",
    "trainable_report",
]
