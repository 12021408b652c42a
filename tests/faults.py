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
import hashlib
import io
import json
import os
import re
import shutil
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
    writes: tuple[str, ...] = field(default=())  # files of the run the command may (re)write


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


# --- the table ------------------------------------------------------------------------------------

R = lambda c: str(c.run)  # noqa: E731
RESUME = lambda c: ["train", "--resume", "--output-dir", str(c.run), "--epochs", "2"]  # noqa: E731
NEW = lambda *more: lambda c: ["train", "--output-dir", str(c.new), *more]  # noqa: E731
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
    # also
    Fault("a second training while one runs", "also", RESUME, expect="a training is in progress",
          inject=training_in_progress),
    Fault("predict on an intact run", "also", lambda c: ["predict", R(c), "--split", "val"],
          writes=("predictions-val.npy", "predictions-val.json")),
]


# --- running and classifying --------------------------------------------------------------------

def classify(fault: Fault, case: Case) -> tuple[str, str]:
    """Run one fault on its case; (outcome, what was seen)."""
    from reclor_lab.cli import main

    fault.damage(case)
    before = snapshot(case.run, case.outside, case.data)
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
    mine = {str(case.run / name) for name in fault.writes}
    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p) and p not in mine)
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
