"""The two private third-party calls the kit makes, tested against the pinned versions.

Neither has a public equivalent in the pinned torch / transformers:

* ``DistributedDataParallel._set_params_and_buffers_to_ignore_for_model`` (``distributed.wrap``):
  DDP's constructor has no argument to leave the frozen 4-bit weights and the buffers out of its
  start-up broadcast and buckets; without it a 7B run would broadcast the whole quantized model.
* ``Trainer._save_optimizer_and_scheduler`` / ``Trainer._save_rng_state``
  (``trainer.HistoryCallback.trainer_files``): the Trainer saves its resume files only from its
  own checkpoint step, which the kit replaces with its own checkpoints; these two write exactly the
  files its resume (``_load_optimizer_and_scheduler``, ``_load_rng_state``) reads.

If an upgrade renames or changes them, these tests fail first, naming the call to replace.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn


#: The DDP check, run in a child process of its own: a process group in the pytest process would
#: outlive the test. Teardown order matters: the DDP wrapper (its C++ Reducer holds the process
#: group) goes first, while the group is still registered, then the group. The other order leaves
#: the Reducer to destroy ProcessGroupGloo later, and that destructor can wait forever on a gloo
#: thread (issue 33: ``make test`` stopped in ``~ProcessGroupGloo``'s ``thread::join``).
DDP_CHECK = """
import sys
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from reclor_lab.runs.distributed import Process, wrap

model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
model[0].weight.requires_grad_(False)  # stands for a frozen 4-bit weight
frozen = {"0.weight"} | {n for n, _ in model.named_buffers()}
assert hasattr(DistributedDataParallel, "_set_params_and_buffers_to_ignore_for_model")
dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
try:
    ddp = wrap(model, Process(rank=0, world_size=2))  # distributed: wrap's DDP path
    assert isinstance(ddp, DistributedDataParallel), type(ddp)
    assert set(ddp.parameters_to_ignore) == frozen, ddp.parameters_to_ignore
    ddp(torch.randn(8, 4)).sum().backward()  # a step through DDP with the frozen weight left out
    assert model[0].weight.grad is None and model[2].weight.grad is not None
finally:
    ddp = None  # the Reducer first, while the group is still there (see DDP_CHECK's comment)
    dist.destroy_process_group()
print("ok")
"""

#: Seconds the child may take: it imports torch and runs one step of a 3-layer model (~5 s on an
#: idle 2-core CPU); a hang in its teardown fails the test here instead of stalling the suite.
DDP_CHECK_TIMEOUT = 180


def test_ddp_leaves_out_exactly_the_parameters_and_buffers_the_kit_names(tmp_path):
    import os
    import sys

    from procs import run

    env = dict(os.environ, OMP_NUM_THREADS="1")  # one step of a 3-layer model needs no more
    r = run([sys.executable, "-c", DDP_CHECK, str(tmp_path / "group")], timeout=DDP_CHECK_TIMEOUT, env=env)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


def test_trainer_writes_the_files_its_resume_reads(tmp_path):
    from transformers import Trainer, TrainingArguments
    from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME

    for name in ("_save_optimizer_and_scheduler", "_save_rng_state",
                 "_load_optimizer_and_scheduler", "_load_rng_state"):
        assert callable(getattr(Trainer, name, None)), f"transformers' Trainer has no {name} any more"
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True)
    trainer = Trainer(model=nn.Linear(3, 2), args=args)
    trainer.create_optimizer_and_scheduler(num_training_steps=2)
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    trainer._save_optimizer_and_scheduler(str(folder))
    trainer._save_rng_state(str(folder))
    written = {p.name for p in folder.iterdir()}
    assert {OPTIMIZER_NAME, SCHEDULER_NAME} <= written
    assert any(name.startswith("rng_state") for name in written), written
    trainer._load_optimizer_and_scheduler(str(folder))  # what `train(resume_from_checkpoint=...)` runs
    trainer._load_rng_state(str(folder))


@pytest.fixture(autouse=True)
def _keep_rng():
    """_load_rng_state restores a saved RNG state: leave the session's as it was."""
    state = torch.get_rng_state()
    yield
    torch.set_rng_state(state)
