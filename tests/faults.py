"""Fault injection: a table of faults against a finished tiny run, each met through the command
line exactly as a user meets it, each outcome classified:

- ``survived``: the command did its job and nothing the user had changed;
- ``clear error``: exit status non-zero, one ``reclor-lab: error:`` line (a config's problem list
  may follow, one ``  - `` line each) naming the file or value, nothing the user had changed;
- ``traceback``: an exception reached the user;
- ``data lost``: a file of the run (or outside it) was changed, removed or left half written;
- ``silent wrong``: the command succeeded where it had to refuse.

``tests/test_faults.py`` runs the table (every case must be a survival or a clear error);
``python bench/faults.py`` runs it and prints the machine and the tally.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import io
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager
from unittest import mock

OUTCOMES = ("survived", "clear error", "traceback", "data lost", "silent wrong")
#: The finished run every case starts from: a few steps of the tiny preset.
BASE = dict(train_limit=16, eval_limit=8, epochs=1, save_every_steps=1, keep_last_checkpoints=2)


@dataclass
class Case:
    """One fault's own copy of the world: the run, its data folder, a folder outside both."""

    root: Path
    run: Path
    data: Path
    outside: Path
    new: Path  # a run directory that does not exist yet

    def state(self) -> dict:
        return json.loads((self.run / "state.json").read_text())

    def last(self) -> Path:
        return self.run / "checkpoints" / self.state()["last"]

    def best(self) -> Path:
        return self.run / "checkpoints" / self.state()["best"]


@dataclass
class Fault:
    name: str
    kind: str                                  # data lost / silent wrong / traceback / also
    argv: Callable[[Case], list[str]]
    damage: Callable[[Case], None] = lambda c: None
    expect: str | None = None                  # in the error line; None: the command must succeed
    inject: Callable[[Case], ContextManager] = lambda c: contextlib.nullcontext()
    lost: Callable[[Case], str | None] = lambda c: None  # an extra check: what was lost, or None
    writes: tuple[str, ...] = field(default=())  # files of the run the command may (re)write (globs)
    env: dict[str, str | None] | None = None  # run as its own process with these variables (None: unset)
    limits: dict[int, int] = field(default_factory=dict)  # resource limits of that process (prlimit)


# --- building the world ---------------------------------------------------------------------------

def make_base(folder: Path) -> tuple[Path, Path]:
    """A finished run of the tiny preset on a copy of the bundled data: (run dir, data dir)."""
    from reclor_lab.config import BUNDLED_DATA_DIR, get_preset
    from reclor_lab.runs.job import train_run

    data = folder / "data"
    data.mkdir(parents=True)
    for split in ("train", "val"):
        records = json.loads((BUNDLED_DATA_DIR / f"{split}.json").read_text())
        (data / f"{split}.json").write_text(json.dumps(records[:32]))
    shutil.copy(BUNDLED_DATA_DIR / "test.json", data / "test.json")
    run = folder / "run"
    train_run(get_preset("tiny", output_dir=str(run), data_dir=str(data), **BASE), verbose=False)
    return run, data


def make_case(base_run: Path, base_data: Path, root: Path) -> Case:
    root.mkdir(parents=True)
    case = Case(root, root / "run", root / "data", root / "outside", root / "new")
    shutil.copytree(base_data, case.data)
    shutil.copytree(base_run, case.run)
    case.outside.mkdir()
    (case.outside / "precious.txt").write_text("the user's own file")
    config = json.loads((case.run / "config.json").read_text())
    config["data_dir"] = str(case.data)
    (case.run / "config.json").write_text(json.dumps(config))
    return case


def snapshot(*folders: Path) -> dict[str, str]:
    """Every file (and link) under the folders: path -> SHA-256 (or where a link points)."""
    out = {}
    for folder in folders:
        for p in sorted(folder.rglob("*")) if folder.is_dir() else []:
            if p.is_symlink():
                out[str(p)] = "-> " + os.readlink(p)
            elif p.is_file() and p.name != ".lock":
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# --- damage -------------------------------------------------------------------------------------

def flip_byte(path: Path, offset: int = -10) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def reseal(case: Case, folder: Path) -> None:
    """Record the checksums of a checkpoint's files as they are now: a forger's move, so that
    what is tested is the validation behind the checksum."""
    state = case.state()
    for c in state["checkpoints"]:
        if c["name"] == folder.name:
            c["sha256"] = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in folder.iterdir() if f.is_file()}
    (case.run / "state.json").write_text(json.dumps(state))


def edit_trainer_state(**changes) -> Callable[[Case], None]:
    def damage(case: Case) -> None:
        import torch

        path = case.last() / "trainer_state.pt"
        ts = torch.load(path, weights_only=True)
        ts.update(changes)
        torch.save(ts, path)
        reseal(case, case.last())
    return damage


def write(path_of: Callable[[Case], Path], text: str, then_reseal: bool = False) -> Callable[[Case], None]:
    def damage(case: Case) -> None:
        path = path_of(case)
        path.write_text(text)
        if then_reseal:
            reseal(case, path.parent)
    return damage


def edit_config(**changes) -> Callable[[Case], None]:
    def damage(case: Case) -> None:
        path = case.run / "config.json"
        raw = json.loads(path.read_text())
        raw.update(changes)
        path.write_text(json.dumps(raw))
    return damage


def config_text(text_of: Callable[[str], str]) -> Callable[[Case], None]:
    def damage(case: Case) -> None:
        path = case.run / "config.json"
        path.write_text(text_of(path.read_text()))
    return damage


def link(name: str, target_of: Callable[[Case], Path]) -> Callable[[Case], None]:
    def damage(case: Case) -> None:
        (case.run / name).unlink(missing_ok=True)
        os.symlink(target_of(case), case.run / name)
    return damage


def link_checkpoints(case: Case) -> None:
    shutil.move(case.run / "checkpoints", case.outside / "checkpoints")
    os.symlink(case.outside / "checkpoints", case.run / "checkpoints")


def bad_records(name: str, **changes) -> Callable[[Case], None]:
    def damage(case: Case) -> None:
        records = json.loads((case.data / "val.json").read_text())
        records[1].update(changes)
        (case.data / name).write_text(json.dumps(records))
    return damage


def change_train_data(case: Case) -> None:
    records = json.loads((case.data / "train.json").read_text())
    records[0]["context"] = records[0]["context"] + " Moreover, the sky was green."
    (case.data / "train.json").write_text(json.dumps(records))


def model_folder(weights: Callable[[Path], None],
                 config: Callable[[dict], dict] = lambda c: c) -> Callable[[Case], None]:
    """A copy of the tiny model in ``outside/model`` with damaged weights or config."""
    def damage(case: Case) -> None:
        from reclor_lab.config import TINY_MODEL_DIR

        folder = case.outside / "model"
        shutil.copytree(TINY_MODEL_DIR, folder)
        raw = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(config(raw)))
        weights(folder / "model.safetensors")
    return damage


def pickle_weights(path: Path) -> None:
    path.unlink()
    (path.parent / "pytorch_model.bin").write_bytes(b"\x80\x04\x95" + os.urandom(64))


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# --- injected failures ------------------------------------------------------------------------

def full_disk(target: str, partial: Callable[[object], None]):
    """``target`` (a function) writes a little, then fails as a full disk does."""
    def failing(*args, **kwargs):
        partial(args)
        raise OSError(errno.ENOSPC, "No space left on device")
    return lambda case: mock.patch(target, failing)


def _partial_npy(args) -> None:
    f = args[0]
    (f.write(b"\x93NUMPY") if hasattr(f, "write") else Path(f).write_bytes(b"\x93NUMPY"))


def _partial_tokenizer(args) -> None:
    folder = Path(args[1])
    (folder / "tokenizer.json").write_text('{"version": "1.0", "trunc')


@contextlib.contextmanager
def training_in_progress(case: Case):
    from reclor_lab.runs.rundir import RunDir

    with RunDir(case.run).lock():  # flock is per open file: this stands in for another process
        yield


def no_file(name: str) -> Callable[[Case], str | None]:
    return lambda case: f"a partial {name} was left" if any(case.root.rglob(name)) else None


# --- faults of issue 32 ---------------------------------------------------------------------------

#: What a successful resume of the run rewrites: what the kit made (never a user's file).
RUN_FILES = ("*.json", "*.png", "state.json*", "checkpoints/epoch-???/*", "checkpoints/step-??????/*")
#: Everything in the run (a case that moves or deletes the run folder checks it with ``lost``).
ANYTHING = ("*", "*/*", "*/*/*")


def finished(case: Case, run: Path | None = None) -> str | None:
    """The run is whole after the command: metrics written, every checkpoint as state.json says."""
    from reclor_lab.runs.rundir import RunDir

    rd = RunDir(run or case.run)
    try:
        rd.verified_state()
    except Exception as e:  # noqa: BLE001 - anything wrong with it is the finding
        return f"the run is not whole after the command: {e}"
    return None if rd.metrics_path.is_file() else "no metrics.json"


def user_files(case: Case) -> None:
    shutil.copytree(case.best(), case.run / "checkpoints" / "epoch-001-backup")
    (case.run / "checkpoints" / "NOTES.txt").write_text("my notes")


def user_files_kept(case: Case) -> str | None:
    backup = case.run / "checkpoints" / "epoch-001-backup" / "adapter_model.safetensors"
    notes = case.run / "checkpoints" / "NOTES.txt"
    if not backup.is_file() or not notes.is_file() or notes.read_text() != "my notes":
        return "the user's files in checkpoints/ were removed or changed"
    return finished(case)


def stopped_in_epoch_2(case: Case) -> None:
    """The run continued into epoch 2 and stopped after its first step there (epochs=2 saved)."""
    from reclor_lab.runs.rundir import RunDir
    from reclor_lab.train import fit, setup

    cfg = RunDir(case.run).load_config().replace(epochs=2)
    fit(setup(cfg, verbose=False), case.run, resume=True, stop_after_step=3, verbose=False)
    assert case.state()["last"] == "step-000003"


def then(*damages: Callable[[Case], None]) -> Callable[[Case], None]:
    def damage(case: Case) -> None:
        for d in damages:
            d(case)
    return damage


def edit_json(name: str, change: Callable[[dict], object]) -> Callable[[Case], None]:
    def damage(case: Case) -> None:
        path = case.run / name
        raw = json.loads(path.read_text())
        change(raw)
        path.write_text(json.dumps(raw))
    return damage


def swapped_adapter_without_checksums(case: Case) -> None:
    """state.json's checksums set to null, and the best checkpoint's adapter replaced by the
    other checkpoint's."""
    state = case.state()
    other = next(c["name"] for c in state["checkpoints"] if c["name"] != state["best"])
    adapter = "adapter_model.safetensors"
    shutil.copy(case.run / "checkpoints" / other / adapter, case.best() / adapter)
    for c in state["checkpoints"]:
        c["sha256"] = None
    (case.run / "state.json").write_text(json.dumps(state))


def other_model(case: Case) -> None:
    """A copy of the tiny model (same shapes, so it would load) recorded as the run's model."""
    from reclor_lab.config import TINY_MODEL_DIR

    shutil.copytree(TINY_MODEL_DIR, case.outside / "model")
    edit_config(model_name_or_path=str(case.outside / "model"))(case)


def model_without_tokenizer(case: Case) -> None:
    model_folder(lambda p: None)(case)
    (case.outside / "model" / "tokenizer.json").unlink()


def tokenizer_larger_than_the_model(case: Case) -> None:
    model_folder(lambda p: None)(case)
    path = case.outside / "model" / "tokenizer.json"
    raw = json.loads(path.read_text())
    raw["added_tokens"].append({"id": 32000, "content": "<extra>", "single_word": False, "lstrip": False,
                                "rstrip": False, "normalized": False, "special": True})
    path.write_text(json.dumps(raw))


def lock_left(case: Case) -> str | None:
    return "a .lock was left in the model folder" if (case.outside / "model" / ".lock").exists() else None


def move_run_after_first_save(to: Callable[[Case], Path | None]):
    """The run folder moved (``to`` None: deleted) right after the first checkpoint the command
    writes: a real rename while the training holds the run open."""
    def inject(case: Case):
        from reclor_lab.runs.rundir import RunDir

        real = RunDir.save_checkpoint
        calls = []

        def save_checkpoint(self, *args, **kwargs):
            ckpt = real(self, *args, **kwargs)
            if not calls:
                calls.append(ckpt)
                target = to(case)
                if target is None:
                    shutil.rmtree(case.run)
                else:
                    shutil.move(case.run, target)
            return ckpt
        return mock.patch.object(RunDir, "save_checkpoint", save_checkpoint)
    return inject


def not_recreated(moved_to: Callable[[Case], Path | None]) -> Callable[[Case], str | None]:
    def lost(case: Case) -> str | None:
        if case.run.exists():
            return f"the run folder was re-created at {case.run}: {sorted(p.name for p in case.run.iterdir())}"
        target = moved_to(case)
        return None if target is None else finished(case, target) if (target / "metrics.json").exists() else (
            _whole(target))
    return lost


def _whole(run: Path) -> str | None:
    from reclor_lab.runs.rundir import RunDir

    try:
        RunDir(run).verified_state()
    except Exception as e:  # noqa: BLE001
        return f"the moved run is not whole: {e}"
    return None


KILL_AT_FIRST_STATE = """
import os, sys
from reclor_lab.runs import rundir
real = rundir.write_json
def write_json(path, obj):
    if os.path.basename(str(path)) == "state.json":
        os._exit(137)
    real(path, obj)
rundir.write_json = write_json
from reclor_lab.cli import main
sys.exit(main(sys.argv[1:]))
"""


def killed_before_first_state_json(case: Case) -> None:
    """A new run killed (os._exit: no cleanup, as kill -9) right after its first checkpoint was
    renamed into place, before any state.json existed."""
    argv = ["train", "--output-dir", str(case.new), "--set", f"data_dir={case.data}",
            "--set", "train_limit=16", "--set", "eval_limit=8", "--set", "save_every_steps=1", "--epochs", "1"]
    done = subprocess.run([sys.executable, "-c", KILL_AT_FIRST_STATE, *argv], capture_output=True, text=True,
                          env={**os.environ, "TQDM_DISABLE": "1"})
    assert done.returncode == 137, done.stderr[-2000:]
    assert not (case.new / "state.json").exists() and (case.new / "checkpoints" / "step-000001").is_dir()


@contextlib.contextmanager
def small_disk(case: Case, size: str = "1m"):
    """A real full disk: a tmpfs of ``size`` at ``root/small`` (needs root). What it held when the
    command ended is copied to ``root/small-after`` before it is unmounted."""
    mount = case.root / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], check=True)
    try:
        yield
    finally:
        shutil.copytree(mount, case.root / "small-after", symlinks=True)
        subprocess.run(["umount", "-l", str(mount)], check=False)


def can_mount() -> bool:
    """Whether this machine lets the table mount a tmpfs (root, and a kernel that allows it)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", d], capture_output=True).returncode == 0
        if ok:
            subprocess.run(["umount", d], check=False)
    return ok


def no_partial_tokenizer(folder_of: Callable[[Case], Path]) -> Callable[[Case], str | None]:
    def lost(case: Case) -> str | None:
        folder = folder_of(case)
        left = [p.name for p in folder.iterdir()] if folder.is_dir() else []
        bad = [n for n in left if n.startswith(("tokenizer", ".tokenizer"))]
        return f"left {bad} in {folder}" if bad else None
    return lost


@contextlib.contextmanager
def file_size_limit(case: Case, limit: int = 2**20):
    """A real file-size limit (as ``prlimit --fsize`` or ``ulimit -f``) on this process while the
    command runs: a write past ``limit`` bytes fails with EFBIG (Python ignores SIGXFSZ)."""
    import resource

    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)


def clock(values: Callable[[], Callable[[], float]]):
    """time.perf_counter replaced while the command runs: frozen, or running backwards."""
    return lambda case: mock.patch("time.perf_counter", values())


def frozen() -> Callable[[], float]:
    return lambda: 1000.0


def backwards() -> Callable[[], float]:
    t = [10_000.0]

    def now() -> float:
        t[0] -= 7.0
        return t[0]
    return now


def sane_epochs(case: Case) -> str | None:
    history = json.loads((case.run / "history.json").read_text())
    for row in history["epochs"]:
        if row["seconds"] < 0 or (row["tokens_per_second"] is not None and row["tokens_per_second"] < 0):
            return f"an epoch row with a negative duration or rate: {row}"
    return finished(case)


def changes_recorded(case: Case) -> str | None:
    rows = json.loads((case.run / "history.json").read_text()).get("config_changes", [])
    got = [(r["field"], r["step"], r["old"], r["new"]) for r in rows]
    want = [("data_dir", 2, rows[0]["old"], str(case.data)),  # make_case points the copy at its own data
            ("epochs", 2, 1, 2), ("eval_batch_size", 2, 32, 4), ("keep_last_checkpoints", 2, 2, 3)]
    return finished(case) or (None if got == want else f"config_changes {got}, expected {want}")


def raise_in(target: str, error: BaseException):
    def inject(case: Case):
        def fail(*args, **kwargs):
            raise error
        return mock.patch(target, fail)
    return inject


# --- the table ------------------------------------------------------------------------------------

R = lambda c: str(c.run)  # noqa: E731
RESUME = lambda c: ["train", "--resume", "--output-dir", str(c.run), "--epochs", "2"]  # noqa: E731
NEW = lambda *more: lambda c: ["train", "--output-dir", str(c.new), *more]  # noqa: E731
MODEL = lambda c: str(c.outside / "model")  # noqa: E731
TRAIN_WITH_MODEL = lambda c: ["train", "--output-dir", str(c.new), "--model", MODEL(c), "--set", "train_limit=16"]  # noqa: E731,E501
EVALUATE = lambda c: ["evaluate", R(c)]  # noqa: E731
PREDICT = lambda c: ["predict", R(c), "--split", "val"]  # noqa: E731
SMALL = ("--set", "train_limit=16", "--set", "eval_limit=8")
TINY_TEMPLATE_OTHER = "Passage: {context} Question: {question} A: {a} B: {b} C: {c} D: {d} Answer:"
TINY_TEMPLATE_WIDE = ("Context: {context:>999999999} Question: {question} "
                      "Option A: {a} Option B: {b} Option C: {c} Option D: {d}")

FAULTS: list[Fault] = [
    # data lost
    Fault("resume with state.json missing", "data lost", RESUME,
          lambda c: (c.run / "state.json").unlink(), "the run state is missing"),
    Fault("link: checkpoints -> a folder", "data lost", RESUME, link_checkpoints, "symbolic link"),
    Fault("link: config.json.tmp -> a file", "data lost", RESUME,
          link("config.json.tmp", lambda c: c.outside / "precious.txt"), "symbolic link"),
    Fault("link: predictions-val.npy -> a file", "data lost", lambda c: ["predict", R(c), "--split", "val"],
          link("predictions-val.npy", lambda c: c.outside / "precious.txt"), "symbolic link"),
    Fault("link: .lock -> a path outside", "data lost", RESUME,
          link(".lock", lambda c: c.outside / "created-by-the-kit"), "symbolic link"),
    Fault("full disk: predict", "data lost", lambda c: ["predict", R(c), "--split", "val"],
          expect="No space left", inject=full_disk("numpy.save", _partial_npy), lost=no_file("predictions-val.npy*")),
    Fault("full disk: the tokenizer at the start", "traceback", NEW("--set", "train_limit=16", "--set", "eval_limit=8"),
          expect="No space left", inject=full_disk("transformers.PreTrainedTokenizerBase.save_pretrained",
                                                   _partial_tokenizer),
          lost=lambda c: "a partial tokenizer.json was left" if (c.new / "tokenizer.json").exists() else None),
    # silent wrong
    Fault("bit flip: adapter", "silent wrong", lambda c: ["evaluate", R(c)],
          lambda c: flip_byte(c.best() / "adapter_model.safetensors"), "checksum mismatch"),
    Fault("bit flip: optimizer state", "silent wrong", RESUME,
          lambda c: flip_byte(c.last() / "trainer_state.pt", 2000), "checksum mismatch"),
    Fault("forged: an earlier step's state", "silent wrong", RESUME, edit_trainer_state(step=1),
          "trainer state is at step 1"),
    Fault("forged: batch=10**6", "silent wrong", RESUME, edit_trainer_state(batch=10**6), "batch 1000000"),
    Fault("forged: step=-7", "silent wrong", RESUME, edit_trainer_state(step=-7), "not a count"),
    Fault("best names another run's checkpoint", "silent wrong", lambda c: ["evaluate", R(c)],
          lambda c: (c.run / "state.json").write_text(
              json.dumps({**c.state(), "best": str(c.best())})), "the run state is damaged"),
    Fault("other training data on resume", "silent wrong", RESUME, change_train_data, "other train data"),
    # tracebacks
    Fault("question_type 99", "traceback", lambda c: ["data", "check", str(c.data / "bad.json")],
          bad_records("bad.json", question_type=99), "'question_type' must be an integer 0-16"),
    Fault("question_type -5", "traceback", lambda c: ["data", "check", str(c.data / "bad.json")],
          bad_records("bad.json", question_type=-5), "'question_type' must be an integer 0-16"),
    Fault("a 30 MB passage", "also", lambda c: ["data", "check", str(c.data / "bad.json")],
          bad_records("bad.json", context="word " * 6_000_000), "characters long"),
    Fault("metrics.json: garbage", "traceback", lambda c: ["evaluate", R(c)],
          write(lambda c: c.run / "metrics.json", "\x00garbage"), "metrics.json: the run's metrics"),
    Fault("metrics.json: empty", "traceback", lambda c: ["evaluate", R(c)],
          write(lambda c: c.run / "metrics.json", ""), "metrics.json: the run's metrics"),
    Fault("metrics.json: wrong shapes", "traceback", lambda c: ["evaluate", R(c)],
          write(lambda c: c.run / "metrics.json", '{"accuracy": [1], "best_epoch": "x"}'), "metrics are damaged"),
    Fault("metrics.json: huge int", "traceback", lambda c: ["evaluate", R(c)],
          write(lambda c: c.run / "metrics.json", '{"accuracy": 1' + "0" * 5000 + "}"), "metrics.json"),
    Fault("metrics.json: deep nesting", "traceback", lambda c: ["evaluate", R(c)],
          write(lambda c: c.run / "metrics.json", nested(100_000)), "metrics.json"),
    Fault("tokenizer.json deleted", "traceback", lambda c: ["evaluate", R(c)],
          lambda c: (c.run / "tokenizer.json").unlink(), "tokenizer"),
    Fault("config.json: lora_targets 5", "traceback", lambda c: ["evaluate", R(c)],
          edit_config(lora_targets=5), "`lora_targets`"),
    Fault("config.json: a huge format width", "traceback", lambda c: ["evaluate", R(c)],
          edit_config(template=TINY_TEMPLATE_WIDE), "`template`"),
    Fault("config.json: gpu_memory 1e999GiB", "traceback", lambda c: ["evaluate", R(c)],
          edit_config(gpu_memory="1e999GiB"), "`gpu_memory`"),
    Fault("config.json: a 5000-digit int", "traceback", lambda c: ["evaluate", R(c)],
          config_text(lambda t: t.replace('"seed": 42', '"seed": 1' + "0" * 5000)), "config.json"),
    Fault("config.json: deep nesting", "traceback", lambda c: ["evaluate", R(c)],
          config_text(lambda t: t.replace('"lora_targets": null', '"lora_targets": ' + nested(100_000))),
          "config.json"),
    Fault("history.json: wrong shape", "traceback", RESUME,
          write(lambda c: c.last() / "history.json", '{"steps": 5, "evals": []}', then_reseal=True),
          "'steps' must be a list"),
    Fault("trainer_state.pt: malformed", "traceback", RESUME,
          write(lambda c: c.last() / "trainer_state.pt", "not a torch file", then_reseal=True),
          "trainer_state.pt: the checkpoint is damaged"),
    Fault("--set lora_targets=5", "traceback", NEW("--set", "lora_targets=5"), expect="`lora_targets`"),
    Fault("--set lora_r=10**12", "traceback", NEW("--set", "lora_r=1000000000000"), expect="`lora_r`"),
    Fault("--gpu-memory 1e999GiB", "traceback", lambda c: ["plan", "--gpu-memory", "1e999GiB"], expect="too large"),
    Fault("--set epochs=<5000 digits>", "traceback", NEW("--set", "epochs=1" + "0" * 5000), expect="--set epochs"),
    Fault("--output-dir with a lone surrogate", "traceback",
          lambda c: ["train", "--output-dir", str(c.root) + "/\udc80"],
          expect="`output_dir`"),
    Fault("--seed 2**32", "traceback", NEW("--seed", str(2**32)), expect="`seed`"),
    Fault("data show --template with a huge width", "traceback",
          lambda c: ["data", "show", str(c.data / "val.json"), "--template", TINY_TEMPLATE_WIDE], expect="widths"),
    Fault("--model: empty safetensors", "traceback", lambda c: ["model", "info", "--model", str(c.outside / "model")],
          model_folder(lambda p: p.write_bytes(b"")), "model"),
    Fault("--model: truncated safetensors", "traceback",
          lambda c: ["model", "info", "--model", str(c.outside / "model")],
          model_folder(lambda p: p.write_bytes(p.read_bytes()[:5000])), "model"),
    Fault("--model: corrupted safetensors header", "traceback",
          lambda c: ["model", "info", "--model", str(c.outside / "model")],
          model_folder(lambda p: p.write_bytes(b"\xff" * 16 + p.read_bytes()[16:])), "model"),
    Fault("--model: a pickle pytorch_model.bin", "traceback",
          lambda c: ["model", "info", "--model", str(c.outside / "model")], model_folder(pickle_weights), "model"),
    Fault("--model: nested config.json", "traceback",
          lambda c: ["model", "info", "--model", str(c.outside / "model")],
          lambda c: (model_folder(lambda p: None)(c),
                     (c.outside / "model" / "config.json").write_text(nested(100_000))),
          "model"),
    Fault("--model: negative hidden_size", "traceback",
          lambda c: ["model", "info", "--model", str(c.outside / "model")],
          model_folder(lambda p: None, lambda raw: {**raw, "hidden_size": -64}), "model"),
    # issue 32: the config is a contract on resume
    *[Fault(f"config.json edited before resume: {name}", "silent wrong", RESUME, edit_config(**{name: value}),
            f"in {name} ") for name, value in (("learning_rate", 0.02), ("batch_size", 4), ("seed", 7),
                                               ("lora_dropout", 0.5), ("max_grad_norm", 1.0), ("lora_alpha", 64),
                                               ("template", TINY_TEMPLATE_OTHER), ("max_len", 300),
                                               ("class_weighting", False), ("lr_schedule", "cosine"))],
    Fault("config.json edited before resume: model_name_or_path (same shapes)", "silent wrong", RESUME, other_model,
          "in model_name_or_path "),
    Fault("config.json edited before evaluate: learning_rate", "silent wrong", EVALUATE,
          edit_config(learning_rate=0.02), "learning_rate 0.002 → 0.02"),
    Fault("config.json epochs 2 → 1 while in epoch 2", "silent wrong",
          lambda c: ["train", "--resume", "--output-dir", R(c)],
          then(stopped_in_epoch_2, edit_config(epochs=1)), "`epochs` 1 is below epoch 2"),
    Fault("--epochs 1 while in epoch 2", "silent wrong",
          lambda c: ["train", "--resume", "--output-dir", R(c), "--epochs", "1"], stopped_in_epoch_2,
          "`epochs` 1 is below epoch 2"),
    Fault("resume with eval_batch_size and keep_last changed: recorded", "also", RESUME,
          edit_config(eval_batch_size=4, keep_last_checkpoints=3), writes=RUN_FILES, lost=changes_recorded),
    # issue 32: evidence is never optional
    Fault("data.json deleted and train.json changed, then resume", "silent wrong", RESUME,
          then(lambda c: (c.run / "data.json").unlink(), change_train_data),
          "data.json: the run's data record is missing"),
    Fault("data.json deleted, then evaluate", "silent wrong", EVALUATE, lambda c: (c.run / "data.json").unlink(),
          "data.json: the run's data record is missing"),
    Fault("data.json: class weights edited", "silent wrong", EVALUATE,
          edit_json("data.json", lambda d: d.update(class_weights=[1.0, 1.0, 1.0, 1.0])),
          "data.json: checksum mismatch"),
    Fault("data.json: tokenizer null", "silent wrong", EVALUATE,
          edit_json("data.json", lambda d: d.update(tokenizer=None)), "data record is damaged"),
    Fault("state.json: best -> the other kept checkpoint (evaluate)", "silent wrong", EVALUATE,
          edit_json("state.json", lambda s: s.update(best="step-000001")), "history's best is epoch 1"),
    Fault("state.json: best -> the other kept checkpoint (predict)", "silent wrong", PREDICT,
          edit_json("state.json", lambda s: s.update(best="step-000001")), "history's best is epoch 1"),
    Fault("state.json: null checksums and a swapped adapter", "silent wrong", PREDICT,
          swapped_adapter_without_checksums, "has no checksums"),
    Fault("state.json: one file's checksum dropped", "silent wrong", EVALUATE,
          edit_json("state.json", lambda s: [c["sha256"].pop("adapter_config.json") for c in s["checkpoints"]]),
          "no checksum for adapter_config.json"),
    Fault("state.json: data_sha256 null", "silent wrong", EVALUATE,
          edit_json("state.json", lambda s: s.update(data_sha256=None)), "SHA-256 of data.json"),
    Fault("state.json: an older layout (2)", "silent wrong", EVALUATE,
          edit_json("state.json", lambda s: s.update(version=2)), "written by an older reclor-lab"),
    # issue 32: the run deletes only what it made
    Fault("resume with a user's backup and notes in checkpoints/", "data lost", RESUME, user_files,
          writes=RUN_FILES, lost=user_files_kept),
    # issue 32: a run folder that moves or disappears during training
    Fault("the run folder renamed during training", "silent wrong", RESUME,
          inject=move_run_after_first_save(lambda c: c.root / "moved"), expect="was moved or deleted during training",
          writes=ANYTHING, lost=not_recreated(lambda c: c.root / "moved")),
    Fault("the run folder deleted during training", "silent wrong", RESUME,
          inject=move_run_after_first_save(lambda c: None), expect="was moved or deleted during training",
          writes=ANYTHING, lost=not_recreated(lambda c: None)),
    # issue 32: the first checkpoint is resumable from any kill point
    Fault("killed after the first checkpoint's rename, before state.json", "also",
          lambda c: ["train", "--resume", "--output-dir", str(c.new)], killed_before_first_state_json,
          lost=lambda c: finished(c, c.new)),
    # issue 32: the last tracebacks
    Fault("file-size limit while saving tokenizer.json (real: RLIMIT_FSIZE 1 MiB)", "traceback", NEW(*SMALL),
          expect="cannot write the tokenizer's files (File too large", inject=file_size_limit,
          lost=no_partial_tokenizer(lambda c: c.new)),
    *([Fault("full disk while saving tokenizer.json (real: a 1 MiB tmpfs)", "traceback",
             lambda c: ["train", "--output-dir", str(c.root / "small" / "run"), *SMALL],
             expect="cannot write the tokenizer's files (No space left on device", inject=small_disk,
             lost=no_partial_tokenizer(lambda c: c.root / "small-after" / "run"))] if can_mount() else []),
    Fault("--model: a folder without tokenizer.json (train)", "traceback", TRAIN_WITH_MODEL, model_without_tokenizer,
          "no tokenizer files"),
    Fault("--model: a folder without tokenizer.json (data check)", "silent wrong",
          lambda c: ["data", "check", "--model", MODEL(c), str(c.data / "val.json")], model_without_tokenizer,
          "no tokenizer files"),
    Fault("--model: a tokenizer past the model's embedding rows", "traceback", TRAIN_WITH_MODEL,
          tokenizer_larger_than_the_model, "the model's embedding has 32,000 rows"),
    Fault("PYTHONIOENCODING=ascii predict", "traceback", PREDICT, env={"PYTHONIOENCODING": "ascii"},
          writes=("predictions-val.npy", "predictions-val.json")),
    Fault("PYTHONIOENCODING=ascii: a refused resume says old -> new", "traceback", RESUME,
          edit_config(learning_rate=0.02), "learning_rate 0.002 -> 0.02", env={"PYTHONIOENCODING": "ascii"}),
    Fault("a frozen clock (0 s epochs)", "traceback", RESUME, inject=clock(frozen), writes=RUN_FILES,
          lost=sane_epochs),
    Fault("a clock running backwards", "silent wrong", RESUME, inject=clock(backwards), writes=RUN_FILES,
          lost=sane_epochs),
    Fault("address-space limit 1 GiB (real: prlimit --as)", "traceback", NEW(*SMALL), expect="address-space limit",
          env={}, limits={resource.RLIMIT_AS: 2**30}),
    Fault("MemoryError in a training step", "traceback", RESUME, expect="out of memory", writes=("config.json",),
          inject=raise_in("reclor_lab.train.weighted_cross_entropy", MemoryError())),
    Fault("torch cannot allocate in a training step", "traceback", RESUME, expect="out of memory",
          writes=("config.json",), inject=raise_in("reclor_lab.train.weighted_cross_entropy", RuntimeError(
              "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried to "
              "allocate 1187840 bytes. Error code 12 (Cannot allocate memory)"))),
    Fault("HF_HOME read-only", "traceback", NEW(*SMALL), expect="comes from $HF_HOME: set HF_HOME",
          env={"HF_HOME": "/proc/hf", "XDG_CACHE_HOME": None}),
    Fault("XDG_CACHE_HOME read-only", "traceback", NEW(*SMALL), expect="comes from $XDG_CACHE_HOME: set HF_HOME",
          env={"HF_HOME": None, "XDG_CACHE_HOME": "/proc/xdg"}),
    Fault("HOME read-only", "traceback", NEW(*SMALL), expect="comes from $HOME: set HF_HOME",
          env={"HF_HOME": None, "XDG_CACHE_HOME": None, "HOME": "/proc/home"}),
    Fault("--output-dir a model folder", "traceback", lambda c: ["train", "--output-dir", MODEL(c)],
          model_folder(lambda p: None), "is a model folder", lost=lock_left),
    Fault("--output-dir a model folder, --resume", "traceback",
          lambda c: ["train", "--resume", "--output-dir", MODEL(c)],
          model_folder(lambda p: None), "is a model folder", lost=lock_left),
    # also
    Fault("a second training while one runs", "also", RESUME, expect="a training is in progress",
          inject=training_in_progress),
    Fault("predict on an intact run", "also", lambda c: ["predict", R(c), "--split", "val"],
          writes=("predictions-val.npy", "predictions-val.json")),
]


# --- running and classifying --------------------------------------------------------------------

def written_by_the_kit(path: Path, run: Path, patterns: tuple[str, ...]) -> bool:
    """Whether ``path`` is a file of the run that the command may write: a pattern matches its
    path inside the run segment by segment (``*.json`` is a top-level file, never a user's)."""
    try:
        parts = path.relative_to(run).parts
    except ValueError:
        return False
    return any(len(parts) == len(p.split("/")) and all(fnmatch.fnmatchcase(a, b) for a, b in zip(parts, p.split("/")))
               for p in patterns)


def run_process(fault: Fault, case: Case) -> tuple[int, str]:
    """The command as its own process (``python -m reclor_lab``) with the fault's environment
    (a variable set to None is removed) and resource limits; (exit status, stderr)."""
    env = {**os.environ, "TQDM_DISABLE": "1"}
    for name, value in fault.env.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value

    def limit():
        for which, value in fault.limits.items():
            resource.setrlimit(which, (value, resource.getrlimit(which)[1]))

    done = subprocess.run([sys.executable, "-m", "reclor_lab", *fault.argv(case)], env=env, capture_output=True,
                          preexec_fn=limit if fault.limits else None, cwd=case.root)
    text = done.stderr.decode("utf-8", errors="replace")
    if done.returncode < 0:  # killed by a signal (an abort in native code): no message of the kit
        text += f"\nTraceback: killed by signal {-done.returncode}"
    return done.returncode, text


def classify(fault: Fault, case: Case) -> tuple[str, str]:
    """Run one fault on its case; (outcome, what was seen)."""
    from reclor_lab.cli import main

    fault.damage(case)
    before = snapshot(case.run, case.outside, case.data)
    if fault.env is not None:
        code, text = run_process(fault, case)
    else:
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), fault.inject(case):
                try:
                    code = main(fault.argv(case))
                except SystemExit as e:  # argparse: usage + one error line, status 2
                    code = e.code
        except BaseException as e:  # noqa: BLE001 - anything that escapes main is a traceback
            return "traceback", "".join(traceback.format_exception_only(type(e), e)).strip()[:300]
        text = err.getvalue()
    after = snapshot(case.run, case.outside, case.data)
    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p)
                     and not written_by_the_kit(Path(p), case.run, fault.writes))
    lost = fault.lost(case)
    if "Traceback" in text:
        return "traceback", text.strip()[-300:]
    if changed or lost:
        return "data lost", lost or f"changed: {changed[:3]}"
    # progress bars (a model loading) are no messages
    lines = [line for line in text.strip().splitlines() if line.strip() and not re.search(r"\d+%\|", line)]
    errors = [line for line in lines if "error:" in line]
    if fault.expect is None:
        return ("survived", "") if code == 0 else ("clear error", text.strip()[:300])
    if code == 0:
        return "silent wrong", "the command succeeded"
    one = (len(errors) == 1 and fault.expect in text
           and all(line.startswith(("reclor-lab: error:", "  - ", "usage:", "  ")) or "error:" in line
                   for line in lines))
    return ("clear error" if one else "unclear error"), text.strip()[:300]


def run_table(root: Path, faults: list[Fault] = FAULTS, say=print) -> dict[str, list[str]]:
    base_run, base_data = make_base(root / "base")
    tally: dict[str, list[str]] = {k: [] for k in OUTCOMES + ("unclear error",)}
    for i, fault in enumerate(faults):
        outcome, seen = classify(fault, make_case(base_run, base_data, root / f"case-{i:02d}"))
        tally[outcome].append(fault.name)
        say(f"{outcome:<13} {fault.kind:<13} {fault.name}" + (f"\n              {seen}" if outcome not in
                                                                ("survived", "clear error") else ""))
    return tally


if __name__ == "__main__":
    print("run the table with: python bench/faults.py (or pytest tests/test_faults.py)")
