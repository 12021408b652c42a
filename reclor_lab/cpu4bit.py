"""Which kernel computes a 4-bit layer on a CPU, and the one path the kit uses on every CPU.

"4-bit" names how the weights are *stored*. How a layer then *computes* depends on the hardware
and on bitsandbytes' choice of kernel. bitsandbytes 0.50 has two CPU paths:

* **dequantize + matmul** (every CPU): the NF4 weight is expanded to the compute dtype (fp32 on a
  CPU) and multiplied with an ordinary ``torch.nn.functional.linear``. Autograd sees ordinary
  operations, so gradients flow correctly to the LoRA matrices and to the input.
* **packed bf16 kernel** (CPUs whose flags include ``avx512_bf16``: Intel Xeon since Cooper Lake,
  AMD Zen 4/5). The first forward pass in eval mode without gradients (any evaluation) repacks
  the weight in place into a CPU-specific layout: the double-quantized block scales are expanded
  to bf16 and the nested quantization state is dropped. From then on *every* forward pass, in
  training too, goes through ``bitsandbytes::gemv_4bit``, which computes in bf16 and has no
  autograd kernel: the gradient that reaches the layers below it is wrong (torch warns
  "an autograd kernel was not registered ... silently incorrect behavior"). On import,
  bitsandbytes also tries to fetch a faster version of that kernel from the Hugging Face hub
  (the ``kernels`` package) and logs "Failed to load CPU gemm_4bit_forward from
  kernels-community" when it cannot.

The kit uses the first path on every CPU (:func:`use_portable_kernels`, called by
:func:`reclor_lab.model.load_model`): correct gradients after an evaluation pass, double
quantization kept, and the same fp32 arithmetic whatever the CPU, so a run resumes bit for bit.
What it costs: evaluation on an ``avx512_bf16`` CPU does not use the faster bf16 kernel
(``bench/cpu_4bit.py`` measures the difference). A GPU is unaffected: it has its own kernels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importing reclor_lab must stay cheap: the notice filter runs at its import
    from torch import nn

#: The logger bitsandbytes' CPU backend reports through, and the start of the message it logs on
#: an ``avx512_bf16`` CPU when the hub kernel cannot be loaded.
BNB_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"
KERNELS_HUB_NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"


class _DropKernelsHubNotice(logging.Filter):
    """Drops bitsandbytes' suggestion to fetch a CPU kernel from the hub, and nothing else.

    The kernel it is about only runs on weights that bitsandbytes repacked for its bf16 path,
    which the kit never uses, so the red line would only alarm a student for nothing.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(KERNELS_HUB_NOTICE)


def quiet_kernels_hub_notice() -> None:
    """Install the filter on bitsandbytes' CPU logger (idempotent; cheap, imports nothing).

    Must run before ``import bitsandbytes``, which logs the notice once at import time: the
    package's ``__init__`` calls it, so any ``import reclor_lab…`` first is enough.
    """
    logger = logging.getLogger(BNB_CPU_LOGGER)
    if not any(isinstance(f, _DropKernelsHubNotice) for f in logger.filters):
        logger.addFilter(_DropKernelsHubNotice())


def cpu_has_avx512_bf16() -> bool:
    """What bitsandbytes' own feature check says about this CPU (``avx512_bf16`` support)."""
    from bitsandbytes.functional import has_avx512bf16

    return bool(has_avx512bf16())


def _linear4bit_layers(model: "nn.Module"):
    from bitsandbytes.nn import Linear4bit

    return [(name, m) for name, m in model.named_modules() if isinstance(m, Linear4bit)]


def is_repacked(layer: "nn.Module") -> bool:
    """True once bitsandbytes has repacked the layer's weight for its bf16 CPU kernel."""
    state = getattr(layer.weight, "quant_state", None)
    return bool(getattr(state, "packing_format_for_cpu", False))


class RepackedWeightsError(RuntimeError):
    """A model whose 4-bit weights bitsandbytes already repacked for its bf16 CPU kernel."""


def use_portable_kernels(model: "nn.Module") -> int:
    """Make every bitsandbytes ``Linear4bit`` of ``model`` compute by dequantize + matmul on a CPU.

    Switches off each layer's ``support_avx512bf16_for_cpu`` (set from the CPU's flags when the
    layer was built), so no evaluation pass repacks its weight. Call it before the model's first
    forward pass: a weight that was already repacked has lost its double quantization (its
    scales were expanded to bf16), and converting back would not restore the loaded values, so
    that raises :class:`RepackedWeightsError` instead. Returns the number of 4-bit layers.
    """
    layers = _linear4bit_layers(model)
    repacked = [name for name, m in layers if is_repacked(m)]
    if repacked:
        raise RepackedWeightsError(
            f"{len(repacked)} 4-bit layers (first: {repacked[0]}) were already repacked by "
            "bitsandbytes' bf16 CPU kernel during an evaluation pass; load the model again and "
            "call use_portable_kernels(model) before its first forward pass "
            "(reclor_lab.model.load_model does this)"
        )
    for _, layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


def layer_compute_dtype(layer: "nn.Module"):  # -> torch.dtype
    """The dtype a ``Linear4bit`` layer's matmul really runs in: bf16 once its weight is repacked
    for the bf16 CPU kernel (whatever ``compute_dtype`` says), else its ``compute_dtype``
    (fp32 when none was set)."""
    import torch

    if is_repacked(layer):
        return torch.bfloat16
    return layer.compute_dtype or torch.float32


@dataclass(frozen=True)
class CpuKernelReport:
    """Which 4-bit path bitsandbytes would take on this CPU, and which one the model takes."""

    cpu_has_avx512_bf16: bool
    layers: int
    portable_layers: int      # layers that will never switch to the packed bf16 kernel
    repacked_layers: int      # layers already switched

    @property
    def bitsandbytes_default(self) -> str:
        if self.cpu_has_avx512_bf16:
            return ("packed bf16 kernel after the first evaluation pass "
                    "(no autograd kernel: wrong gradients in training)")
        return "dequantize + matmul in the compute dtype"

    @property
    def model_path(self) -> str:
        if self.repacked_layers:
            return f"packed bf16 kernel ({self.repacked_layers} of {self.layers} layers repacked)"
        if self.portable_layers == self.layers:
            return "dequantize + matmul in the compute dtype"
        return (f"dequantize + matmul until the first evaluation pass, then the packed bf16 kernel "
                f"({self.layers - self.portable_layers} of {self.layers} layers)")

    def lines(self) -> str:
        return "\n".join([
            f"this CPU has avx512_bf16: {self.cpu_has_avx512_bf16}",
            f"bitsandbytes' default here: {self.bitsandbytes_default}",
            f"this model's {self.layers} Linear4bit layers: {self.model_path}",
        ])


def cpu_kernel_report(model: "nn.Module") -> CpuKernelReport:
    """Where ``model``'s 4-bit layers stand: see :class:`CpuKernelReport`."""
    layers = [m for _, m in _linear4bit_layers(model)]
    return CpuKernelReport(
        cpu_has_avx512_bf16=cpu_has_avx512_bf16(),
        layers=len(layers),
        portable_layers=sum(not getattr(m, "support_avx512bf16_for_cpu", False) for m in layers),
        repacked_layers=sum(is_repacked(m) for m in layers),
    )
