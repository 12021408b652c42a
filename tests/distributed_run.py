"""One process of a run under a launcher, for tests/test_distributed.py:

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed_run.py \
        RUN_DIR '{"batch_size": 4, ...}' [--stop-after-step K] [--resume]

Trains the tiny preset with the given overrides through :func:`reclor_lab.train.fit`, which
can stop after a given step (as a preemption would) where the command line cannot.
"""

import argparse
import json

from reclor_lab.config import get_preset
from reclor_lab.runs.distributed import finish
from reclor_lab.train import fit, setup

p = argparse.ArgumentParser()
p.add_argument("run_dir")
p.add_argument("overrides")
p.add_argument("--stop-after-step", type=int)
p.add_argument("--resume", action="store_true")
args = p.parse_args()
run = setup(get_preset("tiny", output_dir=args.run_dir, **json.loads(args.overrides)), verbose=False)
fit(run, args.run_dir, resume=args.resume, stop_after_step=args.stop_after_step, verbose=False)
finish(run.proc)
