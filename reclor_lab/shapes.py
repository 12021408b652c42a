"""A decoder's shapes and what its weights cost: the arithmetic the QLoRA core needs.

NF4's bytes per weight (:func:`nf4_bytes_per_param`), LoRA's parameter count
(:func:`lora_param_count`, :func:`lora_params`), and a Llama decoder's sizes
(:class:`ModelShape`; Llama-2-7B's built in). Pure arithmetic: no model, no torch. The GPU
memory planner (:mod:`reclor_lab.tools.plan`) builds on it and reads other models' shapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from reclor_lab.config import NUM_LABELS

#: bitsandbytes' default (and QLoRA's) block size: one absmax scale per 64 weights.
NF4_BLOCKSIZE = 64
#: With double quantization the 8-bit absmax scales are themselves quantized in blocks of 256,
#: each block with one fp32 scale.
DOUBLE_QUANT_BLOCKSIZE = 256


def nf4_bytes_per_param(double_quant: bool = True, blocksize: int = NF4_BLOCKSIZE) -> float:
    """Bytes one quantized weight costs, scales included.

    - 4 bits for the NF4 index: 0.5 byte.
    - One absmax scale per ``blocksize`` weights: fp32 (4 bytes), or with double quantization an
      8-bit code (1 byte) plus one fp32 scale per 256 such codes.

    With blocksize 64: 4 + 32/64 = 4.5 bits/param plain, 4 + 8/64 + 32/(64*256) ≈ 4.127 bits with
    double quant (the QLoRA paper's numbers).

    >>> nf4_bytes_per_param(double_quant=False)
    0.5625
    >>> round(nf4_bytes_per_param(double_quant=True) * 8, 3)
    4.127
    """
    if double_quant:
        scales = 1 / blocksize + 4 / (blocksize * DOUBLE_QUANT_BLOCKSIZE)
    else:
        scales = 4 / blocksize
    return 0.5 + scales


def lora_param_count(shapes: Iterable[tuple[int, int]], r: int) -> int:
    """LoRA parameters of linear layers of the given shapes: A is r×in and B is out×r, so
    ``r·(in + out)`` per layer (either order of the pair: the sum is the same).

    >>> lora_param_count([(4, 8)], r=2)
    24
    """
    return sum(r * (a + b) for a, b in shapes)


# --- the model's shape --------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelShape:
    """What the memory depends on: a Llama decoder's sizes."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    num_labels: int = NUM_LABELS

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def projections(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of the 7 projections of one decoder layer."""
        h, kv, i = self.hidden, self.kv_heads * self.head_dim, self.intermediate
        return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def quantized_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.projections.values())

    @property
    def sixteen_bit_params(self) -> int:
        """Embeddings and norms (2 per layer + the final one); the head is counted apart."""
        return self.vocab * self.hidden + (2 * self.layers + 1) * self.hidden

    @property
    def head_params(self) -> int:
        """The classification head ``score`` (labels × hidden, no bias)."""
        return self.num_labels * self.hidden


#: Llama-2-7B (``meta-llama/Llama-2-7b-hf``'s config.json), for when its files are not on disk.
LLAMA2_7B_SHAPE = ModelShape(hidden=4096, intermediate=11008, layers=32, heads=32, kv_heads=32, vocab=32000)


def lora_params(shape: ModelShape, r: int) -> int:
    """``layers · r · Σ(in + out)`` over the 7 projections (:func:`lora_param_count`)."""
    return shape.layers * lora_param_count(shape.projections.values(), r)
