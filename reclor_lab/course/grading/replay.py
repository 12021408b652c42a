"""The grader's two passes around the sandbox: what to call a submission with, then the verdicts.

* :func:`prepare` (once per grading run, before any sandbox): for each exercise, the notebook
  check's own test is run with the **reference** behind a recorder, which notes every call the
  test makes (its arguments, as plain data); the hidden cases are drawn from the grading seed and
  their right answers computed here. The calls go to every sandbox as data; the answers stay here.
* :func:`verdict` (per student and exercise, on the answers that came back): the check's test
  runs again with a :class:`Replay` in place of the function, which hands back the sandbox's
  answers call by call (and replays what a call did to its inputs: the model's mode, a train
  step's parameters, a changed batch), so the verdict and its hint are the check's own; then the
  hidden answers are compared with the reference's.
"""

from __future__ import annotations

import builtins
import dataclasses
import random
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from reclor_lab.course import checks, runner
from reclor_lab.course.checks import EXERCISES, build_test
from reclor_lab.course.grading.exercises import SPECS, Context
from reclor_lab.course.plain import Obj, Raised, encode
from reclor_lab.shapes import ModelShape

PASS, FAIL, TODO = "✅", "❌", "⏳"


@dataclass
class Prepared:
    """One exercise, ready for every submission: the calls a sandbox makes (check first, then one
    case per hidden one) and, kept here, each hidden case's name and right answer."""

    number: int
    name: str
    cases: list[dict] = field(default_factory=list)  # [{"calls": [{"args", "rng"?, "training"}]}]
    hidden: list[tuple[str, Any]] = field(default_factory=list)  # (what, want)
    test: Any = None  # the check's test, built on the grader's context (replayed per submission)


class _Namer:
    """Names the objects a check hands a function (``Obj``), so they can cross as data."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.refs: dict[int, int] = {}

    def obj(self, x: Any) -> Obj | None:  # noqa: C901 - one branch per kind of object
        ref = self.refs.setdefault(id(x), len(self.refs))
        cache = self.ctx._cache
        if x is cache.get("model") or x is cache.get("peft"):
            kind = "model" if x is cache.get("model") else "peft_model"
            return Obj(kind, {"ref": ref, "fingerprint": runner.fingerprint(x)})
        if "peft" in cache and x is self.ctx.lora_layer.get_base_layer():
            return Obj("lora_base", {"ref": ref})
        if isinstance(x, checks._ReplayDropout):
            return Obj("replay_dropout", {"output": x.output.clone(), "p": x.p})
        if isinstance(x, nn.Dropout):
            return Obj("dropout", {"cls": type(x).__name__, "p": x.p, "training": x.training})
        if isinstance(x, runner.FixedMask):
            return Obj("fixed_mask", {"mask": x.mask.clone()})
        if isinstance(x, ModelShape):
            return Obj("ModelShape", {"fields": dataclasses.asdict(x)})
        if isinstance(x, torch.optim.SGD):
            return Obj("sgd", {"ref": ref, "lr": x.param_groups[0]["lr"], "model": self.obj(self.ctx.peft_model)})
        if isinstance(x, torch.optim.AdamW):
            group = x.param_groups[0]
            return Obj("adamw", {"ref": ref, "lr": group["lr"], "weight_decay": group["weight_decay"],
                                 "model": self.obj(self.ctx.peft_model)})
        if isinstance(x, checks.LRSchedule):
            return Obj("lr_schedule", {"fields": dataclasses.asdict(x)})
        return None

    def snapshot(self, x: Any) -> Any:
        """``x`` as it is now: tensors copied, known objects named, containers rebuilt."""
        named = self.obj(x) if not isinstance(x, (str, int, float, bool, type(None), list, tuple, dict,
                                                   torch.Tensor)) else None
        if named is not None:
            return named
        if isinstance(x, torch.Tensor):
            t = x.detach().clone()
            return t.requires_grad_(x.requires_grad) if t.is_floating_point() else t
        if isinstance(x, list):
            return [self.snapshot(v) for v in x]
        if isinstance(x, tuple):
            return tuple(self.snapshot(v) for v in x)
        if isinstance(x, dict):
            return {k: self.snapshot(v) for k, v in x.items()}
        if isinstance(x, (str, int, float, bool, type(None))):
            return x
        raise TypeError(f"the grader cannot send a {type(x).__name__} into the sandbox: name it in _Namer.obj")


def _models(args) -> list[nn.Module]:
    return [a for a in args if isinstance(a, nn.Module) and hasattr(a, "config")]


def prepare(ctx: Context, seed: int) -> dict[int, Prepared]:
    """Every exercise's calls and hidden answers for this grading seed (the same for every student;
    a notebook's cases are drawn from ``seed`` and the notebook, as a re-grade draws them)."""
    prepared: dict[int, Prepared] = {}
    for number, (notebook, _, name) in sorted(EXERCISES.items()):
        spec = SPECS[name]
        rng = random.Random(f"{seed}:{notebook}:{number}")
        ctx.seed = rng.randrange(2**31)
        namer = _Namer(ctx)
        calls: list[dict] = []

        def recorder(*args, _spec=spec, _calls=calls, _namer=namer):
            call = {"args": _namer.snapshot(list(args)), "training": [m.training for m in _models(args)]}
            if not _calls:
                call["rng"] = torch.get_rng_state()
            _calls.append(call)
            return _spec.reference(*args)

        recorder.__name__ = name
        recorder.gives_facts = True  # a check that probes a class (exercise 14) calls it as the probe
        test = build_test(spec.check, *spec.inputs(ctx))
        symbol, line = checks._judge(number, recorder, test)
        if symbol != PASS:
            raise RuntimeError(f"exercise {number}: the reference fails its own check ({line})")
        p = Prepared(number, name, cases=[{"calls": calls}], test=test)
        for what, args in (spec.hidden(rng, ctx) if spec.hidden else []):
            build = runner.Builder({"model": ctx.model, "peft_model": ctx.peft_model})
            real = runner._materialize(list(args), build)
            hidden_namer = _Namer(ctx)
            p.cases.append({"calls": [{"args": [a if isinstance(a, Obj) else hidden_namer.snapshot(r)
                                                for a, r in zip(args, real)],
                                       "training": [m.training for m in _models(real)]}]})
            p.hidden.append((what, spec.reference(*real)))
        prepared[number] = p
    return prepared


def inputs_blob(prepared: dict[int, Prepared]) -> tuple[bytes, str]:
    """What every sandbox reads: each exercise's calls, as safetensors + JSON."""
    return encode({str(n): p.cases for n, p in prepared.items()})


# --- the verdicts -------------------------------------------------------------------------------------------

def raised(r: Raised) -> BaseException:
    """The exception a call raised inside, rebuilt from its name and message (never its object)."""
    if r.not_implemented:
        return NotImplementedError(r.message)
    if r.type_name == "_Fail":
        return checks._Fail(r.message)
    cls = getattr(builtins, r.type_name, None)
    if isinstance(cls, type) and issubclass(cls, Exception) and not issubclass(cls, NotImplementedError):
        try:
            return cls(r.message)
        except Exception:  # noqa: BLE001 - an exception class that wants other arguments
            pass
    name = r.type_name if r.type_name.isidentifier() else "Exception"
    return type(name, (Exception,), {})(r.message)


class Replay:
    """Stands in for the submission's function when the check's test runs again outside: call
    ``k`` returns (or raises) what the sandbox's call ``k`` did, and does to the test's objects
    what that call did to its own (the model's mode and forward passes as the test's hooks see
    them, a train step's parameters, a changed batch or frozen weight). Plain data only."""

    gives_facts = True  # for a class's exercise (14) the answers are the probe's facts, not the class

    def __init__(self, name: str, answers: list[dict]) -> None:
        self.__name__ = name
        self.answers = answers
        self.k = 0
        self.undo: list = []

    def __call__(self, *args):
        if self.k >= len(self.answers):
            raise checks._Fail("the sandbox sent fewer answers than the check asked for")
        a = self.answers[self.k]
        self.k += 1
        models = _models(args)
        for m in models:
            for grad, training in a.get("seen", []):
                m.train(bool(training))
                with torch.set_grad_enabled(bool(grad)):
                    for hook in list(m._forward_pre_hooks.values()):
                        hook(m, ())
        for m, training in zip(models, a.get("training_after", [])):
            m.train(bool(training))
        for i in a.get("mutated", []):
            if isinstance(i, int) and i < len(args) and isinstance(args[i], dict):
                args[i]["(changed inside the sandbox)"] = None
        for m, params, frozen in zip(models, a.get("params", []), a.get("frozen_changed", [])):
            self._put(m, params, frozen)
        if "raised" in a:
            raise raised(Raised.from_dict(a["raised"]))
        return a.get("value")

    def _put(self, model: nn.Module, params: list, frozen_changed: bool) -> None:
        mine = runner.trainable(model)
        if len(params) != len(mine) or any(not isinstance(v, torch.Tensor) or v.shape != p.shape
                                           for p, v in zip(mine, params)):
            raise checks._Fail("the sandbox sent parameters of other shapes back")
        with torch.no_grad():
            for p, v in zip(mine, params):
                p.copy_(v)
            if frozen_changed:  # make the test's checksum see it; put back by restore()
                p = next(p for p in model.parameters() if not p.requires_grad)
                self.undo.append((p, p.detach().clone()))
                p.add_(1)

    def restore(self) -> None:
        with torch.no_grad():
            for p, value in reversed(self.undo):
                p.copy_(value)
        self.undo.clear()


def verdict(number: int, prepared: Prepared, ctx: Context, answers: list[list[dict]]) -> tuple[str, str, str]:
    """``(status, reason, hidden case that failed)`` of one exercise from the sandbox's answers
    (``answers[0]``: the check's calls; then one list per hidden case)."""
    spec = SPECS[prepared.name]
    replay = Replay(prepared.name, answers[0] if answers else [])
    try:
        symbol, line = checks._judge(number, replay, prepared.test)
    finally:
        replay.restore()
    if symbol != PASS:
        return symbol, line, ""
    for (what, want), got in zip(prepared.hidden, answers[1:]):
        a = got[0] if got else {}
        if "raised" in a:
            e = Raised.from_dict(a["raised"])
            return FAIL, f"passes the check's own cases but raised {e.type_name} on {what} (drawn when grading)", what
        if not spec.same(a.get("value"), want):
            return FAIL, (f"passes the check's own cases but not {what} (drawn when grading): an answer that "
                          "fits only the check's cases does not count"), what
    return PASS, line, ""
