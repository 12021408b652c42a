"""The run directory: one owner for its layout, its atomic writes, its checkpoints, its lock, and
the one decision "new run, resume, or refuse".

A run directory holds::

    config.json               the RunConfig of the run
    tokenizer files           the tokenizer the run used (pad = eos)
    data.json                 what the run trains on: a fingerprint of its tokenized train and val
                              splits, its class weights, its tokenizer files' SHA-256s
    state.json                names the last checkpoint, the best one, and every kept one, with a
                              SHA-256 of each of its files
    checkpoints/<name>/       one checkpoint: the LoRA adapter + head (adapter_model.safetensors and
                              adapter_config.json, loadable with PeftModel.from_pretrained),
                              trainer_state.pt (optimizer, RNG, where in which epoch) and
                              history.json (everything up to this checkpoint)
    history.json, metrics.json, *.png     the results, written when the run finishes

A checkpoint is ``epoch-NNN`` at the end of epoch NNN (after its evaluation) or ``step-NNNNNN``
after optimizer step NNNNNN inside an epoch (``save_every_steps``). Its folder is written under
a temporary name; the state that will name it is written to ``state.json.next``; the folder is
renamed into place, ``state.json`` replaced, and only then are the checkpoints it no longer names
removed. So a crash at any moment leaves ``state.json`` naming a complete checkpoint whose
history matches it exactly, or (a crash right after the first checkpoint's rename) a
``state.json.next`` that ``--resume`` verifies and takes. Only checkpoint folders that a
``state.json`` named, and the kit's own temporary folders, are ever removed: anything else in
``checkpoints/`` is left where it is (and mentioned once).

Evidence is never optional: ``state.json`` (layout version 3) records the config the run trains
with, the SHA-256 of ``data.json`` (the data fingerprint, class weights and tokenizer checksums)
and of every checkpoint file. A missing record, a null checksum, a ``best`` that disagrees with
the history or a run written in an older layout is refused, naming the file. On resume every
config field that changes the result must be as the run left it (:data:`RESUMABLE_FIELDS` may
change, and are recorded in the history with the step).

The folder the user names *is* the run: the ``output_dir`` saved in ``config.json`` is where the
run was created, never where it is looked for.

A run starts in one place, :meth:`RunDir.open`: the lock first, then the decision (new, resume,
restart, or refuse), the resumed config checked once; :class:`RunStart` carries the outcome to
``fit``, which decides nothing. What the kit writes goes to a temporary name, is flushed and
renamed (:func:`atomic_write`): complete or not at all. It never writes or deletes through a
symbolic link inside a run directory, and refuses a directory that has one where it writes.
Loading a checkpoint checks its files' SHA-256s and that its trainer state fits it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Literal

from reclor_lab.errors import ReclorLabError, RunDirError

CONFIG_FILE = "config.json"
STATE_FILE = "state.json"
HISTORY_FILE = "history.json"
METRICS_FILE = "metrics.json"
#: What the run trained on: a fingerprint of its tokenized train and val splits, and the class
#: weights of its loss (a reloaded run uses these, not whatever its data folder holds today).
DATA_FILE = "data.json"
VAL_PREDICTIONS_FILE = "val-predictions.json"
PLOT_FILES = ("loss.png", "eval.png", "confusion.png")
#: The Hugging Face Trainer's own output folder (the Trainer path; it saves nothing there).
TRAINER_DIR = "trainer"
CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer_state.pt"
#: The Hugging Face Trainer's own state file, written into the kit's checkpoints on the Trainer
#: path so that the Trainer can resume from them.
TRAINER_STATE_JSON = "trainer_state.json"
ADAPTER_FILE = "adapter_model.safetensors"
LOCK_FILE = ".lock"
#: Bumped when the layout of state.json changes. 3: the config, data.json's SHA-256 and every
#: checkpoint file's SHA-256 are recorded and required.
STATE_VERSION = 3
#: The state a checkpoint being saved will have, written before its folder is renamed into place:
#: a crash between the rename and ``state.json`` leaves it for ``--resume`` to verify and take.
STATE_NEXT_FILE = "state.json.next"
#: The files every checkpoint holds, each with its SHA-256 in state.json.
CHECKPOINT_FILES = (ADAPTER_FILE, "adapter_config.json", TRAINER_STATE, HISTORY_FILE)
#: Config fields a resume may change, and why: none of them changes what the run computes. Every
#: other field (the model, the data's layout and limits, LoRA, the optimisation, the seed, ...)
#: must be as the run's last checkpoint recorded it, or the resume is refused.
RESUMABLE_FIELDS = {
    "epochs": "more epochs extend the run (never below the epoch it has reached)",
    "data_dir": "the data may move: data.json's fingerprint of what it holds must still match",
    "eval_batch_size": "speed and memory: the evaluation is over examples, whatever the batch (up to rounding)",
    "gradient_checkpointing": "memory and speed: recomputed activations give the same gradients",
    "gpu_memory": "only plans batch_size auto, which a run settles when it starts",
    "save_every_steps": "when checkpoints are written (a resume continues exactly)",
    "keep_last_checkpoints": "how many checkpoints stay on disk",
    "preset": "a name, informational",
}
#: Never compared: the folder the user names is the run, wherever it was created.
IGNORED_FIELDS = ("output_dir",)
_TMP_SUFFIX = ".tmp"
#: A checkpoint's name: a plain name inside this run's checkpoints/ (never a path).
CHECKPOINT_NAME = re.compile(r"epoch-\d{3,9}|step-\d{6,12}")
#: How often a reader re-reads a state.json that changed under it (a checkpoint it named was
#: pruned by the writer between the two reads).
STATE_READ_ATTEMPTS = 3

#: What :meth:`RunDir.decide` answers: a new run, a resume from the last checkpoint, or a restart
#: of a run that stopped before its first checkpoint (from its saved config).
Decision = Literal["new", "resume", "restart"]


def _note(text: str) -> None:
    """A remark that needs no action, on stderr (never mixed into a command's output)."""
    import sys

    print(f"reclor-lab: note: {text}", file=sys.stderr)


class WriteError(RunDirError):
    """A file of the run could not be written (a full disk, say); nothing was written there."""


def _no_follow_create(path: Path) -> IO[bytes]:
    """``path`` opened for writing as a new real file: a leftover temporary file, or a link
    planted under its name, is removed first (never followed)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    return os.fdopen(fd, "wb")


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform allows opening a directory)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Write a file complete or not at all: ``write(f)`` fills a temporary file beside ``path``,
    which is flushed to disk and renamed over ``path``. A failure (a full disk) removes the
    temporary file, leaves ``path`` as it was and raises :class:`WriteError` naming it. A link
    at ``path`` is replaced, never followed."""
    path = Path(path)
    tmp = path.with_name(path.name + _TMP_SUFFIX)
    try:
        with _no_follow_create(tmp) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise WriteError(f"{path}: cannot write it ({e.strerror or e}); nothing was written there "
                         "(free some space or choose another folder, then run the command again)") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON complete or not at all (:func:`atomic_write`)."""
    text = json.dumps(obj, indent=2) + "\n"
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def read_json(path: Path, what: str) -> Any:
    """JSON from ``path``; a missing, empty, truncated or non-JSON file is one RunDirError."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirError(f"{path}: {what} is missing") from None
    except IsADirectoryError:
        raise RunDirError(f"{path}: {what} is a folder, not a file") from None
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise RunDirError(f"{path}: {what} is damaged (not valid JSON: {str(e)[:200]})") from None


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Checkpoint:
    """One kept checkpoint, as state.json lists it."""

    name: str
    epoch: int            # the epoch it was taken in
    step: int             # optimizer steps done, counted over the whole run
    epoch_end: bool       # taken after the epoch's evaluation
    accuracy: float | None = None  # val accuracy of that evaluation (epoch ends only)
    sha256: dict[str, str] | None = None  # file (relative to the folder) -> SHA-256, when written

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
        self._config: dict | None = None  # the config this process trains with (save_config)
        self._lock_id: tuple[int, int] | None = None  # the lock file's (device, inode) while held
        self._mentioned: set[str] = set()  # what prune has already said it leaves alone

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
    def data_path(self) -> Path:
        return self.path / DATA_FILE

    @property
    def val_predictions_path(self) -> Path:
        return self.path / VAL_PREDICTIONS_FILE

    @property
    def plot_paths(self) -> list[Path]:
        """loss.png, eval.png, confusion.png."""
        return [self.path / name for name in PLOT_FILES]

    @property
    def trainer_dir(self) -> Path:
        return self.path / TRAINER_DIR

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS

    def checkpoint_dir(self, name: str) -> Path:
        return self.checkpoints_dir / name

    def predictions_path(self, split: str) -> Path:
        """Where ``predict`` writes a split's predictions by default (.npy; the .json beside it)."""
        return self.path / f"predictions-{split}.npy"

    @staticmethod
    def summary_path(npy: Path) -> Path:
        """The test predictions' summary beside their .npy."""
        return npy.with_name(npy.stem + "-summary.json")

    def baseline_path(self, method: str) -> Path:
        return self.path / f"baseline-{method}.json"

    @staticmethod
    def is_prediction_file(path: Path) -> bool:
        """A file ``predict`` writes by default (which an explicit --output may replace)."""
        return path.name.startswith("predictions-")

    # --- the one decision -------------------------------------------------------------------
    def open(self, resume: bool, cfg=None, epochs: int | None = None, proc=None) -> "RunStart":
        """Start (or continue) training here: the one place a run starts. Takes the run's lock
        first, then decides new / resume / restart or refuses, checks a resumed run's config
        once and reads its config.json once. With several processes the main one does all
        that and hands the outcome to the others. Use it as a context manager (the lock is
        held until it exits).

        ``cfg``: the config to train with; for a resume None means the saved config (with
        ``epochs`` when given: more epochs extend the run, fewer are refused).
        """
        from reclor_lab.runs.distributed import Process, on_main  # torch, only once a run starts

        proc = proc or Process()
        start = RunStart(self, proc)
        try:
            start.decision, start.cfg = on_main(proc, start._decide_locked, resume, cfg, epochs)
        except BaseException:
            start.close()
            raise
        return start

    def decide(self, resume: bool) -> Decision:
        """New run, resume, or restart; refuse (RunDirError) with the one command that works.

        Also checks that the directory can be written, before anything slow happens. Refuses,
        changing nothing, a run whose state.json is gone while its checkpoints are there.
        """
        p = self.path
        if self.state_path.exists():
            if not resume:
                raise RunDirError(f"{p} already holds a run (last checkpoint {self.read_state()['last']}); "
                                  f"pass --resume to continue it, or choose another --output-dir")
            self.read_state()  # a damaged state.json is reported now, not after loading a model
            decision: Decision = "resume"
        elif kept := self._checkpoint_folders():
            if not resume and (p / STATE_NEXT_FILE).is_file():
                raise RunDirError(f"{p}: a checkpoint save was interrupted before the run's first state.json; "
                                  f"`reclor-lab train --resume --output-dir {p}` checks it and continues from it")
            raise RunDirError(f"{self.state_path}: the run state is missing while {self.checkpoints_dir} holds "
                              f"{len(kept)} checkpoint(s) ({', '.join(kept[:3])}); nothing was changed: restore "
                              "state.json, or move the run away and start a new one")
        elif self.config_path.exists():
            if self.is_model_folder():
                raise RunDirError(f"{p} is a model folder (its config.json is a model's, not a run's); the kit "
                                  "never trains into it: choose a new --output-dir for the run")
            if not resume:
                raise RunDirError(f"{p} holds a run that stopped before its first checkpoint; "
                                  f"`reclor-lab train --resume --output-dir {p}` starts it over with its "
                                  f"saved config, or choose another --output-dir")
            decision = "restart"
        else:
            if resume:
                raise RunDirError(f"{p}: nothing to resume (no {CONFIG_FILE}); start a new run without --resume")
            if self.holds_other_files():
                raise RunDirError(f"{p} already exists and is not empty; choose another --output-dir "
                                  "(or pass --resume to continue a run there)")
            decision = "new"
        self.check_writable()
        return decision

    def is_model_folder(self) -> bool:
        """Whether config.json is a model's (``model_type``), not a run's."""
        try:
            raw = json.loads(self.config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return False
        return isinstance(raw, dict) and ("model_type" in raw or "architectures" in raw)

    def holds_other_files(self) -> bool:
        """Whether the path is something a new run may not start in: a file, or a folder with
        anything but a lock and a checkpoints folder (what an interrupted start leaves)."""
        p = self.path
        return p.exists() and (not p.is_dir() or any(f.name not in (LOCK_FILE, CHECKPOINTS) for f in p.iterdir()))

    def _refused_before_lock(self, resume: bool) -> bool:
        """Whether :meth:`decide` refuses this folder whatever happens, so the lock (a file) is
        never left in a folder that is not a run: nothing to resume, a model folder, a
        non-empty folder for a new run."""
        if self.state_path.exists():
            return False
        if self.config_path.exists():
            return self.is_model_folder()
        return resume or self.holds_other_files()

    def _checkpoint_folders(self) -> list[str]:
        """Complete checkpoint folders present (not the temporary ones a crash leaves)."""
        if not self.checkpoints_dir.is_dir():
            return []
        return sorted(f.name for f in self.checkpoints_dir.iterdir() if CHECKPOINT_NAME.fullmatch(f.name))

    def check_writable(self) -> None:
        """Create the directory and write a probe file in it, or raise one clear RunDirError."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-test-{os.getpid()}"
            _no_follow_create(probe).close()
            probe.unlink()
        except OSError as e:
            raise RunDirError(f"{self.path}: cannot write the run directory ({e.strerror or e}); "
                              "choose a writable --output-dir") from None

    def check_no_links(self) -> None:
        """Refuse a run directory with a symbolic link where the kit writes or deletes (its top
        level, checkpoints/, a checkpoint folder, trainer/): the kit writes and removes only
        real files and folders of its own, never what a link points to."""
        if not self.path.is_dir():
            return
        folders = [self.path, self.checkpoints_dir, self.trainer_dir]
        if self.checkpoints_dir.is_dir() and not self.checkpoints_dir.is_symlink():
            folders += [f for f in self.checkpoints_dir.iterdir() if not f.is_symlink()]
        for folder in folders:
            if not folder.is_dir() or folder.is_symlink() and folder != self.path:
                continue
            for entry in os.scandir(folder):
                if entry.is_symlink():
                    raise RunDirError(f"{entry.path}: is a symbolic link inside the run directory; the kit "
                                      "writes and deletes only real files there: replace the link by a real "
                                      "file or folder, or remove it")

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive lock on the run for the whole run: a second process that tries to
        train or resume the same directory is refused at once instead of corrupting it."""
        f = self._acquire_lock()
        try:
            yield
        finally:
            os.close(f)  # releases the lock

    def _acquire_lock(self) -> int:
        """The lock's open file descriptor (held: closing it releases the lock)."""
        import fcntl

        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise RunDirError(f"{self.path / LOCK_FILE}: is a symbolic link; the kit writes only real files "
                                  "inside a run directory: remove the link") from None
            raise RunDirError(f"{self.path}: cannot write the run directory ({e.strerror or e}); "
                              "choose a writable --output-dir") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise RunDirError(f"{self.path} is being trained by another process right now (a training is "
                                  "in progress); wait for it to finish (or stop it) before starting or "
                                  "resuming it") from None
            raise
        st = os.fstat(fd)
        self._lock_id = (st.st_dev, st.st_ino)
        return fd

    def check_still_here(self) -> None:
        """Refuse to write once the run directory has been moved or deleted under a training that
        holds its lock (the lock file at the path is no longer the one held): writing would
        re-create a half-empty run at the old path. A RunDir that holds no lock checks nothing."""
        if self._lock_id is None:
            return
        try:
            st = os.stat(self.path / LOCK_FILE, follow_symlinks=False)
            here = (st.st_dev, st.st_ino) == self._lock_id
        except OSError:
            here = False
        if not here:
            raise RunDirError(f"{self.path}: the run directory was moved or deleted during training; stopped "
                              "without writing anything there (nothing is re-created): put the folder back and "
                              f"resume it with `reclor-lab train --resume --output-dir {self.path}`")

    # --- config, tokenizer, data ------------------------------------------------------------
    def save_config(self, cfg) -> None:
        """config.json; it is also the config this process's checkpoints record in state.json."""
        write_json(self.config_path, cfg.to_dict())
        self._config = cfg.to_dict()

    def load_config(self):
        """The run's RunConfig, with ``output_dir`` set to this directory (the folder is the run)."""
        from reclor_lab.config import RunConfig

        return RunConfig.load(self.config_path).replace(output_dir=str(self.path))

    def recorded_config(self, state: dict):
        """The RunConfig the run's last checkpoint was trained with (state.json's ``config``)."""
        from reclor_lab.config import ConfigError, RunConfig
        from reclor_lab.runs.config_checks import SAVED_BEFORE_FIELD

        try:
            return RunConfig(**{**SAVED_BEFORE_FIELD, **state["config"]})
        except (ConfigError, TypeError) as e:
            raise RunDirError(f"{self.state_path}: the run state is damaged (its recorded config: "
                              f"{str(e).splitlines()[0][:200]})") from None

    def config_changes(self, cfg, state: dict) -> list[dict]:
        """The fields of ``cfg`` that differ from the config the run's last checkpoint recorded,
        as ``{"field", "old", "new"}`` rows; any field outside :data:`RESUMABLE_FIELDS` is refused
        in one line naming each, old → new."""
        old, new = self.recorded_config(state).to_dict(), cfg.to_dict()
        diffs = [(k, old[k], new[k]) for k in old if k not in IGNORED_FIELDS and old[k] != new[k]]
        refused = [f"{k} {_shown(o)} → {_shown(n)}" for k, o, n in diffs if k not in RESUMABLE_FIELDS]
        if refused:
            raise RunDirError(f"{self.config_path}: the run's config differs from the one its checkpoints were "
                              f"trained with in {'; '.join(refused)}: these change the result, so the run is "
                              "not used with them: put them back as they were, or start a new run in another "
                              "--output-dir")
        return [{"field": k, "old": o, "new": n} for k, o, n in diffs]

    def check_resume_config(self, cfg, state: dict | None = None) -> list[dict]:
        """What a resume with ``cfg`` changes (:meth:`config_changes`, refused unless every
        changed field may change); ``epochs`` may grow or shrink, never below the epoch the run
        has reached."""
        state = state if state is not None else self.read_state()
        changes = self.config_changes(cfg, state)
        last = self.checkpoint_entry(state["last"], state)
        if cfg.epochs < last.epoch:
            raise RunDirError(f"{self.path}: `epochs` {cfg.epochs} is below epoch {last.epoch}, which the run has "
                              f"already reached (checkpoint {last.name}): pass --epochs {last.epoch} or more")
        return changes

    def save_tokenizer(self, tokenizer) -> dict[str, str]:
        """The tokenizer's files, each written complete or not at all: saved into a temporary
        folder, then each file renamed into the run directory. Returns their SHA-256s."""
        tmp = self.path / (".tokenizer" + _TMP_SUFFIX)
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            tokenizer.save_pretrained(tmp)
            sums = _seal(tmp)
            for f in sorted(tmp.iterdir()):
                os.replace(f, self.path / f.name)
            fsync_dir(self.path)
            return sums
        except (ReclorLabError, KeyboardInterrupt):
            raise
        except Exception as e:  # OSError; the tokenizers library raises a plain Exception ("os error 28")
            reason = getattr(e, "strerror", None) or str(e).strip().splitlines()[0][:200] or type(e).__name__
            raise WriteError(f"{self.path}: cannot write the tokenizer's files ({reason}); nothing was kept: free "
                             "some space (or raise the file-size limit), then start the run again") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def save_data(self, fingerprint: dict[str, str], weights: list[float] | None,
                  tokenizer: dict[str, str]) -> None:
        """data.json: what the run trains on (fingerprint), its class weights (or null without
        class weighting) and its tokenizer files' SHA-256s. Written once, when the run starts;
        its own SHA-256 goes into state.json with the first checkpoint."""
        write_json(self.data_path, {"fingerprint": fingerprint, "class_weights": weights, "tokenizer": tokenizer})

    def check_tokenizer(self) -> None:
        """Refuse a run whose tokenizer files are missing or changed since it saved them."""
        for name, digest in sorted(self.load_data()["tokenizer"].items()):
            path = self.path / Path(name).name
            if not path.is_file():
                raise RunDirError(f"{path}: the run's tokenizer file is missing; restore it from the model the "
                                  "run was trained from (its tokenizer, saved with save_pretrained)")
            if sha256_file(path) != digest:
                raise RunDirError(f"{path}: checksum mismatch: the run's tokenizer file changed after it was "
                                  "written; refusing to load it")

    def load_data(self, state: dict | None = None) -> dict:
        """data.json, checked: its shape, and (once the run has a checkpoint) its SHA-256 against
        the one state.json recorded. Missing, it is damage: it is the run's record of what it
        trained on."""
        if not self.data_path.exists() and not self.data_path.is_symlink():
            raise RunDirError(f"{self.data_path}: the run's data record is missing (the fingerprint of the data "
                              "it trained on, its class weights, its tokenizer checksums); nothing was changed: "
                              "restore it from a copy of the run, or start a new run")
        d = read_json(self.data_path, "the run's data record")
        if not _is_data_record(d):
            raise RunDirError(f"{self.data_path}: the run's data record is damaged (expected a fingerprint, "
                              "4 positive class weights or null, and the tokenizer files' checksums)")
        if state is None and self.state_path.exists():
            state = self.read_state()
        if state is not None and sha256_file(self.data_path) != state["data_sha256"]:
            raise RunDirError(f"{self.data_path}: checksum mismatch: the run's data record (its data fingerprint, "
                              "class weights, tokenizer checksums) changed after it was written; refusing to "
                              "use it")
        return d

    def class_weights(self, class_weighting: bool) -> list[float] | None:
        """The class weights the run trained with, as data.json recorded them (checked)."""
        weights = self.load_data()["class_weights"]
        if class_weighting and weights is None:
            raise RunDirError(f"{self.data_path}: the run's data record has no class weights, but its config "
                              "trains with class_weighting: the record is damaged")
        return weights if class_weighting else None

    def check_data(self, fingerprint: dict[str, str]) -> None:
        """Refuse to continue a run on other data than it trained on."""
        saved = self.load_data()
        changed = sorted(k for k in set(saved["fingerprint"]) | set(fingerprint)
                         if saved["fingerprint"].get(k) != fingerprint.get(k))
        if changed:
            raise RunDirError(f"{self.data_path}: this run trained on other {' and '.join(changed)} data than its "
                              "data folder gives now (records, tokenizer or limits changed); resume it on the "
                              "data it started with, or start a new run")

    # --- state --------------------------------------------------------------------------------
    def read_state(self) -> dict:
        """state.json, checked: it must name kept checkpoints that exist. A reader that finds a
        named checkpoint gone because training wrote a newer state.json and pruned it meanwhile
        reads the new state.json instead."""
        previous = None
        for _ in range(STATE_READ_ATTEMPTS):
            state = read_json(self.state_path, "the run state")
            _check_layout(self.state_path, state)
            problem = _state_problem(state)
            if problem is None:
                for name in (state["last"], state["best"]):
                    if not (self.checkpoint_dir(name) / TRAINER_STATE).is_file():
                        problem = f"names checkpoint {name!r}, which is missing from {self.checkpoints_dir}"
            if problem is None:
                return state
            if state == previous or not str(problem).startswith("names checkpoint"):
                break
            previous = state
        raise RunDirError(f"{self.state_path}: the run state is damaged ({problem}); "
                          "the run cannot be resumed from it")

    def has_run(self) -> bool:
        return self.state_path.exists()

    def verified_state(self) -> dict:
        """state.json, with its last and best checkpoints checked against their SHA-256s and its
        ``best`` checked against the history (what evaluate, predict and a resume start from)."""
        state = self.read_state()
        for name in dict.fromkeys((state["last"], state["best"])):
            self.verify_checkpoint(name, state)
        self.check_best(state)
        return state

    def check_best(self, state: dict) -> None:
        """``best`` must be the checkpoint of the history's best epoch (the highest val accuracy,
        the earliest of equal ones), with that accuracy; before the first epoch ends, the last
        checkpoint. The history is the last checkpoint's (checked by its SHA-256)."""
        path = self.checkpoint_dir(state["last"]) / HISTORY_FILE
        history = read_json(path, "the checkpoint's history")
        problem = _history_problem(history)
        if problem:
            raise RunDirError(f"{path}: the run history is damaged ({problem})")
        evals = [e for e in history["evals"] if e["epoch"] >= 1]
        best = self.checkpoint_entry(state["best"], state)
        if evals:
            top = max(evals, key=lambda e: (e["accuracy"], -e["epoch"]))
            ok = (best.epoch_end and best.epoch == top["epoch"] and best.accuracy == top["accuracy"]
                  and state.get("best_epoch") == top["epoch"])
            wanted = f"epoch {top['epoch']} (val accuracy {top['accuracy']:.4f})"
        else:
            ok, wanted = best.name == state["last"], f"the last checkpoint {state['last']}"
        if not ok:
            raise RunDirError(f"{self.state_path}: the run state is damaged (best is {best.name}, but the history's "
                              f"best is {wanted}); refusing to use it")

    def recover_state(self) -> None:
        """Finish a checkpoint save that a crash interrupted between renaming its folder into place
        and writing state.json: a ``state.json.next`` whose checkpoints are all there and match
        their SHA-256s becomes state.json (newer than the one there, if any); otherwise it is
        stale and removed. Called with the lock held, before the decision."""
        path = self.path / STATE_NEXT_FILE
        if not path.is_file() or path.is_symlink():
            return
        try:
            pending = read_json(path, "the pending run state")
            _check_layout(path, pending)
            problem = _state_problem(pending)
            if problem is None:
                for c in pending["checkpoints"]:
                    self.verify_checkpoint(c["name"], pending)
        except RunDirError as e:
            problem = str(e)
        current = read_json(self.state_path, "the run state") if self.state_path.exists() else None
        if problem is None and pending != current and (current is None or
                                                      pending.get("last_step", -1) > current.get("last_step", -1)):
            write_json(self.state_path, pending)
            _note(f"{self.path}: a checkpoint save was interrupted after {pending['last']} was complete; "
                  f"took its state ({pending['last']}, every file checked against its SHA-256)")
        _remove(path)

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
        Every file is flushed to disk and its SHA-256 recorded in state.json, which loading
        checks. Keeps the last ``keep_last`` checkpoints plus the best end-of-epoch one. A failed
        write (a full disk, say) raises RunDirError and leaves the previous checkpoint as it was.
        """
        import torch

        self.check_still_here()  # moved or deleted: stop, and never re-create it half empty
        self.check_no_links()
        name = Checkpoint.name_for(epoch, step, epoch_end)
        final = self.checkpoint_dir(name)
        tmp = final.with_name(final.name + _TMP_SUFFIX)
        previous = self.read_state() if self.state_path.exists() else None
        config = self._config or (previous or {}).get("config")
        if config is None:
            raise RunDirError(f"{self.path}: the run's config was not saved before its first checkpoint "
                              "(RunDir.save_config); nothing was written")
        try:
            _remove(tmp)
            self.checkpoints_dir.mkdir(exist_ok=True)  # never its parents: the run directory must be there
            tmp.mkdir()
            model.save_pretrained(tmp)  # adapter_model.safetensors + adapter_config.json (head included)
            torch.save(trainer_state, tmp / TRAINER_STATE)
            write_json(tmp / HISTORY_FILE, history)
            if extra is not None:
                extra(tmp)
            ckpt = Checkpoint(name, epoch, step, epoch_end, accuracy, _seal(tmp))
            data_sha = previous["data_sha256"] if previous else sha256_file(self.data_path)
            state = _next_state(previous, ckpt, keep_last, trainer_state, config, data_sha)
            write_json(self.path / STATE_NEXT_FILE, state)  # a crash after the rename: --resume takes it
            _remove(final)
            os.replace(tmp, final)
            fsync_dir(self.checkpoints_dir)
            write_json(self.state_path, state)
        except (OSError, RuntimeError, WriteError) as e:  # torch.save reports a full disk as RuntimeError
            _remove(tmp)
            _remove(self.path / STATE_NEXT_FILE)
            raise RunDirError(f"{final}: cannot write the checkpoint ({e}); the previous checkpoint is "
                              "intact: free some space, then resume with --resume") from None
        _remove(self.path / STATE_NEXT_FILE)
        self.prune(state, previous)
        return ckpt

    def prune(self, state: dict, previous: dict | None = None) -> None:
        """Remove what the run made and no longer keeps: the checkpoint folders ``previous`` (the
        state before the save) kept or had dropped, and those ``state`` drops, unless ``state``
        keeps them; and the kit's own temporary folders (``epoch-NNN.tmp``). Anything else in
        checkpoints/ (a user's backup, notes) is left, and mentioned once."""
        if not self.checkpoints_dir.is_dir() or self.checkpoints_dir.is_symlink():
            return
        kept = {c["name"] for c in state["checkpoints"]}
        made = {c["name"] for c in (previous or {}).get("checkpoints", [])}
        made |= set((previous or {}).get("dropped", [])) | set(state.get("dropped", []))
        others = []
        for folder in sorted(self.checkpoints_dir.iterdir()):
            name = folder.name
            if name in kept:
                continue
            if name in made or _is_temporary(name):
                _remove(folder)
            elif name not in self._mentioned:
                others.append(name + ("/" if folder.is_dir() else ""))
                self._mentioned.add(name)
        if others:
            _note(f"{self.checkpoints_dir}: left {', '.join(others[:5])}{' ...' if len(others) > 5 else ''} alone "
                  "(not made by this run: the kit removes only its own checkpoints)")

    def checkpoint_entry(self, name: str, state: dict | None = None) -> Checkpoint:
        state = state or self.read_state()
        entry = next(c for c in state["checkpoints"] if c["name"] == name)
        return Checkpoint(**{k: entry.get(k) for k in Checkpoint.__dataclass_fields__ if k in entry})

    def verify_checkpoint(self, name: str, state: dict | None = None) -> Path:
        """The checkpoint's folder, after checking each file against the SHA-256 recorded when it
        was written; every checkpoint records one for each of :data:`CHECKPOINT_FILES`."""
        folder = self.checkpoint_dir(name)
        sums = self.checkpoint_entry(name, state).sha256 or {}
        missing = [f for f in CHECKPOINT_FILES if f not in sums]
        if missing:
            raise RunDirError(f"{self.state_path}: the run state is damaged (checkpoint {name} has no checksum for "
                              f"{', '.join(missing)}); refusing to load it unchecked")
        for rel, digest in sorted(sums.items()):
            path = folder / rel
            try:
                ok = not path.is_symlink() and sha256_file(path) == digest
            except OSError as e:
                raise RunDirError(f"{path}: cannot read the checkpoint's file ({e.strerror or e})") from None
            if not ok:
                raise RunDirError(f"{path}: checksum mismatch: the file changed after it was written (a damaged "
                                  "disk or an edit); refusing to load it")
        return folder

    def load_checkpoint(self, model, name: str | None = None,
                        batches_per_epoch: int | None = None) -> tuple[dict, dict]:
        """Load a checkpoint's adapter and head into ``model`` (a PeftModel); return its trainer
        state and history. Default: the last checkpoint. Refuses a file whose checksum does not
        match, a partial or foreign adapter, and a trainer state or history that does not fit
        the checkpoint it sits in (``batches_per_epoch``: the micro-batches of one epoch)."""
        import torch

        state = self.read_state()
        name = name or state["last"]
        folder = self.verify_checkpoint(name, state)
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
        problem = _history_problem(history) or _trainer_state_problem(
            ts, history, self.checkpoint_entry(name, state), batches_per_epoch)
        if problem:
            raise RunDirError(f"{folder}: the checkpoint is damaged ({problem}); the run cannot be resumed from it")
        return ts, history

    def load_history(self, checked: bool = False) -> dict:
        """The run's history: the finished run's history.json, else the last checkpoint's;
        ``checked``: refuse one whose shape is not a history's."""
        path = self.history_path if self.history_path.exists() else self.last_dir() / HISTORY_FILE
        history = read_json(path, "the run history")
        problem = _history_problem(history) if checked else None
        if problem:
            raise RunDirError(f"{path}: the run history is damaged ({problem})")
        return history


class RunStart:
    """A run being started or continued, from :meth:`RunDir.open`: its directory, the decision
    (new / resume / restart), the config it trains with, and (in the main process) the lock,
    held until :meth:`close` (or the end of ``with``)."""

    def __init__(self, rd: RunDir, proc):
        self.rd, self.proc = rd, proc
        self.decision: Decision | None = None
        self.cfg = None
        self._lock: int | None = None
        self.changes: list[dict] = []  # the config fields a resume changed (RESUMABLE_FIELDS)

    def __repr__(self) -> str:
        return f"RunStart({str(self.rd.path)!r}, {self.decision!r})"

    def _decide_locked(self, resume: bool, cfg, epochs: int | None):
        rd = self.rd
        if resume and not rd.path.is_dir() or rd.path.is_dir() and rd._refused_before_lock(resume):
            rd.decide(resume)  # refuses without creating anything (no lock file in a folder that is no run)
        self._lock = rd._acquire_lock()
        rd.check_no_links()
        if resume:
            rd.recover_state()  # a first checkpoint complete before its state.json was written
        decision = rd.decide(resume)
        if decision == "resume":
            state = rd.verified_state()  # a damaged file is reported before a model loads
            saved = rd.load_config()
            if cfg is None:
                cfg = saved.replace(**({"epochs": epochs} if epochs else {}))
            self.changes = rd.check_resume_config(cfg, state)
        elif decision == "restart" and cfg is None:
            cfg = rd.load_config().replace(**({"epochs": epochs} if epochs else {}))
        return decision, cfg

    def prepare(self, cfg, tokenizer, fingerprint: dict[str, str], weights: list[float] | None) -> None:
        """Make the directory ready to train (the main process writes, every process calls it):
        a new run or a restart clears whatever an interrupted first try left and saves the
        config, the tokenizer and what the run trains on; a resume checks that it is the same
        data and saves the config (more epochs may extend the run)."""
        from reclor_lab.runs.distributed import on_main

        on_main(self.proc, self._prepare, cfg, tokenizer, fingerprint, weights)

    def load_checkpoint(self, model, batches_per_epoch: int | None = None) -> tuple[dict, dict]:
        """The last checkpoint (:meth:`RunDir.load_checkpoint`), its history with this resume's
        config changes recorded: ``{"step", "field", "old", "new"}`` rows under
        ``config_changes``, ``step`` being the optimizer steps done when the change took effect."""
        ts, history = self.rd.load_checkpoint(model, batches_per_epoch=batches_per_epoch)
        if self.changes:
            rows = [{"step": ts["step"], **c} for c in self.changes]
            history = {**history, "config_changes": [*history.get("config_changes", []), *rows]}
        return ts, history

    def _prepare(self, cfg, tokenizer, fingerprint, weights) -> None:
        rd = self.rd
        if self.decision == "resume":
            rd.check_data(fingerprint)
            rd.save_config(cfg)
            return
        rd.prune({"checkpoints": []})  # a restart: the kit's temporary folders an interrupted first try left
        rd.save_config(cfg)
        rd.save_data(fingerprint, weights, rd.save_tokenizer(tokenizer))

    def close(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # releases the lock
            self._lock = None

    def __enter__(self) -> "RunStart":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def started(run_dir, resume: bool, cfg, proc, epochs: int | None = None) -> Iterator[RunStart]:
    """``run_dir`` itself when it is a :class:`RunStart` already opened by the caller (who closes
    it), else a fresh one opened (and closed) here: the kit's one way into :meth:`RunDir.open`."""
    if isinstance(run_dir, RunStart):
        yield run_dir
        return
    with RunDir(run_dir).open(resume, cfg, epochs=epochs, proc=proc) as start:
        yield start


#: What trainer_state.pt must hold to resume from it.
TRAINER_STATE_KEYS = frozenset({
    "epoch", "batch", "step", "optimizer", "total_steps", "warmup_steps", "torch_rng", "python_rng",
    "numpy_rng", "epoch_tokens", "epoch_seconds",
})


def _remove(path: Path) -> None:
    """Remove a file, a link (itself, never what it points to) or a real folder, if there."""
    if path.is_symlink() or path.is_file():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


def _seal(folder: Path) -> dict[str, str]:
    """Flush every file of a checkpoint folder to disk; return their SHA-256s."""
    sums = {}
    for f in sorted(folder.rglob("*")):
        if f.is_file() and not f.is_symlink():
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
            sums[f.relative_to(folder).as_posix()] = sha256_file(f)
    fsync_dir(folder)
    return sums


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
        raise RunDirError(f"{path}: the adapter file is damaged ({str(e)[:200]})") from None
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


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _shown(v: Any) -> str:
    """A config value in a one-line message."""
    text = json.dumps(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_layout(path: Path, state: Any) -> None:
    """Refuse a state written in another layout than this version's, naming it."""
    if not isinstance(state, dict):
        return
    version = state.get("version")  # none at all: damaged (_state_problem says so)
    if version == STATE_VERSION or not isinstance(version, int) or isinstance(version, bool):
        return
    if version < STATE_VERSION:
        raise RunDirError(f"{path}: this run was written by an older reclor-lab (run layout {version}; this version "
                          f"writes and checks layout {STATE_VERSION}, which records every checksum and the config): "
                          "it cannot be checked, so it is not used: train it again with this version")
    raise RunDirError(f"{path}: this run was written by a newer reclor-lab (run layout {version}; this version "
                      f"reads layout {STATE_VERSION}): use that version")


def _is_sha(v: Any) -> bool:
    return isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None


def _is_temporary(name: str) -> bool:
    """The kit's own temporary checkpoint folder (``epoch-NNN.tmp``)."""
    return name.endswith(_TMP_SUFFIX) and CHECKPOINT_NAME.fullmatch(name[:-len(_TMP_SUFFIX)]) is not None


def _is_str_map(v: Any) -> bool:
    """A non-empty JSON object of strings."""
    return isinstance(v, dict) and bool(v) and all(isinstance(k, str) and isinstance(x, str) for k, x in v.items())


def _is_class_weights(v: Any) -> bool:
    """null (no class weighting), or 4 positive numbers."""
    return v is None or (isinstance(v, list) and len(v) == 4 and all(
        isinstance(w, (int, float)) and not isinstance(w, bool) and 0 < w < 1e6 for w in v))


def _is_data_record(d: Any) -> bool:
    """data.json's shape: a fingerprint, the class weights (or null), the tokenizer files' checksums."""
    return (isinstance(d, dict) and _is_str_map(d.get("fingerprint")) and _is_class_weights(d.get("class_weights"))
            and _is_str_map(d.get("tokenizer")))


def _state_problem(state: Any) -> str | None:
    if not isinstance(state, dict):
        return "expected a JSON object"
    if state.get("version") != STATE_VERSION:
        return f"missing or wrong 'version' (expected {STATE_VERSION})"
    if not isinstance(state.get("config"), dict):
        return "missing the config the run trains with"
    if not _is_sha(state.get("data_sha256")):
        return "missing or null SHA-256 of data.json"
    for key, kind in (("last", str), ("best", str), ("checkpoints", list), ("last_epoch", int),
                      ("total_steps", int), ("warmup_steps", int)):
        if not isinstance(state.get(key), kind):
            return f"missing or wrong {key!r}"
    names = []
    for c in state["checkpoints"]:
        if problem := _checkpoint_entry_problem(c):
            return problem
        names.append(c["name"])
    if state["last"] not in names or state["best"] not in names:
        return "last or best is not among the kept checkpoints"
    return None


def _checkpoint_entry_problem(c: Any) -> str | None:
    """What is wrong with one kept checkpoint's entry in state.json, or None."""
    if not isinstance(c, dict) or not isinstance(c.get("name"), str):
        return "a kept checkpoint without a name"
    if not CHECKPOINT_NAME.fullmatch(c["name"]):
        return f"{c['name'][:80]!r} is not a checkpoint name of this run (epoch-NNN or step-NNNNNN)"
    if not (_is_count(c.get("epoch")) and _is_count(c.get("step")) and isinstance(c.get("epoch_end"), bool)):
        return f"checkpoint {c['name']!r} lacks a valid epoch, step or epoch_end"
    sums = c.get("sha256")
    if sums is None:
        return f"checkpoint {c['name']!r} has no checksums"
    if not (isinstance(sums, dict) and sums and all(_is_checksum(k, v) for k, v in sums.items())):
        return f"checkpoint {c['name']!r} has malformed checksums"
    return None


def _is_checksum(rel: Any, digest: Any) -> bool:
    """One entry of a checkpoint's checksums: a relative path inside its folder and a SHA-256."""
    return isinstance(rel, str) and _is_sha(digest) and ".." not in Path(rel).parts and not Path(rel).is_absolute()


def _history_problem(history: Any) -> str | None:
    """What is wrong with the shape of a history (history.json), or None."""
    if not isinstance(history, dict):
        return "expected a JSON object with steps, evals and epochs"
    for key in ("steps", "evals", "epochs"):
        rows = history.get(key, [] if key == "epochs" else None)
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            return f"{key!r} must be a list of objects"
    for r in history["evals"]:
        if not _is_count(r.get("epoch")) or not all(isinstance(r.get(k), (int, float))
                                                    and not isinstance(r.get(k), bool)
                                                    for k in ("accuracy", "eval_loss")):
            return "an evaluation without an epoch, accuracy or eval loss"
    return None


def _trainer_state_problem(ts: dict, history: dict, ckpt: Checkpoint, batches_per_epoch: int | None) -> str | None:
    """What in a checkpoint's trainer state does not fit the checkpoint it sits in, or None:
    its step, epoch and batch must be the checkpoint's, its history must hold one row per step,
    and its optimizer must have taken that many steps."""
    if problem := _position_problem(ts, ckpt, batches_per_epoch):
        return problem
    if len(history["steps"]) != ts["step"]:
        return f"its history has {len(history['steps'])} steps, its trainer state {ts['step']}"
    return _optimizer_problem(ts)


def _position_problem(ts: dict, ckpt: Checkpoint, batches_per_epoch: int | None) -> str | None:
    """Whether the trainer state's counts are counts, and its step, epoch and batch the checkpoint's."""
    for key in ("epoch", "batch", "step", "total_steps", "warmup_steps", "epoch_tokens"):
        if not _is_count(ts[key]):
            return f"{key} is {ts[key]!r}, not a count"
    if ts["step"] != ckpt.step:
        return f"its trainer state is at step {ts['step']}, the checkpoint at step {ckpt.step}"
    if ts["epoch"] != ckpt.epoch + (1 if ckpt.epoch_end else 0):
        return f"its trainer state is in epoch {ts['epoch']}, which does not fit checkpoint {ckpt.name}"
    if ckpt.epoch_end and ts["batch"] != 0 or not ckpt.epoch_end and ts["batch"] < 1:
        return f"batch {ts['batch']} does not fit checkpoint {ckpt.name}"
    if batches_per_epoch is not None and ts["batch"] >= batches_per_epoch:
        return f"batch {ts['batch']} is past the {batches_per_epoch} batches of an epoch"
    return None


def _optimizer_problem(ts: dict) -> str | None:
    """Whether the trainer state holds an optimizer's state_dict that took the checkpoint's steps
    (with fp16 loss scaling, at most that many: the scaler skips the steps that overflow)."""
    opt = ts["optimizer"]
    if (not isinstance(opt, dict) or not isinstance(opt.get("state"), dict)
            or not isinstance(opt.get("param_groups"), list)):
        return "the optimizer state is not an optimizer's state_dict"
    scaled = any("scaler" in k and ts[k] for k in ts)
    for s in opt["state"].values():
        n = _step_count(s)
        if n is None or (not 0 <= n <= ts["step"] if scaled else n != ts["step"]):
            return f"its optimizer has taken {n} steps, the checkpoint {ts['step']}"
    return None


def _step_count(param_state: Any) -> float | None:
    """The ``step`` of one parameter's optimizer state as a number, or None."""
    try:
        return float(param_state["step"])
    except (KeyError, TypeError, ValueError, RuntimeError):  # not a number, or a tensor of many
        return None


def _next_state(previous: dict | None, new: Checkpoint, keep_last: int, ts: dict, config: dict,
                data_sha256: str) -> dict:
    """state.json after saving ``new``: the last ``keep_last`` checkpoints plus the best one, the
    ones it drops (for pruning), the config the run trains with and data.json's SHA-256."""
    kept = [Checkpoint(**c) for c in (previous or {}).get("checkpoints", []) if c["name"] != new.name]
    kept.append(new)
    ends = [c for c in kept if c.epoch_end]
    # the best end-of-epoch checkpoint by val accuracy, the earliest of equally good ones; before
    # the first epoch ends, the last checkpoint stands in
    best = max(ends, key=lambda c: (c.accuracy, -c.step)) if ends else new
    keep = {c.name for c in kept[-keep_last:]} | {best.name}
    dropped = [c.name for c in kept if c.name not in keep]
    kept = [c for c in kept if c.name in keep]
    last_epoch = max((c.epoch for c in ends), default=0)
    return {"version": STATE_VERSION, "last": new.name, "best": best.name,
            "last_epoch": last_epoch, "last_step": new.step,
            "best_epoch": best.epoch if best.epoch_end else None, "best_accuracy": best.accuracy,
            "total_steps": ts["total_steps"], "warmup_steps": ts["warmup_steps"],
            "checkpoints": [asdict(c) for c in kept], "dropped": dropped,
            "config": config, "data_sha256": data_sha256}
