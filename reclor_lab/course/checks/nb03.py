"""The checks of notebook 03 (LoRA)."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn

from reclor_lab.config import NUM_LABELS
from reclor_lab.shapes import LLAMA2_7B_SHAPE, ModelShape, lora_param_count, lora_params, nf4_bytes_per_param
from reclor_lab.course.checks.common import NUMBER, _Fail, _run, _short

# --- 6. count LoRA parameters -----------------------------------------------------------------------------

def reference_count_lora_params(shapes: Sequence[tuple[int, int]], r: int) -> int:
    """LoRA parameters for layers of ``(out_features, in_features)``: A is r×in and B is out×r.

    The same rule as :func:`reclor_lab.lora.predicted_lora_params`, from shapes alone.

    >>> reference_count_lora_params([(4, 8)], r=2)
    24
    """
    return lora_param_count(shapes, r)


#: One Llama-2-7B decoder layer: q, k, v, o (4096×4096), gate and up (11008×4096), down (4096×11008),
#: as ``(out, in)``.
_LLAMA2_7B_LAYER = [(out, in_) for in_, out in LLAMA2_7B_SHAPE.projections.values()]
_COUNT_CASES: tuple[tuple[str, list[tuple[int, int]], int], ...] = (
    ("one 4×8 layer, r=2", [(4, 8)], 2),
    ("a 3×5 and a 6×2 layer, r=1", [(3, 5), (6, 2)], 1),
    ("one Llama-2-7B decoder layer (7 projections), r=16", _LLAMA2_7B_LAYER, 16),
    ("all 32 Llama-2-7B decoder layers, r=8", _LLAMA2_7B_LAYER * 32, 8),
)


def _count_hint(got: int, shapes: list[tuple[int, int]], r: int) -> str:
    full, square = sum(o * i for o, i in shapes), sum(2 * r * max(o, i) for o, i in shapes)
    if got == full == square:
        return ("that is the size of the full weights W, and also 2r·max(in, out) here; LoRA trains only "
                "A (r×in) and B (out×r): r·in + out·r per layer.")
    if got == full:
        return "that is the size of the full weights W; LoRA trains only A (r×in) and B (out×r)."
    if got == sum(r * o * i for o, i in shapes):
        return "LoRA adds A (r×in) and B (out×r) per layer: r·in + out·r, not r·in·out."
    if got in (sum(r * i for o, i in shapes), sum(r * o for o, i in shapes)):
        return "you counted only one of the two matrices; each layer has A (r×in) and B (out×r)."
    if got == square:
        return ("2r·max(in, out) treats A and B as the same size; they are not for a non-square layer: "
                "A is r×in and B is out×r, so r·in + out·r.")
    if got == sum(o + i for o, i in shapes):
        return "the rank r is missing: A has r rows, B has r columns."
    return "each layer adds A (r×in) and B (out×r); sum over all the layers."


def check_count_lora_params(fn: Callable[[list[tuple[int, int]], int], int]) -> Callable:
    """Exercise 6: ``fn(shapes, r) -> int`` = Σ r·(in + out) over ``(out, in)`` shapes."""

    def test(fn: Callable) -> None:
        for what, shapes, r in _COUNT_CASES:
            got = fn(list(shapes), r)
            if isinstance(got, bool) or not isinstance(got, int):
                if isinstance(got, float) and got.is_integer():
                    raise _Fail(f"for {what} it returned the float {got}; return an int (use // or int()).")
                raise _Fail(f"for {what} it returned {type(got).__name__}; return an int.")
            want = reference_count_lora_params(shapes, r)
            if got != want:
                raise _Fail(f"for {what} it returned {got:,}: {_count_hint(got, shapes, r)}")

    return _run(NUMBER["count_lora_params"], fn, reference_count_lora_params, test)


# --- 7. the LoRA forward pass ----------------------------------------------------------------------

def reference_lora_forward(x: torch.Tensor, W0: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                           alpha: float, r: int, dropout: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``W0 x + (alpha / r) · B A dropout(x)`` for a batch of row vectors ``x`` (batch, in):
    the frozen path sees ``x`` itself, only the update sees the dropped-out input."""
    return x @ W0.T + (alpha / r) * (dropout(x) @ A.T) @ B.T


#: The alphas the check tries per rank r: alpha = r (scale 1, the reference), 4r and r/2.
_ALPHA_FACTORS = (1.0, 4.0, 0.5)


class _ReplayDropout(nn.Module):
    """The dropout peft's layer just applied, replayed: returns the same dropped-out input, so the
    student's function sees the very mask peft drew (on a GPU, peft's mask comes from the CUDA
    generator, which a CPU ``nn.Dropout`` cannot reproduce)."""

    def __init__(self, output: torch.Tensor, p: float) -> None:
        super().__init__()
        self.output, self.p = output, p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape != self.output.shape:
            raise _Fail(f"dropout was given a tensor of shape {tuple(x.shape)}; apply it to x "
                        f"{tuple(self.output.shape)}, the input of the update.")
        return self.output.to(x.device, x.dtype)


def _lora_hint(got: torch.Tensor, x: torch.Tensor, W0: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
               alpha: float, r: int, dropped: torch.Tensor | None, bound: torch.Tensor) -> str:
    def near(y: torch.Tensor) -> bool:
        return bool(((got.double() - y.double()).abs() <= bound + 1e-4 * y.abs().double()).all())

    lora_in = x if dropped is None else dropped
    update = (lora_in @ A.T) @ B.T
    if alpha // r != alpha / r and near(x @ W0.T + (alpha // r) * update):
        return ("alpha // r is integer division (0 when alpha < r, 4 for alpha = 4.5·r); the scale is the "
                "float alpha / r.")
    if A.shape[1] == B.shape[0] and near(x @ W0.T + alpha / r * (lora_in @ B) @ A):
        return ("A and B are swapped: the input goes through A first (x·Aᵀ, r numbers per row), then B "
                "(·Bᵀ); A is (r, in), B is (out, r).")
    if near(x @ W0.T):
        return "that is W0·x alone: the LoRA update (alpha/r)·B·A·x is missing."
    for scale, what in ((1.0, "unscaled"), (r / alpha, "scaled by r/alpha"), (alpha * r, "scaled by alpha·r"),
                        (alpha, "scaled by alpha")):
        if scale != alpha / r and near(x @ W0.T + scale * update):
            return f"the update is {what}; LoRA scales B·A·x by alpha / r."
    if near(update * alpha / r):
        return "that is the update alone; add the frozen layer's output W0·x."
    if dropped is not None:
        if near(x @ W0.T + alpha / r * (x @ A.T) @ B.T):
            return ("in training (this case) dropout must act on the update's input: call `dropout(x)` once and "
                    "feed that to A.")
        if near(dropped @ W0.T + alpha / r * update):
            return "dropout belongs to the LoRA branch only: the frozen W0 sees x unchanged."
    return "expected W0·x + (alpha/r)·B·(A·dropout(x)) for each row x (x is (batch, in), A (r, in), B (out, r))."


def check_lora_forward(fn: Callable, lora_layer: nn.Module, adapter: str = "default") -> Callable:
    """Exercise 7: ``fn(x, W0, A, B, alpha, r, dropout)`` → the adapted layer's output, compared
    with peft's own ``lora.Linear4bit`` on the same input: in eval mode (dropout off) for three
    alphas, and in train mode with the dropout mask peft drew (replayed). The tolerance is the rounding
    bound of the dtype the layer computes in (:func:`reclor_lab.lora.lora_error_bound`)."""
    import bitsandbytes.functional as bnbf

    from reclor_lab.cpu4bit import layer_compute_dtype
    from reclor_lab.lora import lora_error_bound

    base = lora_layer.get_base_layer()
    device = base.weight.device
    W0 = bnbf.dequantize_4bit(base.weight.data, base.weight.quant_state).float().cpu()
    out_features, in_features = W0.shape
    r = int(lora_layer.r[adapter])
    a_weight, b_weight = lora_layer.lora_A[adapter].weight, lora_layer.lora_B[adapter].weight
    dropout = lora_layer.lora_dropout[adapter]
    p = float(getattr(dropout, "p", 0.0))
    layer_dtype = layer_compute_dtype(base)
    g = torch.Generator().manual_seed(7)
    A = torch.randn(r, in_features, generator=g) / in_features ** 0.5
    B = torch.randn(out_features, r, generator=g) / r ** 0.5  # not zero: as if trained
    x = torch.randn(3, in_features, generator=g)
    cases = [(f"eval mode, alpha = {f * r:g}, r = {r}", f * r, False) for f in _ALPHA_FACTORS]
    cases.append((f"train mode (dropout p = {p:g} on), alpha = {r}, r = {r}", float(r), True))

    def peft_output(alpha: float, training: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """peft's output, and in training the dropped-out input its adapter saw."""
        lora_layer.scaling[adapter] = alpha / r
        lora_layer.train(training)
        torch.manual_seed(seed)
        seen: list[torch.Tensor] = []
        hook = dropout.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().float().cpu()))
        try:
            with torch.no_grad():
                y = lora_layer(x.to(device)).float().cpu()
        finally:
            hook.remove()
        return y, (seen[0] if training else None)

    def test(fn: Callable) -> None:
        saved = (a_weight.detach().clone(), b_weight.detach().clone(), lora_layer.scaling[adapter],
                 lora_layer.training, torch.get_rng_state())
        try:
            with torch.no_grad():
                a_weight.copy_(A)
                b_weight.copy_(B)
            for k, (what, alpha, training) in enumerate(cases):
                want, dropped = peft_output(alpha, training, seed=100 + k)
                dropout.train(training)  # in eval mode the layer's own dropout: the identity
                given = _ReplayDropout(dropped, p) if training else dropout
                try:
                    got = fn(x.clone(), W0.clone(), A.clone(), B.clone(), alpha, r, given)
                except RuntimeError as e:
                    if "shape" in str(e) or "size" in str(e):
                        raise _Fail(f"for {what} a matmul's shapes do not fit ({_short(str(e), 80)}; A and B "
                                    f"swapped?): x is "
                                    f"(batch, in) = {tuple(x.shape)}, A is (r, in) = {tuple(A.shape)}, B is "
                                    f"(out, r) = {tuple(B.shape)}; y is (batch, out).") from None
                    raise
                if not isinstance(got, torch.Tensor):
                    raise _Fail(f"for {what} it returned {type(got).__name__}; return the output tensor.")
                got = got.detach().float().cpu()
                if got.shape != want.shape:
                    raise _Fail(f"for {what} it returned shape {tuple(got.shape)}; the layer gives "
                                f"(batch, out) = {tuple(want.shape)}.")
                scale_x = x / (1 - p) if training else x  # dropout scales what it keeps by 1/(1-p)
                bound = lora_error_bound(scale_x, W0, A, B, alpha / r, layer_dtype)
                if not bool(((got.double() - want.double()).abs() <= bound).all()):
                    raise _Fail(f"for {what} the output differs from peft's layer beyond rounding: "
                                f"{_lora_hint(got, x, W0, A, B, alpha, r, dropped, bound)}")
        finally:
            with torch.no_grad():
                a_weight.copy_(saved[0])
                b_weight.copy_(saved[1])
            lora_layer.scaling[adapter] = saved[2]
            lora_layer.train(saved[3])
            torch.set_rng_state(saved[4])

    return _run(NUMBER["lora_forward"], fn, reference_lora_forward, test)


# --- 8. QLoRA memory of Llama-2-7B --------------------------------------------------------------------

#: The exercise's shapes are the planner's (:class:`reclor_lab.shapes.ModelShape`): it reads
#: ``layers``, ``hidden``, ``intermediate``, ``heads`` and ``vocab``.
LLAMA2_7B = LLAMA2_7B_SHAPE
LLAMA2_13B = ModelShape(layers=40, hidden=5120, intermediate=13824, heads=40, kv_heads=40, vocab=32000)
#: Bits one NF4 weight costs with double quantization: the 4-bit code, an 8-bit absmax per block
#: of 64, and one fp32 scale per 256 absmaxes.
NF4_DQ_BITS = nf4_bytes_per_param(double_quant=True) * 8
#: Bytes per trained parameter with AdamW: the fp32 weight, its fp32 gradient, AdamW's two fp32
#: moments (m and v).
TRAINED_BYTES = 4 + 4 + 4 + 4
#: Bytes of the kept non-quantized weights (embeddings, norms, head): fp32, because peft's
#: ``prepare_model_for_kbit_training`` casts them up for stable training.
KEPT_BYTES = 4
#: Activation bytes one decoder layer keeps for backward, per sequence of length s: s·(34·h + 5·a·s)
#: in 16-bit (Korthikanti et al. 2022, "Reducing Activation Recomputation", without recompute).
ACT_PER_TOKEN_HIDDEN, ACT_ATTENTION = 34, 5
#: With gradient checkpointing a layer keeps only its input: s·h numbers in bf16.
CHECKPOINT_BYTES = 2


def _memory_terms(shape: ModelShape, batch_size: int, seq_len: int, r: int) -> tuple[int, int, int, int]:
    """The counts the memory estimate is made of: 4-bit weights, kept (non-4-bit) weights, LoRA
    parameters, and one layer's activation bytes without checkpointing."""
    h = shape.hidden
    quantized = shape.quantized_params
    kept = shape.sixteen_bit_params + shape.head_params
    lora = lora_params(shape, r)
    per_layer = batch_size * seq_len * (ACT_PER_TOKEN_HIDDEN * h + ACT_ATTENTION * shape.heads * seq_len)
    return quantized, kept, lora, per_layer


def reference_qlora_memory(shape: ModelShape, batch_size: int, seq_len: int, r: int,
                           checkpointing: bool) -> dict[str, float]:
    """Bytes of a QLoRA fine-tune of a Llama-style 4-way classifier, in three parts.

    * ``weights``: the 7 projections of each layer in NF4 with double quantization
      (:data:`NF4_DQ_BITS` each); embeddings, 2 norms a layer + the final one and the head
      ``score`` (4 × hidden) in fp32. No ``lm_head``: a classifier never loads it.
    * ``trained``: the LoRA matrices of all 7 projections (r·(in + out) each) and the head, at
      :data:`TRAINED_BYTES` each (weight, gradient, AdamW's m and v). The head's weight is
      counted in ``weights`` as well (a few KB).
    * ``activations``: per layer ``b·s·(34·h + 5·a·s)`` bytes without checkpointing, all layers
      kept; with checkpointing each layer keeps its input (``b·s·h`` bf16) and one layer's full
      activations exist at a time while backward recomputes it.

    >>> m = reference_qlora_memory(LLAMA2_7B, 1, 640, 16, checkpointing=True)
    >>> round(m["weights"] / 2**30, 2), round(m["trained"] / 2**30, 2), round(m["activations"] / 2**30, 2)
    (3.6, 0.6, 0.3)
    """
    h, L = shape.hidden, shape.layers
    quantized, kept, lora, per_layer = _memory_terms(shape, batch_size, seq_len, r)
    if checkpointing:
        activations = L * batch_size * seq_len * h * CHECKPOINT_BYTES + per_layer
    else:
        activations = L * per_layer
    return {
        "weights": quantized * NF4_DQ_BITS / 8 + kept * KEPT_BYTES,
        "trained": (lora + NUM_LABELS * h) * TRAINED_BYTES,
        "activations": float(activations),
    }


_MEMORY_CASES: tuple[tuple[str, ModelShape, int, int, int, bool], ...] = (
    ("Llama-2-7B, batch 1 × 640 tokens, r=16, checkpointing on", LLAMA2_7B, 1, 640, 16, True),
    ("Llama-2-7B, batch 1 × 640 tokens, r=16, checkpointing off", LLAMA2_7B, 1, 640, 16, False),
    ("Llama-2-7B, batch 8 × 256 tokens, r=64, checkpointing on", LLAMA2_7B, 8, 256, 64, True),
    ("Llama-2-13B, batch 2 × 512 tokens, r=8, checkpointing off", LLAMA2_13B, 2, 512, 8, False),
)


def _memory_hint(part: str, got: float, shape: ModelShape, b: int, s: int, r: int, ckpt: bool) -> str:
    want = reference_qlora_memory(shape, b, s, r, ckpt)[part]
    for unit, size in (("GiB", 2**30), ("GB", 1e9), ("MiB", 2**20), ("MB", 1e6)):
        if math.isclose(got, want / size, rel_tol=1e-4):
            return f"that is the right amount in {unit}; return bytes (the notebook divides by 2**30 to print GiB)."
    hint = {"weights": _weights_part_hint, "trained": _trained_part_hint}.get(part, _activations_hint)
    return hint(got, shape, b, s, r, ckpt)


def _near(got: float, x: float) -> bool:
    return math.isclose(got, x, rel_tol=1e-6)


def _weights_part_hint(got: float, shape: ModelShape, b: int, s: int, r: int, ckpt: bool) -> str:
    quantized, kept, _, _ = _memory_terms(shape, b, s, r)
    want = reference_qlora_memory(shape, b, s, r, ckpt)["weights"]
    if _near(got, want + shape.vocab * shape.hidden * KEPT_BYTES) or _near(got, want + shape.vocab * shape.hidden * 2):
        return "it counts an lm_head: a 4-way classifier never loads it (transformers drops it)."
    if _near(got, quantized * 0.5 + kept * KEPT_BYTES):
        return ("4 bits flat misses the scales: each block of 64 also stores an 8-bit absmax, and every 256 "
                "absmaxes one fp32 scale.")
    if _near(got, quantized * 4.5 / 8 + kept * KEPT_BYTES):
        return ("4.5 bits is NF4 without double quantization (an fp32 absmax per 64); with it the absmax "
                "is 8-bit plus one fp32 scale per 256 blocks.")
    if _near(got, quantized * NF4_DQ_BITS / 8 + kept * 2):
        return ("the embeddings, norms and head are fp32 while training: prepare_model_for_kbit_training "
                "casts every weight that is not 4-bit up.")
    return ("weights = the 7 projections of every layer at 4 + 8/64 + 32/(64·256) bits, plus embeddings, "
            "norms (2 a layer + 1) and the 4-way head in fp32.")


def _trained_part_hint(got: float, shape: ModelShape, b: int, s: int, r: int, ckpt: bool) -> str:
    _, _, lora, _ = _memory_terms(shape, b, s, r)
    trained = lora + NUM_LABELS * shape.hidden
    for per, what in ((4, "only the weights"), (8, "weights and gradients but no optimizer state"),
                      (12, "AdamW with one state; it keeps two (m and v)")):
        if _near(got, trained * per) or _near(got, lora * per):
            return f"that counts {what}: each trained parameter has an fp32 weight, gradient, m and v."
    if _near(got, lora * TRAINED_BYTES):
        return "the head `score` trains too (4 × hidden parameters with their gradient and AdamW states)."
    return "LoRA's r·(in + out) for each of the 7 projections of each layer, plus the head, at 16 bytes each."


def _activations_hint(got: float, shape: ModelShape, b: int, s: int, r: int, ckpt: bool) -> str:
    h, L = shape.hidden, shape.layers
    _, _, _, per_layer = _memory_terms(shape, b, s, r)
    inputs = L * b * s * h * CHECKPOINT_BYTES  # what checkpointing keeps: each layer's input
    want = reference_qlora_memory(shape, b, s, r, ckpt)["activations"]
    if ckpt and _near(got, L * per_layer):
        return ("that is without checkpointing: with it each layer keeps only its input (b·s·h in bf16), and "
                "backward recomputes one layer's activations at a time.")
    if ckpt and _near(got, inputs):
        return "the layers' inputs are right; add the one layer whose activations backward recomputes."
    if not ckpt and _near(got, inputs + per_layer):
        return "that is with checkpointing; without it every layer keeps all of b·s·(34·h + 5·a·s) bytes."
    if _near(got, want / b) or _near(got, want / s):
        return "activations grow with the batch size and the sequence length: both are in the formula."
    return "per layer b·s·(34·h + 5·a·s) bytes; all L layers without checkpointing."


def check_qlora_memory(fn: Callable[..., dict]) -> Callable:
    """Exercise 8: ``fn(shape, batch_size, seq_len, r, checkpointing)`` → bytes of ``weights``,
    ``trained`` and ``activations``, as :func:`reference_qlora_memory` (two model shapes, so the
    numbers cannot be copied)."""

    def test(fn: Callable) -> None:
        for what, shape, b, s, r, ckpt in _MEMORY_CASES:
            got = fn(shape, b, s, r, ckpt)
            if not isinstance(got, dict):
                raise _Fail(f"for {what} it returned {type(got).__name__}; return a dict with 'weights', "
                            "'trained' and 'activations' (bytes).")
            want = reference_qlora_memory(shape, b, s, r, ckpt)
            if set(got) != set(want):
                raise _Fail(f"for {what} it returned the keys {sorted(got)}; return exactly {sorted(want)}.")
            for part in ("weights", "trained", "activations"):
                value = got[part]
                if isinstance(value, torch.Tensor):
                    value = value.item()
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise _Fail(f"for {what} '{part}' is {type(value).__name__}; return a number of bytes.")
                if not math.isclose(float(value), want[part], rel_tol=1e-6):
                    raise _Fail(f"for {what} '{part}' is {float(value) / 2**30:.3f} GiB: "
                                f"{_memory_hint(part, float(value), shape, b, s, r, ckpt)}")

    return _run(NUMBER["qlora_memory"], fn, reference_qlora_memory, test)


# --- 14. a LoRALinear module ----------------------------------------------------------------------------------

class ReferenceLoRALinear(nn.Module):
    """``base(x) + (alpha / r) · dropout(x) Aᵀ Bᵀ`` around a frozen linear layer (``nn.Linear`` or
    bitsandbytes' ``Linear4bit``), with ``A`` (r × in) and ``B`` (out × r) as parameters,
    initialised as peft does (A Kaiming-uniform, B zeros): the notebook's solution of exercise 14."""

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.A = nn.Parameter(torch.empty(r, base.in_features))
        self.B = nn.Parameter(torch.zeros(base.out_features, r))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout)
        self.scaling = alpha / r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (self.dropout(x) @ self.A.T @ self.B.T) * self.scaling


def _as_base(base) -> nn.Module:
    """The base layer of a case: a module as given, or a fresh trainable ``nn.Linear`` from
    ``{"weight": …, "bias": …}`` (how a plain layer crosses the grading sandbox's wall)."""
    if isinstance(base, nn.Module):
        return base
    out_features, in_features = base["weight"].shape
    layer = nn.Linear(in_features, out_features, bias=base.get("bias") is not None)
    with torch.no_grad():
        layer.weight.copy_(base["weight"])
        if base.get("bias") is not None:
            layer.bias.copy_(base["bias"])
    return layer


def _factor(layer: nn.Module, name: str) -> torch.Tensor:
    """The module's ``A`` or ``B``: a parameter (or tensor), or an ``nn.Linear`` holding it as ``.weight``."""
    value = getattr(layer, name, None)
    if isinstance(value, nn.Module) and isinstance(getattr(value, "weight", None), torch.Tensor):
        value = value.weight
    if not isinstance(value, torch.Tensor):
        raise _Fail(f"your LoRALinear has no tensor `{name}` (found {type(value).__name__}); keep the two factors "
                    "as `self.A` (r × in) and `self.B` (out × r), each an nn.Parameter.")
    return value


def lora_linear_facts(cls: Callable) -> Callable:
    """What exercise 14's check compares, for a ``LoRALinear`` class: a function
    ``facts(base, r, alpha, dropout, A, B, x, upstream, seed)`` that builds ``cls(base, r, alpha,
    dropout)`` and returns plain data: the factors' shapes and starting values, which parameters
    train, the output at the start, then with ``A`` and ``B`` set: the eval output, the gradients
    of ``A``, ``B`` and ``x`` for the loss ``(y · upstream).sum()``, and the train-mode output
    after ``torch.manual_seed(seed)``. The grader calls it inside the sandbox; the answer is
    compared outside with the same facts of peft's layer."""

    def facts(base, r, alpha, dropout, A, B, x, upstream, seed) -> dict:
        base = _as_base(base)
        device = next(base.parameters()).device
        layer = cls(base, r, alpha, dropout)
        if not isinstance(layer, nn.Module):
            raise _Fail(f"LoRALinear(base, r, alpha, dropout) made a {type(layer).__name__}; write a module: "
                        "`class LoRALinear(nn.Module)`.")
        layer = layer.to(device)
        A_, B_ = _factor(layer, "A"), _factor(layer, "B")
        out: dict = {"A_shape": list(A_.shape), "B_shape": list(B_.shape),
                     "A0": A_.detach().float().cpu().clone(), "B0": B_.detach().float().cpu().clone(),
                     "base_trainable": [n for n, p in base.named_parameters() if p.requires_grad],
                     "trainable": [[n, list(p.shape)] for n, p in layer.named_parameters() if p.requires_grad]}
        if A_.shape != A.shape or B_.shape != B.shape:
            return out  # the check stops at the shapes
        x, upstream = x.to(device), upstream.to(device)
        layer.eval()
        with torch.no_grad():
            out["y0"] = layer(x).float().cpu()
        with torch.no_grad():
            A_.copy_(A)
            B_.copy_(B)
        x_in = x.clone().requires_grad_(True)
        y = layer(x_in)
        (y.float() * upstream).sum().backward()
        out["y"] = y.detach().float().cpu()
        for name, t in (("grad_A", A_), ("grad_B", B_), ("grad_x", x_in)):
            out[name] = None if t.grad is None else t.grad.detach().float().cpu().clone()
        layer.train()
        torch.manual_seed(seed)
        with torch.no_grad():
            out["y_train"] = layer(x).float().cpu()
        return out

    return facts


def _peft_layer(base: nn.Module, r: int, alpha: float, dropout: float) -> nn.Module:
    """peft's own LoRA layer around ``base`` (``lora.Linear``, or ``lora.Linear4bit`` on a 4-bit base),
    made as ``get_peft_model`` makes it for a model's layer."""
    from peft import LoraConfig, get_peft_model

    class Holder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = base

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(x)

    holder = Holder()
    holder.is_loaded_in_4bit = type(base).__name__ == "Linear4bit"  # what peft dispatches on
    with torch.random.fork_rng(devices=[]):  # peft's own init draws: not from the caller's stream
        model = get_peft_model(holder, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                                                  target_modules=["proj"]))
    return model.base_model.model.proj


def reference_lora_linear_facts(base, r: int, alpha: float, dropout: float, A: torch.Tensor, B: torch.Tensor,
                                x: torch.Tensor, upstream: torch.Tensor, seed: int) -> dict:
    """:func:`lora_linear_facts` of peft's layer on the same base and inputs, plus what the
    comparison needs: the inputs, the frozen weight ``W0`` (dequantized) and bias, the dtype the
    layer computes in, the base layer's own output and the dropped-out input peft's adapter saw."""
    import bitsandbytes.functional as bnbf

    from reclor_lab.cpu4bit import layer_compute_dtype

    base = _as_base(base)
    device = next(base.parameters()).device
    layer = _peft_layer(base, r, alpha, dropout)
    a_weight, b_weight = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    four_bit = type(base).__name__ == "Linear4bit"
    W0 = (bnbf.dequantize_4bit(base.weight.data, base.weight.quant_state) if four_bit else base.weight).detach()
    out: dict = {"A_shape": list(a_weight.shape), "B_shape": list(b_weight.shape),
                 "A0": a_weight.detach().float().cpu().clone(), "B0": b_weight.detach().float().cpu().clone(),
                 "base_trainable": [], "trainable": [["A", [r, W0.shape[1]]], ["B", [W0.shape[0], r]]],
                 "inputs": {"r": r, "alpha": alpha, "dropout": dropout, "A": A, "B": B, "x": x, "upstream": upstream},
                 "W0": W0.float().cpu(), "bias": None if base.bias is None else base.bias.detach().float().cpu(),
                 "dtype": str(layer_compute_dtype(base) if four_bit else base.weight.dtype).replace("torch.", "")}
    xd, upstream_d = x.to(device), upstream.to(device)
    layer.eval()
    with torch.no_grad():
        out["y0"] = layer(xd).float().cpu()
        out["base_out"] = base(xd).float().cpu()
        a_weight.copy_(A)
        b_weight.copy_(B)
    x_in = xd.clone().requires_grad_(True)
    y = layer(x_in)
    (y.float() * upstream_d).sum().backward()
    out["y"] = y.detach().float().cpu()
    out.update(grad_A=a_weight.grad.float().cpu(), grad_B=b_weight.grad.float().cpu(), grad_x=x_in.grad.float().cpu())
    layer.train()
    seen: list[torch.Tensor] = []
    hook = layer.lora_dropout["default"].register_forward_hook(lambda _m, _i, o: seen.append(o.detach().float().cpu()))
    torch.manual_seed(seed)
    try:
        with torch.no_grad():
            out["y_train"] = layer(xd).float().cpu()
            out["base_dropped"] = base(seen[0].to(device, xd.dtype)).float().cpu()
    finally:
        hook.remove()
    out["dropped"] = seen[0]
    return out


def _bounds(want: dict) -> dict[str, torch.Tensor]:
    """Rounding bounds (elementwise) of each compared tensor: two sides computed in the layer's
    dtype with fp32 accumulation, as :func:`reclor_lab.lora.lora_error_bound` derives them; the
    gradients are the same kind of sums (over out + r, out + batch and in + batch terms)."""
    from reclor_lab.lora import lora_error_bound, rounding_gamma

    i = want["inputs"]
    dtype = getattr(torch, want["dtype"])
    s, W0 = i["alpha"] / i["r"], want["W0"].double().abs()
    x = i["x"].reshape(-1, W0.shape[1]).double().abs()
    g = i["upstream"].reshape(-1, W0.shape[0]).double().abs()
    A, B = i["A"].double().abs(), i["B"].double().abs()
    bias = 0 if want["bias"] is None else want["bias"].double().abs()

    def side(n: int) -> float:
        return 2 * (rounding_gamma(4, dtype) + rounding_gamma(n + 4, torch.float32))

    n_in, n_out, r, batch = W0.shape[1], W0.shape[0], A.shape[0], x.shape[0]
    shape = want["y"].shape
    y = (lora_error_bound(i["x"].reshape(-1, n_in), want["W0"], i["A"], i["B"], s, dtype) + side(n_in + r + 1) * bias)
    x_train = (i["x"] / (1 - i["dropout"])).reshape(-1, n_in) if i["dropout"] < 1 else i["x"].reshape(-1, n_in)
    y_train = lora_error_bound(x_train, want["W0"], i["A"], i["B"], s, dtype) + side(n_in + r + 1) * bias
    y0 = side(n_in) * (x @ W0.T + bias)
    return {"y": y.reshape(shape), "y_train": y_train.reshape(shape), "y0": y0.reshape(shape),
            "grad_x": (side(n_out + r) * (g @ W0 + s * (g @ B) @ A)).reshape(want["grad_x"].shape),
            "grad_A": side(n_out + batch) * s * (g @ B).T @ x,
            "grad_B": side(n_in + batch) * s * g.T @ (x @ A.T)}


def _within(got, want: torch.Tensor, bound: torch.Tensor) -> bool:
    return (isinstance(got, torch.Tensor) and got.shape == want.shape
            and bool(((got.double() - want.double()).abs() <= bound).all()))


def _module_output_hint(got: torch.Tensor, want: dict, bound: torch.Tensor) -> str:
    """Which typical mistake a wrong eval output of the module is."""
    i = want["inputs"]
    r, alpha = i["r"], i["alpha"]
    base_out, update = want["base_out"], (i["x"] @ i["A"].T) @ i["B"].T

    def near(y: torch.Tensor) -> bool:
        return _within(got, y, bound + 1e-4 * y.abs().double())

    if near(base_out):
        return "that is base(x) alone: the LoRA update (alpha/r)·dropout(x)·Aᵀ·Bᵀ is missing."
    if alpha // r != alpha / r and near(base_out + (alpha // r) * update):
        return "alpha // r is integer division; the scale is the float alpha / r."
    for scale, what in ((1.0, "unscaled"), (r / alpha, "scaled by r/alpha"), (alpha, "scaled by alpha"),
                        (alpha * r, "scaled by alpha·r")):
        if scale != alpha / r and near(base_out + scale * update):
            return f"the update is {what}; scale it by alpha / r (self.scaling)."
    if near(update * alpha / r):
        return "that is the update alone; add the frozen layer's output self.base(x)."
    if want["bias"] is not None and near(i["x"] @ want["W0"].T + alpha / r * update):
        return ("the base layer's bias is missing: call self.base(x) (it adds the bias and dequantizes a 4-bit "
                "weight) rather than multiplying by its weight yourself.")
    return "expected self.base(x) + (alpha / r) · dropout(x) @ A.T @ B.T."


def _lora_linear_problem(got, want: dict) -> str | None:
    """Why the facts of a student's LoRALinear differ from peft's layer (``None``: they agree)."""
    if not isinstance(got, dict):
        return f"the check got {type(got).__name__} instead of the layer's facts."
    return _start_problem(got, want) or _output_problem(got, want) or _train_mode_problem(got, want)


def _start_problem(got: dict, want: dict) -> str | None:
    """The module as built: the factors' shapes and starting values, what is frozen and what trains."""
    r, (n_out, n_in) = want["inputs"]["r"], want["W0"].shape
    if got.get("A_shape") != [r, n_in] or got.get("B_shape") != [n_out, r]:
        shapes = f"A is {tuple(got.get('A_shape') or ())} and B {tuple(got.get('B_shape') or ())}"
        if got.get("A_shape") == [n_in, r] and got.get("B_shape") == [r, n_out]:
            return (f"{shapes}: that is rasbt's layout (x @ A @ B); here, as in peft's lora_A and lora_B weights, "
                    f"A is (r × in) = {(r, n_in)} and B (out × r) = {(n_out, r)}, and the update is "
                    "dropout(x) @ A.T @ B.T.")
        return f"{shapes}; A is (r × in) = {(r, n_in)} and B (out × r) = {(n_out, r)}."
    if got["B0"].any():
        return ("B does not start at zero: initialise it with zeros, so that B·A = 0 and the layer starts as "
                "exactly the base layer (training starts from the pretrained model).")
    if not got["A0"].any() or not bool(torch.isfinite(got["A0"]).all()):
        return ("A starts at zero (or not finite): with A = 0 and B = 0 both gradients are zero and nothing ever "
                "trains; initialise A at random, as peft does: nn.init.kaiming_uniform_(self.A, a=math.sqrt(5)).")
    if got["base_trainable"]:
        return (f"the base layer still trains ({', '.join(got['base_trainable'])} has requires_grad=True): freeze "
                "it with base.requires_grad_(False); only A and B train.")
    if sorted(tuple(s) for _, s in got["trainable"]) != sorted([(r, n_in), (n_out, r)]):
        return (f"the trainable parameters are {[tuple(s) for _, s in got['trainable']]}: exactly A {(r, n_in)} and B "
                f"{(n_out, r)} must train, each registered as an nn.Parameter (so that .parameters() and the "
                "optimizer find them).")
    return None


def _output_problem(got: dict, want: dict) -> str | None:
    """The eval-mode output (with A and B set, and at the start) and the gradients."""
    bounds = _bounds(want)
    if not _within(got.get("y"), want["y"], bounds["y"]):
        hint = _module_output_hint(got["y"], want, bounds["y"])
        return f"the output differs from peft's layer beyond rounding: {hint}"
    if not _within(got.get("y0"), want["y0"], bounds["y0"]):
        return "at the start (B = 0) the layer must return exactly base(x); it did not."
    for name, what in (("grad_A", "A"), ("grad_B", "B"), ("grad_x", "the input x")):
        if got.get(name) is None:
            return (f"{what} got no gradient: use A and B themselves in forward (no torch.no_grad(), no .detach(), "
                    "no copy into a new tensor).")
        if not _within(got[name], want[name], bounds[name]):
            return (f"the gradient of {what} differs from peft's layer beyond rounding (the output agrees): something "
                    "in forward is cut from the graph or computed outside it.")
    return None


def _train_mode_problem(got: dict, want: dict) -> str | None:
    """The train-mode output under the seed peft's layer drew its dropout mask with."""
    i, bound = want["inputs"], _bounds(want)["y_train"]
    if _within(got.get("y_train"), want["y_train"], bound):
        return None
    if _within(got.get("y_train"), want["y"], _bounds(want)["y"]):
        return ("in train mode the output is the eval-mode output: dropout is missing on the LoRA path "
                "(self.dropout = nn.Dropout(dropout), applied to x on its way into A).")
    both = want["base_dropped"] + i["alpha"] / i["r"] * (want["dropped"] @ i["A"].T) @ i["B"].T
    if _within(got.get("y_train"), both, bound + 1e-4 * both.abs().double()):
        return "dropout belongs to the LoRA path only: the frozen base layer sees x unchanged."
    return ("in train mode the output differs from peft's under the same seed: apply nn.Dropout(dropout) "
            "once, to x on its way into A (torch's dropout then draws the very mask peft's layer drew).")


#: The 4-bit cases' rank, dropout and alphas (alpha = r, 4r and r/2: the scale cannot hide).
_LINEAR_R, _LINEAR_P = 8, 0.25


def _lora_linear_cases(base_layer: nn.Module) -> list[tuple[str, tuple]]:
    """The check's cases: the 4-bit base at three alphas, and a plain ``nn.Linear`` with a bias
    (a fresh, trainable one: freezing it is the student's job)."""
    n_out, n_in = base_layer.out_features, base_layer.in_features
    g = torch.Generator().manual_seed(14)
    cases = []
    for k, f in enumerate(_ALPHA_FACTORS):
        r = _LINEAR_R
        A = torch.randn(r, n_in, generator=g) / n_in ** 0.5
        B = torch.randn(n_out, r, generator=g) / r ** 0.5
        x, up = torch.randn(3, n_in, generator=g), torch.randn(3, n_out, generator=g)
        cases.append((f"the 4-bit q_proj ({n_out}×{n_in}), r = {r}, alpha = {f * r:g}, dropout {_LINEAR_P}",
                      (base_layer, r, f * r, _LINEAR_P, A, B, x, up, 100 + k)))
    plain = {"weight": torch.randn(12, 24, generator=g) / 24 ** 0.5, "bias": torch.randn(12, generator=g)}
    A, B = torch.randn(4, 24, generator=g) / 24 ** 0.5, torch.randn(12, 4, generator=g) / 2
    cases.append(("a plain nn.Linear(24, 12) with a bias, r = 4, alpha = 8, dropout 0.1",
                  (plain, 4, 8.0, 0.1, A, B, torch.randn(2, 3, 24, generator=g), torch.randn(2, 3, 12, generator=g),
                   200)))
    return cases


def check_lora_linear(cls: Callable, base_layer: nn.Module) -> Callable:
    """Exercise 14: ``LoRALinear(base, r, alpha, dropout)``, a module, compared with peft's own layer
    on the same base: the factors' shapes, B = 0 and A ≠ 0 at the start, the base frozen and only A
    and B trainable, then with A and B set the output (three alphas), the gradients of A, B and the
    input, and the train-mode output under the same seed, each within the rounding bound of the
    dtype the layer computes in. A 4-bit base (``base_layer``) and a plain ``nn.Linear`` with a bias."""
    cases = _lora_linear_cases(base_layer)

    def test(cls: Callable) -> None:
        # the grader's stand-ins (its recorder, its replay of the sandbox's answers) hand the facts in
        facts = cls if getattr(cls, "gives_facts", False) else lora_linear_facts(cls)
        state = torch.get_rng_state()
        try:
            for what, args in cases:
                got = facts(*args)
                want = reference_lora_linear_facts(*args)
                problem = _lora_linear_problem(got, want)
                if problem:
                    raise _Fail(f"for {what}: {problem}")
        finally:
            torch.set_rng_state(state)

    return _run(NUMBER["LoRALinear"], cls, ReferenceLoRALinear, test)


# --- 15. the QLoRA configuration --------------------------------------------------------------------------------

#: The reference's LoRA settings (the presets' defaults), and the layers it adapts: every 4-bit linear
#: layer of a Llama decoder layer, never the head.
QLORA_R, QLORA_ALPHA, QLORA_DROPOUT = 16, 16, 0.05
#: The compute dtype the check builds the model in: not a CPU's float32, so that a function that
#: ignores its ``compute_dtype`` argument shows (loading in bf16 works on any machine; nothing runs).
QLORA_CHECK_DTYPE = "bfloat16"


def reference_qlora_model(model_path: str, compute_dtype: torch.dtype):
    """The kit's QLoRA model of the reference solution, built from ``model_path``: ``load_model``
    (NF4, double quantization, ``compute_dtype``, 4 labels, pad = eos) then ``inject_lora`` (r 16,
    alpha 16, dropout 0.05 on every 4-bit linear but the head, SEQ_CLS): what exercise 15 writes
    with transformers' and peft's own calls."""
    from reclor_lab.config import get_preset
    from reclor_lab.lora import inject_lora
    from reclor_lab.model import load_model, load_tokenizer

    cfg = get_preset("tiny", model_name_or_path=str(model_path),
                     compute_dtype=str(compute_dtype).removeprefix("torch."))
    return inject_lora(load_model(cfg, load_tokenizer(cfg.model_name_or_path)), cfg)


def _leaf(name: str) -> str:
    """A module's name in the model as loaded, whatever peft wrapped it in."""
    name = name.removeprefix("base_model.model.")
    for part in (".base_layer", ".original_module", ".modules_to_save.default"):
        name = name.replace(part, "")
    return name


def _module_facts(model: nn.Module) -> dict[str, dict]:
    """Per linear layer of the loaded model (by its name before peft): its class, 4-bit quant type,
    double quantization, compute dtype, its LoRA adapter ``[r, alpha, dropout]`` (or None), and
    whether any of its own weights trains (the head, trained in full)."""
    layers: dict[str, dict] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and "lora_" not in name:
            fact = layers.setdefault(_leaf(name), _linear_facts(m))
            fact["trains"] = fact["trains"] or any(p.requires_grad for p in m.parameters(recurse=False))
    for name, m in model.named_modules():
        if hasattr(m, "base_layer") and _leaf(name) in layers:
            layers[_leaf(name)]["lora"] = _adapter_facts(m)
    return layers


def _linear_facts(m: nn.Linear) -> dict:
    state = getattr(m.weight, "quant_state", None)
    if state is None:
        return {"class": type(m).__name__, "quant_type": None, "nested": None, "compute_dtype": None,
                "lora": None, "trains": False}
    return {"class": type(m).__name__, "quant_type": getattr(state, "quant_type", None),
            "nested": bool(getattr(state, "nested", False)),
            "compute_dtype": str(getattr(m, "compute_dtype", None)).removeprefix("torch."), "lora": None,
            "trains": False}


def _adapter_facts(m: nn.Module) -> list | None:
    """``[r, alpha, dropout]`` of a peft LoRA layer's (first) adapter, or None."""
    r, alpha, drop = (getattr(m, k, None) for k in ("r", "lora_alpha", "lora_dropout"))
    if not isinstance(r, dict) or not r:
        return None
    key = next(iter(r))
    dropout = drop[key] if isinstance(drop, nn.ModuleDict) and key in drop else None
    return [int(r[key]), float(alpha[key]), float(getattr(dropout, "p", 0.0))]


def qlora_model_facts(fn: Callable) -> Callable:
    """What exercise 15's check compares, for a ``qlora_model(model_path, compute_dtype)``: a
    function ``facts(model_path, dtype_name)`` that builds the model and returns plain data: per
    linear layer its class, quant type, double quantization, compute dtype, LoRA ``[r, alpha,
    dropout]`` and whether it trains; the head's outputs, the pad and eos ids, the peft task type and
    the trainable parameters (a 4-bit weight counted as the weights it holds, as peft counts). The
    grader calls it inside the sandbox; the answer is compared outside with the kit's model's."""
    from reclor_lab.lora import without_peft_noise
    from reclor_lab.model import logical_numel
    from reclor_lab.runs.loading import _load_report

    def facts(model_path: str, dtype_name: str) -> dict:
        # transformers' report of the new head (expected) and peft's own deprecation notices stay quiet
        with _load_report(False), without_peft_noise():
            model = fn(model_path, getattr(torch, dtype_name))
        if not isinstance(model, nn.Module):
            raise _Fail(f"qlora_model returned a {type(model).__name__}; return the model that get_peft_model "
                        "made (a PeftModelForSequenceClassification).")
        inner = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
        config = getattr(inner, "config", None)
        peft_config = getattr(model, "peft_config", None)
        task = getattr(peft_config.get("default"), "task_type", None) if isinstance(peft_config, dict) else None
        seen: set[int] = set()
        trainable = 0
        for p in model.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                trainable += logical_numel(p)
        layers = _module_facts(model)
        return {"model": type(model).__name__, "peft": isinstance(peft_config, dict),
                "task_type": None if task is None else str(getattr(task, "value", task)),
                "num_labels": getattr(config, "num_labels", None),
                "head_out": _head_out(inner),
                "pad_token_id": getattr(config, "pad_token_id", None),
                "eos_token_id": getattr(config, "eos_token_id", None),
                "layers": layers, "trainable": trainable}

    return facts


def _head_out(model: nn.Module) -> int | None:
    head = getattr(model, "score", None)
    head = getattr(head, "original_module", head)
    return getattr(head, "out_features", None)


#: The kit's facts per (model folder, compute dtype): one load each per process, never per student.
_QLORA_FACTS: dict[tuple[str, str], dict] = {}


def reference_qlora_model_facts(model_path: str, dtype_name: str) -> dict:
    """:func:`qlora_model_facts` of the kit's own model (:func:`reference_qlora_model`), built once per
    folder and dtype (its trainable count equals :func:`reclor_lab.lora.predicted_lora_params`'s
    prediction from the shapes: a test holds them so)."""
    key = (str(model_path), dtype_name)
    if key not in _QLORA_FACTS:
        with torch.random.fork_rng(devices=[]):  # the adapters' init draws: not from the caller's stream
            _QLORA_FACTS[key] = qlora_model_facts(reference_qlora_model)(model_path, dtype_name)
    return _QLORA_FACTS[key]


def _adapted_kinds(layers: dict[str, dict]) -> set[str]:
    return {name.split(".")[-1] for name, f in layers.items() if f["lora"] is not None}


def _qlora_model_problem(got, want: dict) -> str | None:
    """Why the facts of a student's QLoRA model differ from the kit's (``None``: they agree)."""
    if not isinstance(got, dict) or not isinstance(got.get("layers"), dict):
        return f"the check got {type(got).__name__} instead of the model's facts."
    if not got["peft"]:
        return ("the model has no adapters: return what get_peft_model(model, LoraConfig(...)) returns, not the "
                "model from from_pretrained.")
    if got["head_out"] is None:
        return ("the model has no classification head `score`: load it with AutoModelForSequenceClassification "
                "(num_labels=4), not as a language model.")
    if got["num_labels"] != NUM_LABELS or got["head_out"] != NUM_LABELS:
        return (f"the head has {got['head_out']} outputs (num_labels {got['num_labels']}): pass num_labels=4 to "
                "AutoModelForSequenceClassification.from_pretrained, one logit per option A–D.")
    if set(got["layers"]) != set(want["layers"]):
        return (f"the model's linear layers differ from the kit's ({len(got['layers'])} against "
                f"{len(want['layers'])}): load the folder you are given with AutoModelForSequenceClassification.")
    return (_quantization_problem(got["layers"], want["layers"]) or _head_problem(got["layers"]["score"])
            or _lora_problem(got["layers"], want["layers"]) or _pad_problem(got, want)
            or _count_problem(got, want))


def _quantization_problem(got: dict[str, dict], want: dict[str, dict]) -> str | None:
    """The 4-bit layers: loaded in 4 bits, NF4, double quantization, the compute dtype asked for."""
    four_bit = [n for n, f in want.items() if f["class"] == "Linear4bit"]
    plain = [n for n in four_bit if got[n]["class"] != "Linear4bit"]
    if plain:
        return (f"{len(plain)} layers are not 4-bit ({plain[0]} is {got[plain[0]]['class']}): pass "
                "quantization_config=BitsAndBytesConfig(load_in_4bit=True, …) to from_pretrained.")
    for n in four_bit:
        g, w = got[n], want[n]
        if g["quant_type"] != w["quant_type"]:
            return (f"{n} is quantized as {g['quant_type']!r}: use bnb_4bit_quant_type='nf4' (NormalFloat4, whose "
                    "16 levels sit at a normal distribution's quantiles, where the weights are; 'fp4' is a "
                    "float grid, and bitsandbytes' default).")
        if g["nested"] != w["nested"]:
            return (f"{n} has no double quantization: set bnb_4bit_use_double_quant=True, which quantizes the "
                    "blocks' fp32 absmax scales too (8 bits each, one fp32 scale per 256 blocks).")
        if g["compute_dtype"] != w["compute_dtype"]:
            unset = " (float32 is bitsandbytes' default when it is not set)" if g["compute_dtype"] == "float32" else ""
            return (f"{n} computes in {g['compute_dtype']}{unset}, but qlora_model was asked for "
                    f"{w['compute_dtype']}: pass bnb_4bit_compute_dtype=compute_dtype, the argument, not a "
                    "fixed dtype.")
    return None


def _head_problem(head: dict) -> str | None:
    """The head ``score``: new, so not 4-bit, not adapted, trained in full."""
    if head["class"] == "Linear4bit":
        return ("the head `score` is 4-bit: it is new (random) and trains in full, so it must stay in full "
                "precision; transformers keeps it so unless told otherwise (do not set llm_int8_skip_modules to "
                "a list without it).")
    if head["lora"] is not None:
        return ("the head `score` has a LoRA adapter: it is new (random), so it trains in full instead; leave it "
                "out of target_modules and set task_type='SEQ_CLS' (peft then trains a full copy of it).")
    if not head["trains"]:
        return ("the head `score` does not train: it starts random, so it must; task_type='SEQ_CLS' in the "
                "LoraConfig makes peft train it in full (modules_to_save).")
    return None


def _lora_problem(got: dict[str, dict], want: dict[str, dict]) -> str | None:
    """The adapters: on every 4-bit linear layer (every kind of projection), with r, alpha, dropout."""
    kinds, mine = _adapted_kinds(want), _adapted_kinds(got)
    if kinds - mine:
        return (f"no adapter on {sorted(kinds - mine)}: target_modules must name every 4-bit linear layer but "
                f"the head, {sorted(kinds)} in a Llama decoder layer.")
    extra = sorted(n for n, f in got.items() if f["lora"] is not None and want[n]["lora"] is None)
    if extra:
        return f"adapters on {extra}, which the reference leaves alone: adapt the 4-bit projections only."
    missing = sorted(n for n, f in got.items() if f["lora"] is None and want[n]["lora"] is not None)
    if missing:
        return (f"no adapter on {missing[0]} (of {len(missing)}): adapt every layer of each kind, in every decoder "
                "layer.")
    return next((_settings_problem(f["lora"], want[n]["lora"]) for n, f in got.items()
                 if f["lora"] is not None and f["lora"] != want[n]["lora"]), None)


def _settings_problem(got: list, want: list) -> str:
    """Which of r, alpha and dropout differ from the reference's."""
    (r, alpha, p), (r0, alpha0, p0) = got, want
    if (r, alpha, p) == (8, 8.0, 0.0):
        return ("r = 8, lora_alpha = 8 and lora_dropout = 0 are peft's defaults: set r=16, lora_alpha=16, "
                "lora_dropout=0.05 in the LoraConfig.")
    if r != r0:
        return f"r is {r}: the reference uses r = {r0} (with lora_alpha = {alpha0:g}: the scale alpha/r is 1)."
    if alpha != alpha0:
        return (f"lora_alpha is {alpha:g}: the reference uses {alpha0:g}, so the update's scale alpha/r is "
                f"{alpha0 / r0:g}, not {alpha / r:g}.")
    return f"lora_dropout is {p:g}: the reference uses {p0:g} on the LoRA input."


def _pad_problem(got: dict, want: dict) -> str | None:
    if got["pad_token_id"] == want["pad_token_id"]:
        return None
    if got["pad_token_id"] is None:
        return (f"the model's config has no pad_token_id: Llama-2 ships without a pad token, and the classifier "
                "finds each row's last real token by it (without it, it refuses batches larger than 1); set "
                f"model.config.pad_token_id to the eos id ({want['eos_token_id']}).")
    return (f"pad_token_id is {got['pad_token_id']}; the reference pads with the eos token: "
            f"model.config.pad_token_id = {want['eos_token_id']} (eos).")


def _count_problem(got: dict, want: dict) -> str | None:
    if got["trainable"] == want["trainable"]:
        return None
    return (f"{got['trainable']:,} parameters train, the kit's model {want['trainable']:,}: only the adapters "
            "(r·(in + out) per adapted layer) and the head train; keep bias='none' and the base model frozen.")


def check_qlora_model(fn: Callable, model_path: str | None = None) -> Callable:
    """Exercise 15: ``qlora_model(model_path, compute_dtype)`` builds the reference's QLoRA model;
    checked by inspecting it against the kit's own (``load_model`` + ``inject_lora``) on the bundled
    tiny model, in bf16 compute: every 4-bit layer NF4 with double quantization and the compute
    dtype asked for, the head ``score`` neither 4-bit nor adapted and trained in full, LoRA on every
    4-bit linear with r, alpha and dropout, pad id = eos id, and the trainable count."""
    from reclor_lab.config import TINY_MODEL_DIR

    path = str(model_path or TINY_MODEL_DIR)

    def test(fn: Callable) -> None:
        # the grader's stand-ins (its recorder, its replay of the sandbox's answers) hand the facts in
        facts = fn if getattr(fn, "gives_facts", False) else qlora_model_facts(fn)
        state = torch.get_rng_state()
        try:
            got = facts(path, QLORA_CHECK_DTYPE)
            problem = _qlora_model_problem(got, reference_qlora_model_facts(path, QLORA_CHECK_DTYPE))
        finally:
            torch.set_rng_state(state)
        if problem:
            raise _Fail(f"built from the tiny model with compute dtype {QLORA_CHECK_DTYPE}: {problem}")

    return _run(NUMBER["qlora_model"], fn, reference_qlora_model, test)
