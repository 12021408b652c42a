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
    h, L = shape.hidden, shape.layers
    quantized, kept, lora, per_layer = _memory_terms(shape, b, s, r)
    want = reference_qlora_memory(shape, b, s, r, ckpt)[part]

    def near(x: float) -> bool:
        return math.isclose(got, x, rel_tol=1e-6)

    for unit, size in (("GiB", 2**30), ("GB", 1e9), ("MiB", 2**20), ("MB", 1e6)):
        if math.isclose(got, want / size, rel_tol=1e-4):
            return f"that is the right amount in {unit}; return bytes (the notebook divides by 2**30 to print GiB)."
    if part == "weights":
        if near(want + shape.vocab * h * KEPT_BYTES) or near(want + shape.vocab * h * 2):
            return "it counts an lm_head: a 4-way classifier never loads it (transformers drops it)."
        if near(quantized * 0.5 + kept * KEPT_BYTES):
            return ("4 bits flat misses the scales: each block of 64 also stores an 8-bit absmax, and every 256 "
                    "absmaxes one fp32 scale.")
        if near(quantized * 4.5 / 8 + kept * KEPT_BYTES):
            return ("4.5 bits is NF4 without double quantization (an fp32 absmax per 64); with it the absmax "
                    "is 8-bit plus one fp32 scale per 256 blocks.")
        if near(quantized * NF4_DQ_BITS / 8 + kept * 2):
            return ("the embeddings, norms and head are fp32 while training: prepare_model_for_kbit_training "
                    "casts every weight that is not 4-bit up.")
        return ("weights = the 7 projections of every layer at 4 + 8/64 + 32/(64·256) bits, plus embeddings, "
                "norms (2 a layer + 1) and the 4-way head in fp32.")
    if part == "trained":
        trained = lora + NUM_LABELS * h
        for per, what in ((4, "only the weights"), (8, "weights and gradients but no optimizer state"),
                          (12, "AdamW with one state; it keeps two (m and v)")):
            if near(trained * per) or near(lora * per):
                return f"that counts {what}: each trained parameter has an fp32 weight, gradient, m and v."
        if near(lora * TRAINED_BYTES):
            return "the head `score` trains too (4 × hidden parameters with their gradient and AdamW states)."
        return "LoRA's r·(in + out) for each of the 7 projections of each layer, plus the head, at 16 bytes each."
    if ckpt and near(L * per_layer):
        return ("that is without checkpointing: with it each layer keeps only its input (b·s·h in bf16), and "
                "backward recomputes one layer's activations at a time.")
    if ckpt and near(L * b * s * h * CHECKPOINT_BYTES):
        return "the layers' inputs are right; add the one layer whose activations backward recomputes."
    if not ckpt and near(L * b * s * h * CHECKPOINT_BYTES + per_layer):
        return "that is with checkpointing; without it every layer keeps all of b·s·(34·h + 5·a·s) bytes."
    if near(want / b) or near(want / s):
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
