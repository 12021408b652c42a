"""Run machinery: what keeps a training run safe on disk, not what teaches QLoRA.

``rundir`` (a run directory's layout, checkpoints, checksums and lock), ``config_checks`` (the
run config's checks), ``loading`` (a model folder's checks, loading errors and load report),
``data_checks`` (a ReClor file's checks), ``cache`` (tokenized splits kept on disk),
``distributed`` (several processes), ``trainer`` (the Hugging Face Trainer path), ``job`` (the
kit's main job: train, reload, evaluate, predict) and ``bnb_import`` (bitsandbytes imported
without TorchInductor: half of a kit process's start).
"""
