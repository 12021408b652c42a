"""The checks of notebook 02 (quantization)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from reclor_lab.course.checks.common import NUMBER, _Fail, _kind_problem, _run

# --- 4. NF4 on one block ------------------------------------------------------------------------------

def reference_nf4_block(block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """bitsandbytes' NF4 of one block of 64 weights: ``(codes, absmax, dequantized)``.

    ``quantize_4bit`` packs two 4-bit codes per byte, the first in the high nibble.
    """
    import bitsandbytes.functional as bnbf

    from reclor_lab.model import NF4_BLOCKSIZE

    block = block.detach().float().cpu().flatten()
    packed, state = bnbf.quantize_4bit(block, blocksize=NF4_BLOCKSIZE, quant_type="nf4",
                                       compress_statistics=False)
    packed = packed.flatten()
    codes = torch.stack([packed >> 4, packed & 0xF], dim=1).flatten().long()
    values = bnbf.dequantize_4bit(packed.reshape(-1, 1), state, quant_type="nf4").flatten()
    return codes, state.absmax.flatten()[0], values


def _nf4_cases() -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(4)
    weights = torch.randn(64, generator=g) * 0.02
    outlier = torch.randn(64, generator=g) * 0.02
    outlier[17] = -0.31  # the absmax is a negative weight
    skewed = torch.randn(64, generator=g).abs() * 0.05 + 0.01  # all positive
    return [
        ("a block of 64 normal weights (std 0.02)", weights),
        ("a block whose largest |weight| is negative (an outlier, -0.31)", outlier),
        ("a block of 64 positive weights", skewed),
    ]


def _nf4_hint(part: str, got: torch.Tensor, block: torch.Tensor, codes: torch.Tensor,
              absmax: torch.Tensor) -> str:
    from reclor_lab.model import NF4_CODE

    code = torch.tensor(NF4_CODE)
    if part == "absmax":
        if torch.isclose(got, block.max()):
            return ("the scale is the block's largest ABSOLUTE value, so that every weight / scale lies in "
                    "[-1, 1]; the largest value misses a larger negative one.")
        if torch.isclose(got, block.abs().mean()) or torch.isclose(got, block.std()):
            return "the scale is the block's absolute maximum, not an average: it maps the block onto [-1, 1]."
        return "the scale of a block is its absolute maximum (absmax)."
    if part == "codes":
        unscaled = (block.unsqueeze(-1) - code).abs().argmin(-1)
        if torch.equal(got, unscaled):
            return "those are the codes nearest to the raw weights; divide the block by its absmax first."
        uniform = torch.round((block / absmax + 1) * 7.5).long()
        if (got - uniform).abs().max() <= 1:
            return ("those look like 16 evenly spaced levels (uniform int4); NF4's 16 levels are the values "
                    "of NF4_CODE, dense near 0: pick the index of the nearest one.")
        return "for each weight, the index (0–15) of the NF4_CODE value nearest to weight / absmax."
    if torch.allclose(got, code[codes]):
        return "those are the code values in [-1, 1]; multiply them by the block's absmax."
    if torch.allclose(got, block):
        return "those are the original weights; dequantize from the codes: code value × absmax."
    return "dequantized value = NF4_CODE[code] × absmax, in float32."


def check_nf4_block(fn: Callable[[torch.Tensor], tuple]) -> Callable:
    """Exercise 4: ``fn(block) -> (codes, absmax, dequantized)`` for one block of 64 weights, equal
    bit for bit to ``bitsandbytes.functional.quantize_4bit`` / ``dequantize_4bit`` (NF4, block 64)."""

    def test(fn: Callable) -> None:
        for what, block in _nf4_cases():
            out = fn(block.clone())
            if not isinstance(out, (tuple, list)) or len(out) != 3:
                raise _Fail(f"for {what} it returned {type(out).__name__}; return three things: "
                            "(codes, absmax, dequantized).")
            codes, absmax, values = out
            for part, got in (("codes", codes), ("dequantized values", values)):
                problem = _kind_problem(got, "tensor")
                if problem:
                    raise _Fail(f"for {what} the {part} are {problem}.")
            want_codes, want_absmax, want_values = reference_nf4_block(block)
            absmax = torch.as_tensor(absmax).detach().float().cpu().flatten()
            if absmax.numel() != 1:
                raise _Fail(f"for {what} the absmax has {absmax.numel()} numbers; one block has one scale.")
            if not torch.equal(absmax[0], want_absmax):
                raise _Fail(f"for {what} the absmax is {absmax[0].item():.4g}: "
                            f"{_nf4_hint('absmax', absmax[0], block, want_codes, want_absmax)}")
            codes = torch.as_tensor(codes).detach().cpu().flatten()
            if codes.is_floating_point() or codes.numel() != block.numel():
                raise _Fail(f"for {what} the codes are {codes.numel()} {codes.dtype} values; return one integer "
                            "index 0–15 per weight.")
            codes = codes.long()
            if not torch.equal(codes, want_codes):
                wrong = int((codes != want_codes).sum())
                raise _Fail(f"for {what} {wrong} of 64 codes differ from bitsandbytes': "
                            f"{_nf4_hint('codes', codes, block, want_codes, want_absmax)}")
            values = torch.as_tensor(values).detach().cpu().flatten()
            if values.shape != want_values.shape or not torch.equal(values.float(), want_values):
                raise _Fail(f"for {what} the codes and absmax are right, the dequantized values are not: "
                            f"{_nf4_hint('values', values.float(), block, want_codes, want_absmax)}")

    return _run(NUMBER["nf4_block"], fn, reference_nf4_block, test)


# --- 5. LoRA targets -----------------------------------------------------------------------------------

def reference_lora_targets(model: nn.Module) -> list[str]:
    """:func:`reclor_lab.lora.find_lora_targets`."""
    from reclor_lab.lora import find_lora_targets

    return find_lora_targets(model)


def check_lora_targets(fn: Callable[[nn.Module], list[str]], model: nn.Module) -> Callable[[nn.Module], list[str]]:
    """Exercise 5: ``fn(model)`` → sorted unique leaf names of every 4-bit linear layer but ``score``."""
    want = reference_lora_targets(model)

    def test(fn: Callable) -> None:
        got = fn(model)
        if isinstance(got, (str, bytes)) or not isinstance(got, (list, tuple)):
            raise _Fail(f"it returned {type(got).__name__}; return a list of module names (str).")
        got = list(got)
        if any("score" == g or g.endswith(".score") for g in got):
            raise _Fail("the list contains the head `score`; the head is new and trains in full, "
                        "so it gets no LoRA adapter: leave it out.")
        if any("." in g for g in got):
            raise _Fail("the list holds full paths like 'model.layers.0.self_attn.q_proj'; peft wants the "
                        "leaf names ('q_proj'): keep the part after the last dot.")
        if len(set(got)) != len(got):
            raise _Fail("the list has repeated names (each layer of the model has its own q_proj…); "
                        "return each name once.")
        missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        if missing:
            raise _Fail(f"{len(missing)} kind(s) of 4-bit linear layer are missing, e.g. {missing[0]!r}; "
                        "look at every module whose type is bitsandbytes' Linear4bit.")
        if extra:
            raise _Fail(f"{extra[0]!r} is not a 4-bit linear layer (or is the head); keep only Linear4bit "
                        "modules.")
        if got != want:
            raise _Fail("right names, wrong order: return them sorted.")

    return _run(NUMBER["lora_targets"], fn, reference_lora_targets, test)
