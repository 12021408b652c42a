"""Several processes, one run: data parallel through accelerate on ``torch.distributed``.

``accelerate launch -m reclor_lab train …`` (or ``torchrun``, or ``reclor-lab train --processes
N``) starts N copies of the same program; each finds its rank in the environment the launcher
sets. :func:`process` returns what this copy is: its rank, how many there are, its device. With
one process (a notebook, a plain ``reclor-lab train``) nothing here does anything, and no
process group is created.

The division of work, as in DistributedDataParallel everywhere:

- every process loads the 4-bit model on its own device and holds the same LoRA weights;
- each optimizer step's batch is cut into one shard per process (:func:`shard`); the gradients
  are averaged across processes (all-reduce) before the step, so every copy takes the same step;
- evaluation is cut the same way and the logits gathered, each example exactly once;
- only the main process (rank 0) writes the run directory, prints and shows progress bars.

Why the kit's own code and not ``Accelerator.prepare`` / ``backward`` / ``gather`` (accelerate
still forms the process group, :func:`process`): a run on N processes must take the same
optimizer steps as one process at N times the batch (``tests/test_distributed.py``), and
resume bit for bit. ``Accelerator.prepare(loader)`` deals whole batches out to the processes
(each optimizer step would see other examples than one process's step) and, with
``even_batches``, repeats examples to pad the last batch (counted twice in the loss); the kit
cuts every batch into contiguous parts with weights (:func:`shard`, :func:`shard_scale`). Its
``gather`` needs tensors of one size on every process, while the evaluation's parts differ by
one example; ``gather_for_metrics`` drops padding only for a loader it prepared.
``Accelerator.prepare(model)`` would put the frozen 4-bit weights into DDP's buckets, which
:func:`wrap` leaves out. ``Accelerator.backward`` is ``loss.backward()`` here (no DeepSpeed,
and fp16's scaler is the kit's own): ``fit`` calls that directly.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch

#: Environment variables a launcher (accelerate launch, torchrun) sets in every process it starts.
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Process:
    """Where this process stands among the processes of one run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def quiet_unless_main(self) -> None:
        """transformers' logging and progress bars off on every process but the main one."""
        if not self.is_main:
            import transformers

            transformers.logging.set_verbosity_error()
            transformers.logging.disable_progress_bar()

    def broadcast(self, obj: Any) -> Any:
        """The main process's ``obj``, on every process."""
        if not self.distributed:
            return obj
        box = [obj if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list:
        """Every process's ``obj``, in rank order, on every process."""
        if not self.distributed:
            return [obj]
        out: list = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """The sum of ``t`` over the processes (a new tensor on every process)."""
        t = t.clone()
        if self.distributed:
            torch.distributed.all_reduce(t)
        return t

    def max_int(self, value: int, device: torch.device) -> int:
        """The largest of the processes' ``value`` (a host sync on a GPU)."""
        if not self.distributed:
            return value
        t = torch.tensor([value], device=device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return int(t.item())

    @contextlib.contextmanager
    def main_first(self):
        """The main process runs the block first (it fills the token cache), then the others."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()


def launched() -> bool:
    """True when a launcher started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and all(v in os.environ for v in LAUNCH_ENV)


def is_main_process() -> bool:
    """True unless a launcher started this process as one of several and not the first."""
    return os.environ.get("RANK", "0") == "0" or not launched()


def process() -> Process:
    """This process's place in the run; the first call in a launched process joins the process
    group (gloo on a CPU, NCCL on GPUs) through accelerate and selects this process's GPU."""
    if not launched():
        return Process()
    from accelerate import PartialState

    # Reads the launcher's environment and joins the process group: NCCL between GPUs, gloo
    # between CPU processes (accelerate needs cpu=True to form a CPU group).
    cpu = not torch.cuda.is_available()
    state = PartialState(cpu=cpu, **({"backend": "gloo"} if cpu else {}))
    if torch.cuda.is_available():
        torch.cuda.set_device(state.local_process_index)  # the model loads on device_map {"": local rank}
    return Process(rank=state.process_index, world_size=state.num_processes,
                   local_rank=state.local_process_index)


def shard(batch: Sequence[int], rank: int, world_size: int) -> list[int]:
    """This process's part of one global batch: contiguous, as even as possible, possibly empty
    (a last batch smaller than the number of processes).

    >>> [shard(list(range(5)), r, 2) for r in range(2)]
    [[0, 1, 2], [3, 4]]
    >>> [shard([7], r, 2) for r in range(2)]
    [[7], []]
    """
    n, k = len(batch), world_size
    bounds = [i * (n // k) + min(i, n % k) for i in range(k + 1)]
    start, stop = bounds[rank], bounds[rank + 1]
    return list(batch[start:stop])


def shard_scale(batch: list[int], part: list[int], labels: list[int], weights: torch.Tensor | None,
                world_size: int) -> float:
    """How much this process's mean loss over ``part`` of a global ``batch`` counts:
    ``world_size · W(part) / W(batch)``, W being the sum of the class weights of a set's labels
    (its size without class weighting). DDP averages the processes' gradients, so the step then
    follows the gradient of the whole batch's weighted mean loss, as one process holding the
    whole batch would: unequal parts (a last batch of 5 over 2 processes) and class weights
    included. An empty part counts 0.

    >>> shard_scale([0, 1, 2], [0, 1], [0, 0, 0], None, 2)
    1.3333333333333333
    """
    if world_size == 1:
        return 1.0
    total = (lambda idx: sum(float(weights[labels[i]]) for i in idx)) if weights is not None else len
    return world_size * total(part) / total(batch)


def wrap(model, proc: Process):
    """The model the training step calls: DistributedDataParallel over the trainable (LoRA and
    head) parameters when there are several processes, else the model itself.

    The frozen 4-bit weights are left out of DDP entirely: they are loaded identically on every
    process, never receive a gradient, and broadcasting them at start would move the whole
    quantized model (3.5 GB for a 7B) for nothing; bitsandbytes' packed ``Params4bit`` are no
    tensors DDP's buckets should hold anyway. Every trainable parameter takes part in every
    forward pass, so ``find_unused_parameters`` stays off (it would cost a graph traversal per step).
    On a CPU each process loads its model through :func:`reclor_lab.model.load_model`, which
    puts every 4-bit layer on the portable kernel (:mod:`reclor_lab.cpu4bit`) before the first
    forward pass, so all processes compute on the same path and their gradients can be averaged.
    """
    if not proc.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    frozen += [n for n, _ in model.named_buffers()]
    # private, but DDP has no public way to leave them out; tests/test_private_apis.py checks it
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, frozen)
    device = next(p for p in model.parameters() if p.requires_grad).device
    # every buffer is ignored above, so DDP has none to broadcast (no `broadcast_buffers` needed)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=False)


def no_sync(ddp_model, skip: bool):
    """Within it, backward does not all-reduce (a micro-batch that is not the step's last)."""
    if skip and hasattr(ddp_model, "no_sync"):
        return ddp_model.no_sync()
    return contextlib.nullcontext()


def finish(proc: Process) -> None:
    """Leave the process group (at the end of a launched run), together: the barrier waits until
    every process is done (the main one may still be writing a checkpoint), so none tears its
    connections down while a peer still holds them (gloo aborts a process that sees that)."""
    if proc.distributed and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def on_main(proc: Process, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` run by the main process only, its result (or its
    :class:`ReclorLabError`) handed to every process: one decision, no process left waiting."""
    from reclor_lab.errors import ReclorLabError

    outcome: tuple = (None, None)
    if proc.is_main:
        try:
            outcome = (fn(*args, **kwargs), None)
        except ReclorLabError as e:
            if not proc.distributed:
                raise
            outcome = (None, e)
    result, error = proc.broadcast(outcome)
    if error is not None:
        raise error
    return result
