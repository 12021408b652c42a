"""Run machinery: what keeps a training run safe on disk, not what teaches QLoRA.

``rundir`` (a run directory's layout, checkpoints, checksums and lock), ``session`` (what the
training loop reaches through a few named calls), ``config_checks`` (the run config's checks,
reading and printing), ``loading`` (a model folder's and a tokenizer's checks, loading errors,
load report, the shipped metrics), ``adapters`` (peft's glue and a cheaper CPU dropout),
``data_checks`` (a ReClor file's checks), ``cache`` (tokenized splits kept on disk),
``distributed`` (several processes), ``trainer`` (the Hugging Face Trainer path), ``job`` (the
kit's main job: train, reload, evaluate, predict) and ``bnb_import`` (bitsandbytes imported
without TorchInductor: half of a kit process's start).
"""
