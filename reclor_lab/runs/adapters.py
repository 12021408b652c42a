"""What putting peft's LoRA adapters on a model needs around it: machinery of
:mod:`reclor_lab.lora`, not QLoRA.

peft 0.21 still calls transformers 4's names of the checkpointing methods, and transformers 5
warns on each call (:func:`without_peft_noise` hides exactly those warnings); gradient
checkpointing has two names across transformers 5 releases (:func:`enable_checkpointing`); and
the dropout on each LoRA input draws its mask faster on a CPU (:class:`LoRADropout`, swapped in
by :func:`use_lora_dropout`). :func:`reclor_lab.lora.inject_lora` calls these;
:func:`reclor_lab.lora.trainable_report` returns a :class:`TrainableReport`.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch import nn

from reclor_lab.errors import ConfigError

#: Gradient checkpointing without re-entrant autograd: the inputs need not require grad and
#: torch stops warning; costs the same ~30% extra forward compute as the re-entrant variant.
CHECKPOINT_KWARGS = {"use_reentrant": False}
#: peft 0.21 still calls the transformers-4 names of these methods; transformers 5 warns on each
#: call. The warnings are about peft's code, not the user's, so inject_lora hides exactly these.
_PEFT_DEPRECATION_NOISE = (
    r"`gradient_checkpointing_enable` is deprecated",
    r"`is_gradient_checkpointing` is deprecated",
)


@contextmanager
def without_peft_noise() -> Iterator[None]:
    """Calls into peft without transformers' warnings about peft's own deprecated calls
    (:data:`_PEFT_DEPRECATION_NOISE`); every other warning still shows."""
    with warnings.catch_warnings():
        for message in _PEFT_DEPRECATION_NOISE:
            warnings.filterwarnings("ignore", message=message, category=FutureWarning)
        yield


def chosen_targets(requested: tuple[str, ...] | None, available: list[str]) -> list[str]:
    """The layers to adapt: ``requested`` (``cfg.lora_targets``), or every one ``available`` when
    None; a name the model does not have as an adaptable layer is one ConfigError."""
    targets = list(requested) if requested else available
    unknown = sorted(set(targets) - set(available))
    if unknown:
        raise ConfigError(f"`lora_targets` names {unknown}, which this model does not have as adaptable "
                          f"linear layers; choose from {available} (or null for all of them)")
    return targets


def enable_checkpointing(model: nn.Module) -> None:
    """Turn on gradient (activation) checkpointing under either transformers-5 name."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:  # transformers >= 5.2x
        enable(activation_checkpointing_kwargs=dict(CHECKPOINT_KWARGS))
    else:  # earlier 5.x (e.g. 5.17) has only the old name
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=dict(CHECKPOINT_KWARGS))


class LoRADropout(nn.Dropout):
    """peft's dropout on the LoRA input, with a mask that is cheaper to draw on a CPU.

    ``nn.Dropout`` on a CPU draws its Bernoulli mask with torch's Mersenne Twister, one number at
    a time: on the tiny model that is a fifth of a training step (14 masks a step, one per adapted
    layer; ``bench/train_throughput.py`` measures the step). Here each CPU call draws one 64-bit
    seed from torch's generator and expands it with NumPy's PCG64 into 32-bit uniforms; an element
    is kept when its uniform is at least ``round(p * 2**32)``, and kept elements are scaled by
    ``1 / (1 - p)``. The same distribution (drop probability ``p`` up to 2**-33), the same
    expectation and gradient as ``nn.Dropout``; a different random stream, still a pure function
    of torch's RNG state, so ``torch.manual_seed`` and a resumed checkpoint's RNG state decide it
    as before. Other devices, evaluation and ``p = 0`` are ``nn.Dropout`` itself.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu":
            return super().forward(x)
        if self.p == 1.0:
            return x * 0.0
        seed = int(torch.randint(2**63 - 1, (), dtype=torch.int64))
        n = x.numel()
        uniforms = np.random.PCG64(seed).random_raw((n + 1) // 2).view(np.uint32)[:n]
        kept = (uniforms >= round(self.p * 2**32)).astype(np.float32)
        return x * torch.from_numpy(kept).view(x.shape).to(x.dtype).mul_(1.0 / (1.0 - self.p))


def use_lora_dropout(model: nn.Module) -> None:
    """Swap every ``nn.Dropout`` peft put on a LoRA input for :class:`LoRADropout` (same ``p``).
    ``inject_lora`` calls it."""
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, nn.ModuleDict):
            for name, dropout in dropouts.items():
                if type(dropout) is nn.Dropout:
                    dropouts[name] = LoRADropout(dropout.p)


# --- the count, printed as peft prints it ---------------------------------------------------------

@dataclass(frozen=True)
class TrainableReport:
    """Trainable vs all parameters of a (peft) model, as :func:`reclor_lab.lora.trainable_report`
    counts them: the numbers and the line of peft's ``print_trainable_parameters``."""

    trainable: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def line(self) -> str:
        """Same format as peft's ``print_trainable_parameters``."""
        return (
            f"trainable params: {self.trainable:,d} || all params: {self.total:,d} "
            f"|| trainable%: {self.percent:.4f}"
        )

    def __str__(self) -> str:
        return self.line()
