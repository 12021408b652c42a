"""The run directory: one owner for its layout, its atomic writes, its checkpoints, its lock, and
the one decision "new run, resume, or refuse".

A run directory holds::

    config.json               the RunConfig of the run
    tokenizer files           the tokenizer the run used (pad = eos)
    state.json                names the last checkpoint, the best one, and every kept one
    checkpoints/<name>/       one checkpoint: the LoRA adapter + head (adapter_model.safetensors and
                              adapter_config.json, loadable with PeftModel.from_pretrained),
                              trainer_state.pt (optimizer, RNG, where in which epoch) and
                              history.json (everything up to this checkpoint)
    history.json, metrics.json, *.png     the results, written when the run finishes

A checkpoint is ``epoch-NNN`` at the end of epoch NNN (after its evaluation) or ``step-NNNNNN``
after optimizer step NNNNNN inside an epoch (``save_every_steps``). Its folder is written under
a temporary name and renamed; ``state.json`` is replaced last, and only then are checkpoints it
no longer names removed. So a crash at any moment leaves ``state.json`` naming a complete
checkpoint whose history matches it exactly, and a leftover folder is removed the next time.

The folder the user names *is* the run: the ``output_dir`` saved in ``config.json`` is where the
run was created, never where it is looked for.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

from reclor_lab.errors import RunDirError

CONFIG_FILE = "config.json"
STATE_FILE = "state.json"
HISTORY_FILE = "history.json"
METRICS_FILE = "metrics.json"
CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer_state.pt"
ADAPTER_FILE = "adapter_model.safetensors"
LOCK_FILE = ".lock"
#: Bumped when the layout of state.json changes.
STATE_VERSION = 2
_TMP_SUFFIX = ".tmp"

#: What :meth:`RunDir.decide` answers: a new run, a resume from the last checkpoint, or a restart
#: of a run that stopped before its first checkpoint (from its saved config).
Decision = Literal["new", "resume", "restart"]


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON to a temporary name, flush it to disk, then rename it over ``path`` (atomic)."""
    path = Path(path)
    tmp = path.with_name(path.name + _TMP_SUFFIX)
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path, what: str) -> Any:
    """JSON from ``path``; a missing, empty, truncated or non-JSON file is one RunDirError."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirError(f"{path}: {what} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise RunDirError(f"{path}: {what} is damaged (not valid JSON: {e})") from None


@dataclass(frozen=True)
class Checkpoint:
    """One kept checkpoint, as state.json lists it."""

    name: str
    epoch: int            # the epoch it was taken in
    step: int             # optimizer steps done, counted over the whole run
    epoch_end: bool       # taken after the epoch's evaluation
    accuracy: float | None = None  # val accuracy of that evaluation (epoch ends only)

    @staticmethod
    def name_for(epoch: int, step: int, epoch_end: bool) -> str:
        return f"epoch-{epoch:03d}" if epoch_end else f"step-{step:06d}"


class RunDir:
    """The directory of one run. Every path, write and checkpoint of a run goes through here.

    >>> rd = RunDir("runs/tiny")
    >>> rd.config_path.as_posix(), rd.checkpoint_dir("epoch-002").as_posix()
    ('runs/tiny/config.json', 'runs/tiny/checkpoints/epoch-002')
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # --- paths ----------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def state_path(self) -> Path:
        return self.path / STATE_FILE

    @property
    def history_path(self) -> Path:
        return self.path / HISTORY_FILE

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS

    def checkpoint_dir(self, name: str) -> Path:
        return self.checkpoints_dir / name

    # --- the one decision -------------------------------------------------------------------
    def decide(self, resume: bool) -> Decision:
        """New run, resume, or restart; refuse (RunDirError) with the one command that works.

        Also checks that the directory can be written, before anything slow happens.
        """
        p = self.path
        if self.state_path.exists():
            if not resume:
                raise RunDirError(f"{p} already holds a run (last checkpoint {self.read_state()['last']}); "
                                  f"pass --resume to continue it, or choose another --output-dir")
            self.read_state()  # a damaged state.json is reported now, not after loading a model
            decision: Decision = "resume"
        elif self.config_path.exists():
            if not resume:
                raise RunDirError(f"{p} holds a run that stopped before its first checkpoint; "
                                  f"`reclor-lab train --resume --output-dir {p}` starts it over with its "
                                  f"saved config, or choose another --output-dir")
            decision = "restart"
        else:
            if resume:
                raise RunDirError(f"{p}: nothing to resume (no {CONFIG_FILE}); start a new run without --resume")
            if p.exists() and (not p.is_dir() or any(f.name not in (LOCK_FILE, CHECKPOINTS) for f in p.iterdir())):
                raise RunDirError(f"{p} already exists and is not empty; choose another --output-dir "
                                  "(or pass --resume to continue a run there)")
            decision = "new"
        self.check_writable()
        return decision

    def check_writable(self) -> None:
        """Create the directory and write a probe file in it, or raise one clear RunDirError."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise RunDirError(f"{self.path}: cannot write the run directory ({e.strerror or e}); "
                              "choose a writable --output-dir") from None

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive lock on the run for the whole run: a second process that tries to
        train or resume the same directory is refused at once instead of corrupting it."""
        import fcntl

        self.path.mkdir(parents=True, exist_ok=True)
        f = open(self.path / LOCK_FILE, "a+")
        try:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise RunDirError(f"{self.path} is being trained by another process right now; "
                                      "wait for it to finish (or stop it) before resuming") from None
                raise
            yield
        finally:
            f.close()  # releases the lock

    # --- config -------------------------------------------------------------------------------
    def save_config(self, cfg) -> None:
        write_json(self.config_path, cfg.to_dict())

    def load_config(self):
        """The run's RunConfig, with ``output_dir`` set to this directory (the folder is the run)."""
        from reclor_lab.config import RunConfig

        return RunConfig.load(self.config_path).replace(output_dir=str(self.path))

    def check_resume_config(self, cfg) -> None:
        """A resume may extend a run (more ``epochs``) but never shrink it."""
        saved = self.load_config()
        if cfg.epochs < saved.epochs:
            raise RunDirError(f"{self.path} is a {saved.epochs}-epoch run; --epochs {cfg.epochs} would shrink it: "
                              f"pass --epochs {saved.epochs} or more, or no --epochs")

    # --- state --------------------------------------------------------------------------------
    def read_state(self) -> dict:
        """state.json, checked: it must name kept checkpoints that exist."""
        state = read_json(self.state_path, "the run state")
        problem = _state_problem(state)
        if problem is None:
            for name in {state["last"], state["best"]}:
                if not (self.checkpoint_dir(name) / TRAINER_STATE).is_file():
                    problem = f"names checkpoint {name!r}, which is missing from {self.checkpoints_dir}"
        if problem:
            raise RunDirError(f"{self.state_path}: the run state is damaged ({problem}); "
                              "the run cannot be resumed from it")
        return state

    def has_run(self) -> bool:
        return self.state_path.exists()

    def last_dir(self) -> Path:
        return self.checkpoint_dir(self.read_state()["last"])

    def best_dir(self) -> Path:
        """The checkpoint with the best val accuracy (its adapter is the run's result)."""
        return self.checkpoint_dir(self.read_state()["best"])

    # --- checkpoints --------------------------------------------------------------------------
    def save_checkpoint(self, model, trainer_state: dict, history: dict, *, epoch: int, step: int,
                        epoch_end: bool, accuracy: float | None = None, keep_last: int = 1,
                        extra=None) -> Checkpoint:
        """Write one checkpoint (adapter + head, trainer state, history) and make it the last.

        ``extra(folder)`` may add files to the checkpoint before it is renamed into place.
        Keeps the last ``keep_last`` checkpoints plus the best end-of-epoch one. A failed write
        (a full disk, say) raises RunDirError and leaves the previous checkpoint as it was.
        """
        import torch

        ckpt = Checkpoint(Checkpoint.name_for(epoch, step, epoch_end), epoch, step, epoch_end, accuracy)
        final = self.checkpoint_dir(ckpt.name)
        tmp = final.with_name(final.name + _TMP_SUFFIX)
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            model.save_pretrained(tmp)  # adapter_model.safetensors + adapter_config.json (head included)
            torch.save(trainer_state, tmp / TRAINER_STATE)
            write_json(tmp / HISTORY_FILE, history)
            if extra is not None:
                extra(tmp)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            previous = self.read_state() if self.state_path.exists() else None
            state = _next_state(previous, ckpt, keep_last, trainer_state)
            write_json(self.state_path, state)
        except (OSError, RuntimeError) as e:  # torch.save reports a full disk as RuntimeError
            shutil.rmtree(tmp, ignore_errors=True)
            raise RunDirError(f"{final}: cannot write the checkpoint ({e}); the previous checkpoint is "
                              "intact: free some space, then resume with --resume") from None
        self.prune(state)
        return ckpt

    def prune(self, state: dict | None = None) -> None:
        """Remove every checkpoint folder state.json does not name (leftovers of a crash too)."""
        if not self.checkpoints_dir.is_dir():
            return
        state = state if state is not None else (self.read_state() if self.has_run() else {"checkpoints": []})
        kept = {c["name"] for c in state["checkpoints"]}
        for folder in self.checkpoints_dir.iterdir():
            if folder.name not in kept:
                shutil.rmtree(folder, ignore_errors=True)

    def load_checkpoint(self, model, name: str | None = None) -> tuple[dict, dict]:
        """Load a checkpoint's adapter and head into ``model`` (a PeftModel); return its trainer
        state and history. Default: the last checkpoint. Refuses a partial or foreign adapter."""
        import torch

        folder = self.checkpoint_dir(name or self.read_state()["last"])
        load_adapter(model, folder)
        try:
            ts = torch.load(folder / TRAINER_STATE, weights_only=True)
        except Exception as e:  # truncated, empty or not a torch file: pickle/zip errors of all kinds
            raise RunDirError(f"{folder / TRAINER_STATE}: the checkpoint is damaged ({type(e).__name__}: "
                              f"{str(e)[:200]}); the run cannot be resumed from it") from None
        missing = sorted(TRAINER_STATE_KEYS - set(ts) if isinstance(ts, dict) else TRAINER_STATE_KEYS)
        if missing:
            raise RunDirError(f"{folder / TRAINER_STATE}: the checkpoint is damaged (missing {missing})")
        history = read_json(folder / HISTORY_FILE, "the checkpoint's history")
        return ts, history

    def load_history(self) -> dict:
        """The run's history: the finished run's history.json, else the last checkpoint's."""
        if self.history_path.exists():
            return read_json(self.history_path, "the run history")
        return read_json(self.last_dir() / HISTORY_FILE, "the checkpoint's history")


#: What trainer_state.pt must hold to resume from it.
TRAINER_STATE_KEYS = frozenset({
    "epoch", "batch", "step", "optimizer", "total_steps", "warmup_steps", "torch_rng", "python_rng",
    "numpy_rng", "epoch_tokens", "epoch_seconds",
})


def load_adapter(model, folder: Path) -> None:
    """Load ``folder``'s adapter and head into a PeftModel, refusing anything but an exact match:
    a missing, extra or wrongly shaped tensor (a partial file, another run's rank) is an error,
    never a silent start from fresh LoRA weights."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    path = folder / ADAPTER_FILE
    try:
        saved = load_file(path)
    except FileNotFoundError:
        raise RunDirError(f"{path}: the checkpoint's adapter is missing") from None
    except Exception as e:  # SafetensorError: truncated header, bad JSON, short data
        raise RunDirError(f"{path}: the adapter file is damaged ({e})") from None
    expected = get_peft_model_state_dict(model)
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    shapes = sorted(k for k in set(saved) & set(expected) if saved[k].shape != expected[k].shape)
    if missing or unexpected or shapes:
        parts = []
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrongly shaped", shapes)):
            if keys:
                parts.append(f"{len(keys)} {what} (e.g. {keys[0]})")
        raise RunDirError(f"{path}: the adapter does not match this model ({'; '.join(parts)}): a partial "
                          "file, or another run's LoRA settings; refusing to continue from fresh weights")
    result = set_peft_model_state_dict(model, saved)
    bad = [k for k in getattr(result, "unexpected_keys", []) if k]
    if bad:
        raise RunDirError(f"{path}: {len(bad)} adapter tensors were not loaded (e.g. {bad[0]})")


def _state_problem(state: Any) -> str | None:
    if not isinstance(state, dict):
        return "expected a JSON object"
    for key, kind in (("last", str), ("best", str), ("checkpoints", list), ("last_epoch", int),
                      ("total_steps", int), ("warmup_steps", int)):
        if not isinstance(state.get(key), kind):
            return f"missing or wrong {key!r}"
    names = []
    for c in state["checkpoints"]:
        if not isinstance(c, dict) or not isinstance(c.get("name"), str):
            return "a kept checkpoint without a name"
        names.append(c["name"])
    if state["last"] not in names or state["best"] not in names:
        return "last or best is not among the kept checkpoints"
    return None


def _next_state(previous: dict | None, new: Checkpoint, keep_last: int, ts: dict) -> dict:
    """state.json after saving ``new``: the last ``keep_last`` checkpoints plus the best one."""
    kept = [Checkpoint(**c) for c in (previous or {}).get("checkpoints", []) if c["name"] != new.name]
    kept.append(new)
    ends = [c for c in kept if c.epoch_end]
    # the best end-of-epoch checkpoint by val accuracy, the earliest of equally good ones; before
    # the first epoch ends, the last checkpoint stands in
    best = max(ends, key=lambda c: (c.accuracy, -c.step)) if ends else new
    keep = {c.name for c in kept[-keep_last:]} | {best.name}
    kept = [c for c in kept if c.name in keep]
    last_epoch = max((c.epoch for c in ends), default=0)
    return {"version": STATE_VERSION, "last": new.name, "best": best.name,
            "last_epoch": last_epoch, "last_step": new.step,
            "best_epoch": best.epoch if best.epoch_end else None, "best_accuracy": best.accuracy,
            "total_steps": ts["total_steps"], "warmup_steps": ts["warmup_steps"],
            "checkpoints": [asdict(c) for c in kept]}
