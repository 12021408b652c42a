"""Inside the grading sandbox: the only kit code that runs a submission's code.

``python -m reclor_lab.course.runner JOB INPUTS`` runs in one student's sandbox
(:mod:`reclor_lab.course.sandbox`). ``JOB/job.json`` holds that student's exercise code (each
exercise's final ``def`` and what it needs, read by :mod:`reclor_lab.course.judge`); ``INPUTS``
holds what each exercise's function is called with (the check's own calls and the hidden
cases), as plain data (:mod:`reclor_lab.course.plain`). It holds no reference, no expected
answer and no comparison: the grader judges outside, on what this writes.

For each exercise a child process is forked from this one (the model, when an exercise needs one,
is built once before, from the kit's own files): it makes the exercise's giveaways unavailable
(:func:`block`), runs the code, calls the function on every input and sends the answers back
(a frame on a pipe: a JSON header, then safetensors bytes). This process forwards each frame to
the grader on file descriptor 3, kills whatever the exercise left running, and goes on to the
next; a crash or a limit costs only that exercise.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import re
import resource
import signal
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reclor_lab.course.plain import Obj, PlainDataError, Raised, decode, encode, read_frames, write_frame

#: Seed of every model built on either side of the wall: the sandbox's model and the grader's are
#: the same tensors (the head and LoRA are initialised at random).
MODEL_SEED = 1729
class NotAvailable(RuntimeError):
    """A package or library function that does the exercise's job, called while it is graded."""


# --- the objects an exercise is handed -------------------------------------------------------------------------

def tiny_model():
    """The kit's tiny 4-bit classifier, built the same way (same seed) inside and outside."""
    from reclor_lab.config import get_preset
    from reclor_lab.model import load_model, load_tokenizer

    cfg = get_preset("tiny")
    with _quiet():
        torch.manual_seed(MODEL_SEED)
        return load_model(cfg, load_tokenizer(cfg.model_name_or_path))


def with_lora(model):
    """``model`` with the tiny preset's LoRA adapters (changes ``model``; seeded)."""
    from reclor_lab.config import get_preset
    from reclor_lab.lora import inject_lora

    with _quiet():
        torch.manual_seed(MODEL_SEED + 1)
        return inject_lora(model, get_preset("tiny"))


def lora_base() -> nn.Module:
    """The base layer exercise 14's module wraps: the first decoder layer's 4-bit ``q_proj`` under the
    tiny preset's adapters, as the grader's context has it (``ctx.lora_layer.get_base_layer()``)."""
    return with_lora(tiny_model()).base_model.model.model.layers[0].self_attn.q_proj.get_base_layer()


def llama_shaped(names: list[str]) -> nn.Module:
    """A small Llama-shaped module (``model.layers[i].self_attn`` / ``.mlp``, a 4-bit head ``score``)
    whose 4-bit layers are called ``names`` (the last of each block is a plain linear)."""
    import bitsandbytes as bnb

    from reclor_lab.config import NUM_LABELS

    torch.manual_seed(MODEL_SEED)
    layers = nn.ModuleList()
    for _ in range(2):
        layer = nn.Module()
        for part, chosen in (("self_attn", names[:3]), ("mlp", names[3:])):
            block = nn.Module()
            for k, name in enumerate(chosen):
                block.add_module(name, nn.Linear(8, 8) if k == len(chosen) - 1 else bnb.nn.Linear4bit(8, 8))
            layer.add_module(part, block)
        layers.append(layer)
    body = nn.Module()
    body.add_module("layers", layers)
    model = nn.Module()
    model.add_module("model", body)
    model.add_module("score", bnb.nn.Linear4bit(8, NUM_LABELS))
    return model


class FixedMask(nn.Module):
    """A dropout whose mask was drawn in advance, so that every side applies the same one."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.mask = mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask


def trainable(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def fingerprint(model: nn.Module) -> float:
    """Sum of the trainable parameters: equal inside and outside when the models are."""
    return float(sum(p.detach().double().sum().item() for p in trainable(model)))


class Builder:
    """Builds the :class:`~reclor_lab.course.plain.Obj` an exercise is handed, once per ``ref``
    (the same object for every call of one check, as the check hands it)."""

    def __init__(self, base: dict[str, Any]) -> None:
        self.base = base  # prebuilt before any student code: {"model": …}
        self.made: dict[Any, Any] = {}

    def __call__(self, o: Obj) -> Any:
        ref = o.params.get("ref")
        if ref is not None and ref in self.made:
            return self.made[ref]
        made = self.make(o)
        if ref is not None:
            self.made[ref] = made
        return made

    def make(self, o: Obj) -> Any:  # noqa: C901 - one branch per kind of object
        p = o.params
        if o.kind in ("model", "peft_model"):
            model = self.base["model"] if o.kind == "model" else self.base.setdefault(
                "peft_model", with_lora(self.base["model"]))
            if p.get("fingerprint") is not None and abs(fingerprint(model) - p["fingerprint"]) > 1e-6 * (
                    1 + abs(p["fingerprint"])):
                raise RuntimeError("the sandbox's model differs from the grader's (a kit or library mismatch)")
            return model
        if o.kind == "lora_base":
            return self.base["lora_base"]
        if o.kind == "dropout":
            from reclor_lab.lora import LoRADropout

            layer = (LoRADropout if p.get("cls") == "LoRADropout" else nn.Dropout)(float(p["p"]))
            return layer.train(bool(p.get("training")))
        if o.kind == "replay_dropout":
            from reclor_lab.course.checks import _ReplayDropout

            return _ReplayDropout(p["output"], float(p["p"]))
        if o.kind == "fixed_mask":
            return FixedMask(p["mask"])
        if o.kind == "llama_shaped":
            return llama_shaped(list(p["names"]))
        if o.kind == "ModelShape":
            from reclor_lab.shapes import ModelShape

            return ModelShape(**p["fields"])
        if o.kind == "sgd":
            return torch.optim.SGD(trainable(self(p["model"])), lr=float(p["lr"]))
        if o.kind == "adamw":
            return torch.optim.AdamW(trainable(self(p["model"])), lr=float(p["lr"]),
                                     weight_decay=float(p["weight_decay"]))
        if o.kind == "lr_schedule":
            from reclor_lab.course.checks import LRSchedule

            return LRSchedule(**p["fields"])
        raise PlainDataError(f"no builder for {o.kind!r}")


def models_needed(value: Any, kinds: tuple[str, ...] = ("model", "peft_model")) -> bool:
    """Whether ``value`` (decoded inputs) hands any exercise the tiny model (or another of ``kinds``)."""
    if isinstance(value, Obj):
        return value.kind in kinds or models_needed(value.params, kinds)
    if isinstance(value, (list, tuple)):
        return any(models_needed(v, kinds) for v in value)
    if isinstance(value, dict):
        return any(models_needed(v, kinds) for v in value.values())
    return False


# --- the giveaways ---------------------------------------------------------------------------------------------

class Blocked:
    """Stands in for a giveaway: any use raises :class:`NotAvailable`."""

    def __init__(self, message: str) -> None:
        object.__setattr__(self, "_message", message)

    def _raise(self, *args, **kwargs):
        raise NotAvailable(object.__getattribute__(self, "_message"))

    __call__ = __str__ = __format__ = __iter__ = __len__ = __add__ = __radd__ = __mod__ = _raise
    __getitem__ = __contains__ = __mul__ = __bool__ = __hash__ = _raise

    def __getattr__(self, name):
        self._raise()

    def __repr__(self) -> str:
        return "<not available while grading>"


def block(names: list[str], number: int) -> list[str]:
    """Make every qualified name in ``names`` raise :class:`NotAvailable` when used: the module's
    attribute is replaced, and a Python function's code is swapped in place, so that an alias
    taken before (an import, a default argument, a decorator, a closure) raises too. Returns the
    names that do not resolve here (nothing to block)."""
    missing = []
    for qual in names:
        parent, attr, value = _resolve(qual)
        if parent is None:
            missing.append(qual)
            continue
        message = f"not available while grading exercise {number}: `{qual}` does the exercise's job"
        stub = Blocked(message)
        for fn in _functions(value):
            raiser = _raiser(message, fn)
            if raiser is not None:
                fn.__code__ = raiser
        try:
            setattr(parent, attr, stub)
        except (AttributeError, TypeError):
            pass
    return missing


#: Audit events refused while an exercise runs: starting another program (a fresh interpreter would
#: import the kit unblocked) and loading a C library (bitsandbytes calls its own through ctypes,
#: so calls into loaded ones stay allowed).
REFUSED_EVENTS = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.startfile",
                  "ctypes.dlopen")


def guard(files: set[str], number: int) -> None:
    """While exercise ``number`` runs: refuse to read the source of the modules its giveaways live
    in (a reload or an ``exec`` of that source would bring them back) and the audit events of
    :data:`REFUSED_EVENTS`. An audit hook stays for the life of the process (PEP 578): it is a
    hint like the blocking, not the wall; the sandbox is the wall."""
    message = f"not available while grading exercise {number}"

    def hook(event: str, args: tuple) -> None:
        if event in REFUSED_EVENTS:
            raise NotAvailable(f"{message}: {event}")
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.fsdecode(args[0])
            if path.endswith((".py", ".pyc")) and os.path.realpath(path) in files:
                raise NotAvailable(f"{message}: reading the source of {os.path.basename(path)}")

    sys.addaudithook(hook)


def sources_of(names: list[str]) -> set[str]:
    """The source files (and their caches) of the modules the giveaways ``names`` live in."""
    files = set()
    for qual in names:
        parent, _, _ = _resolve(qual)
        module = sys.modules.get(getattr(parent, "__name__", ""), parent)
        path = getattr(module, "__file__", None)
        if isinstance(path, str):
            files.add(os.path.realpath(path))
            cached = getattr(getattr(module, "__spec__", None), "cached", None)
            if isinstance(cached, str):
                files.add(os.path.realpath(cached))
    return files


def _resolve(qual: str):
    parts = qual.split(".")
    for k in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        try:
            for name in parts[k:-1]:
                obj = getattr(obj, name)
            return obj, parts[-1], getattr(obj, parts[-1])
        except (AttributeError, RuntimeError):
            return None, None, None
    return None, None, None


def _functions(value: Any) -> list[types.FunctionType]:
    if isinstance(value, type):  # a class: its own methods, so that every alias of it raises when used
        return [f for v in vars(value).values() if isinstance(v, types.FunctionType) for f in _functions(v)]
    found, seen = [], set()
    while isinstance(value, types.FunctionType) and id(value) not in seen:
        seen.add(id(value))
        found.append(value)
        value = getattr(value, "__wrapped__", None)
    return found


def _raiser(message: str, fn: types.FunctionType) -> types.CodeType | None:
    """A code object that raises ``message``, with ``fn``'s free variables (a swap needs the same)."""
    free = fn.__code__.co_freevars
    head = "".join(f"    {v} = None\n" for v in free)
    uses = "".join(f"        {v}\n" for v in free)
    src = (f"def outer():\n{head}    def f(*args, **kwargs):\n{uses}"
           f"        raise RuntimeError({message!r})\n    return f\n")
    ns: dict = {}
    exec(compile(src, "<grading>", "exec"), ns)  # noqa: S102 - our own fixed source
    code = ns["outer"]().__code__
    return code if code.co_freevars == free else None


# --- one exercise ---------------------------------------------------------------------------------------------

def run_exercise(exercise: dict, cases: list[dict], base: dict, out: int) -> None:
    """In the exercise's own process: block its giveaways, run its code, call its function on
    every case, write one frame of answers to ``out``."""
    answers: dict[str, Any] = {"number": exercise["number"]}
    files = sources_of(exercise.get("giveaways", []))
    block(exercise.get("giveaways", []), exercise["number"])
    guard(files, exercise["number"])
    probe = _resolve(exercise["probe"])[2] if exercise.get("probe") else None  # before any student code
    _write_modules(exercise.get("files", {}))
    module = types.ModuleType(f"submission_{exercise['name']}")  # a real module: dataclasses look it up
    sys.modules[module.__name__] = module
    namespace = module.__dict__
    for name, qual in exercise.get("uses", {}).items():
        parent, attr, value = _resolve(qual)
        namespace[name] = value
    try:
        exec(compile(exercise["code"], f"<{exercise['name']}, from code cell {exercise['cell']}>", "exec"),
             namespace)
        fn = namespace[exercise["name"]]
        if probe is not None:
            fn = probe(fn)
    except BaseException as e:  # noqa: BLE001 - the student's top-level code, whatever it raised
        answers["load_error"] = Raised.of(e).as_dict()
        _send(out, answers, [])
        return
    results = []
    for case in cases:
        build = Builder(base)
        results.append([_call(fn, call, build, exercise.get("record_params", False)) for call in case["calls"]])
    _send(out, answers, results)


def _write_modules(files: dict) -> None:
    """The modules the notebook wrote with ``%%writefile NAME.py``, written again into a folder of
    this exercise's own (in the sandbox's private working folder) that imports look in first."""
    if not files:
        return
    folder = Path(tempfile.mkdtemp(prefix="modules-", dir="."))
    for name, text in files.items():
        if isinstance(name, str) and re.fullmatch(r"[A-Za-z_]\w*\.py", name) and isinstance(text, str):
            (folder / name).write_text(text, encoding="utf-8")
    sys.path.insert(0, str(folder.resolve()))
    importlib.invalidate_caches()


def _send(out: int, header: dict, results: list) -> None:
    try:
        blob, meta = encode(results)
    except BaseException as e:  # noqa: BLE001 - an answer that is not plain data, or too big
        header["send_error"] = f"{type(e).__name__}: {str(e)[:200]}"
        blob, meta = encode([])
    header["answers"] = meta
    write_frame(out, header, blob)


def _call(fn, call: dict, build: Builder, record_params: bool) -> dict:
    """Call ``fn`` on one call's arguments; what came back and what the call did to its inputs."""
    args = _materialize(call["args"], build)
    if call.get("rng") is not None:
        torch.set_rng_state(call["rng"])
    watch = _Watch(args, call.get("training", []), record_params)
    out: dict[str, Any] = {}
    try:
        out["value"] = fn(*args)
    except BaseException as e:  # noqa: BLE001 - whatever the student's function raised
        out["raised"] = Raised.of(e).as_dict()
    out.update(watch.report())
    return out


class _Watch:
    """What a call does to its inputs, as the check's test would see it: the forward passes of a
    model it is handed (grad mode, train mode), the model's mode afterwards, dicts it changed, and
    for a train step the trainable parameters after it and whether a frozen one moved."""

    def __init__(self, args: list, training: list, record_params: bool) -> None:
        self.args, self.record_params = args, record_params
        self.models = [a for a in args if isinstance(a, nn.Module) and hasattr(a, "config")]
        for model, mode in zip(self.models, training):
            model.train(bool(mode))
        self.seen: list[list[bool]] = []
        self.hooks = [m.register_forward_pre_hook(self._seen) for m in self.models]
        self.dicts = {i: (dict(a), {k: v.clone() for k, v in a.items() if isinstance(v, torch.Tensor)})
                      for i, a in enumerate(args) if isinstance(a, dict)}
        self.frozen = [_frozen_sum(m) for m in self.models] if record_params else []

    def _seen(self, module: nn.Module, inputs) -> None:
        self.seen.append([torch.is_grad_enabled(), module.training])

    def report(self) -> dict:
        for h in self.hooks:
            h.remove()
        out = {"seen": self.seen, "training_after": [m.training for m in self.models],
               "mutated": [i for i, (keys, values) in self.dicts.items() if _mutated(self.args[i], keys, values)]}
        if self.record_params:
            out["params"] = [[p.detach().clone() for p in trainable(m)] for m in self.models]
            out["frozen_changed"] = [_frozen_sum(m) != s for m, s in zip(self.models, self.frozen)]
        return out


def _materialize(value: Any, build: Builder) -> Any:
    """``value`` with every :class:`Obj` in it built (the arguments as the check hands them)."""
    if isinstance(value, Obj):
        return build(value)
    if isinstance(value, list):
        return [_materialize(v, build) for v in value]
    if isinstance(value, tuple):
        return tuple(_materialize(v, build) for v in value)
    if isinstance(value, dict):
        return {k: _materialize(v, build) for k, v in value.items()}
    return value


def _mutated(now: dict, before: dict, values: dict) -> bool:
    return (now.keys() != before.keys() or any(now[k] is not before[k] for k in before)
            or any(not torch.equal(now[k], v) for k, v in values.items()))


def _frozen_sum(model: nn.Module) -> float:
    return sum(p.detach().sum(dtype=torch.float64).item() for p in model.parameters() if not p.requires_grad)


# --- the student's sandbox --------------------------------------------------------------------------------------

def _quiet():
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    return stack


def _vm_size() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _in_own_sandbox() -> bool:
    """Whether this process is in a pid namespace of its own made by bubblewrap (its pid 1 is
    bwrap): the only place where :func:`_sweep` may run."""
    try:
        return Path("/proc/1/comm").read_text(encoding="ascii").strip() == "bwrap"
    except OSError:
        return False


def _sweep(pgid: int) -> None:
    """Kill what an exercise left running: its process group, and, inside a sandbox of its own
    (:func:`_in_own_sandbox`), every process but this one and the namespace's init, so nothing
    an exercise started lives on into the next. Outside a sandbox (``--no-sandbox``) only the group."""
    with contextlib.suppress(OSError):
        os.killpg(pgid, signal.SIGKILL)
    if SWEEP and _in_own_sandbox():
        me = os.getpid()
        for name in os.listdir("/proc"):
            if name.isdigit() and int(name) not in (1, me):
                with contextlib.suppress(OSError):
                    os.kill(int(name), signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


#: Set by ``--sweep`` on the runner's command line, which only the sandbox passes.
SWEEP = False


def _limit(limits: dict) -> None:
    cpu = int(limits["cpu_seconds"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    memory = _vm_size() + int(limits["memory_bytes"])
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)


def judge_one(exercise: dict, cases: list[dict], base: dict, limits: dict, out: int) -> None:
    """Fork the exercise's process, forward its frame to ``out`` (or what stopped it), clean up."""
    r, w = os.pipe()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(r)
            os.close(out)
            os.setpgid(0, 0)
            _limit(limits)
            run_exercise(exercise, cases, base, w)
        except BaseException as e:  # noqa: BLE001 - the runner's own failure: say what it was
            code = 1
            with contextlib.suppress(BaseException):
                write_frame(w, {"crashed": f"{type(e).__name__}: {str(e)[:300]}"})
        os._exit(code)
    os.close(w)
    frames, stopped = read_frames(r, time.monotonic() + float(limits["wall_seconds"]), count=1)
    os.close(r)
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    _sweep(pid)
    header = {"number": exercise["number"], "seconds": round(time.monotonic() - t0, 3)}
    if frames:
        got, blob = frames[0]
        header.update({k: got[k] for k in ("answers", "load_error", "send_error", "crashed") if k in got})
        write_frame(out, header, blob)
        return
    if stopped == "time":
        header["limit"] = f"wall-clock time ({limits['wall_seconds']} s) exceeded"
    elif stopped == "size":
        header["limit"] = "its answers were over the size cap"
    elif os.WIFSIGNALED(status) and os.WTERMSIG(status) in (signal.SIGXCPU, signal.SIGKILL):
        header["limit"] = f"CPU time ({limits['cpu_seconds']} s) exceeded"
    else:
        why = (signal.Signals(os.WTERMSIG(status)).name if os.WIFSIGNALED(status)
               else f"exit status {os.WEXITSTATUS(status)}")
        header["crashed"] = f"its process ended without answers ({why})"
    write_frame(out, header)


def main(job_dir: str, inputs_dir: str, out: int = 3) -> int:
    torch.set_num_threads(1)
    job = json.loads(Path(job_dir, "job.json").read_text(encoding="utf-8"))
    meta = Path(inputs_dir, "inputs.json").read_text(encoding="utf-8")
    inputs = decode(Path(inputs_dir, "inputs.safetensors").read_bytes(), meta)
    base: dict[str, Any] = {}
    if models_needed([inputs[str(e["number"])] for e in job["exercises"]]):
        base["model"] = tiny_model()
    if models_needed([inputs[str(e["number"])] for e in job["exercises"]], ("lora_base",)):
        base["lora_base"] = lora_base()
    for exercise in job["exercises"]:  # the giveaways' modules, imported once before any student code
        for qual in exercise.get("giveaways", []):
            _resolve(qual)
    import ctypes

    with contextlib.suppress(OSError, AttributeError):  # no one in the sandbox may ptrace this process
        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 0
    for exercise in job["exercises"]:
        judge_one(exercise, inputs[str(exercise["number"])], base, job["limits"], out)
    return 0


if __name__ == "__main__":
    SWEEP = sys.argv[4:] == ["--sweep"]
    status = main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
    # Every frame is written (os.write, unbuffered): end here, without tearing down torch's and
    # transformers' modules one by one (about 0.8 s of a sandbox's life on the 2-core CPU).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
