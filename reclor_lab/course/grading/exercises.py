"""Every exercise as the grader judges it: one :class:`Exercise` entry each in :data:`SPECS`.

An entry says how to build the exercise's inputs (the notebook check's own, and hidden cases
drawn from the grading seed), what the sandbox calls, the reference, the comparison with its
tolerance, and the package functions that would do the job (unavailable inside while it runs).
To add an exercise: its check in :mod:`reclor_lab.course.checks` (with :data:`EXERCISES`), then
an entry here; ``tests/test_grade.py`` holds every entry to its reference passing it.

Tolerances: float answers are fp32 maths done in another order, so they agree to a relative
``checks.RTOL`` (1e-4) of the reference, which is far above fp32's rounding (2**-24 per
operation, a few hundred operations at most) and far below any wrong formula's difference; codes,
positions, counts, names and NF4 values are exact; the LoRA layer uses the rounding bound of the
dtype its kernel computes in (:func:`reclor_lab.lora.lora_error_bound`).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from reclor_lab.config import NUM_LABELS
from reclor_lab.course import runner
from reclor_lab.course.checks import (
    RTOL,
    _lora_linear_problem,
    _qlora_model_problem,
    _close,
    check_accuracy,
    check_class_weights,
    check_count_lora_params,
    check_evaluation_pass,
    check_format_record,
    check_last_token_index,
    check_lora_forward,
    check_lora_linear,
    check_lora_targets,
    check_nf4_block,
    check_qlora_memory,
    check_qlora_model,
    check_rule_baseline,
    check_train_step,
    check_train_epoch,
    check_weighted_ce,
    reference_accuracy,
    reference_class_weights,
    reference_count_lora_params,
    reference_evaluation_pass,
    reference_format_record,
    reference_last_token_index,
    reference_lora_forward,
    reference_lora_linear_facts,
    reference_lora_targets,
    reference_nf4_block,
    reference_qlora_memory,
    reference_qlora_model_facts,
    reference_rule_baseline,
    reference_train_step,
    reference_train_epoch,
    reference_weighted_ce,
)
from reclor_lab.course.plain import Obj
from reclor_lab.shapes import ModelShape

CHECKS = "reclor_lab.course.checks."


@dataclass(frozen=True)
class Exercise:
    """How the grader judges one exercise.

    * ``check``: the notebook's check (``check_X(fn, *inputs)``). The sandbox calls the
      submission's function with what the check's test would call it with; outside, the test
      runs again on those answers (its hints included).
    * ``reference``: the right answer of a hidden case, computed outside.
    * ``inputs(ctx)``: the check's arguments after ``fn``, from the grader's :class:`Context`.
    * ``hidden(rng, ctx)``: cases drawn from the grading seed, ``[(what, args)]``; an answer must
      ``same(got, reference(*args))``. ``None``: no hidden cases (say why next to the entry).
    * ``giveaways``: qualified names that do the exercise's job; inside the sandbox each raises
      "not available while grading exercise N" while this exercise runs.
    * ``record_params``: the function changes the model it is handed (a train step): the sandbox
      sends back the trainable parameters after each call, and the replay puts them in place.
    * ``probe``: the exercise's code defines a class, not a function: the qualified name of the
      kit function that turns it, inside the sandbox, into the function the check's test calls
      (exercise 14: ``lora_linear_facts``, which builds the module and returns plain facts); or a
      function whose answer cannot cross as data (exercise 15's model: ``qlora_model_facts`` calls it
      and returns the model's facts).
    """

    check: Callable
    reference: Callable
    inputs: Callable[[Any], tuple] = lambda ctx: ()
    hidden: Callable[[Any, Any], list] | None = None
    same: Callable[[Any, Any], bool] = lambda got, want: got == want
    giveaways: tuple[str, ...] = ()
    record_params: bool = False
    probe: str | None = None


class Context:
    """What the checks need besides the student's function, built once per grading worker from the
    kit's tiny model (never from a submission), the same way the sandbox builds it
    (:func:`reclor_lab.course.runner.tiny_model`): ``model``, ``peft_model``, ``tokenizer``,
    ``lora_layer``, ``train_step_inputs``, and ``seed`` (the grading seed's draw for checks that
    draw their own cases)."""

    def __init__(self) -> None:
        self._cache: dict[str, object] = {}
        self.seed: int | None = None

    def _once(self, key: str, build):
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    @property
    def cfg(self):
        from reclor_lab.config import get_preset

        return self._once("cfg", lambda: get_preset("tiny"))

    @property
    def tokenizer(self):
        from reclor_lab.model import load_tokenizer

        return self._once("tokenizer", lambda: load_tokenizer(self.cfg.model_name_or_path))

    @property
    def model(self):
        return self._once("model", runner.tiny_model)

    @property
    def peft_model(self):
        return self._once("peft", lambda: runner.with_lora(runner.tiny_model()))

    @property
    def lora_layer(self):
        return self.peft_model.base_model.model.model.layers[0].self_attn.q_proj

    @property
    def train_step_inputs(self) -> tuple:
        def build():
            from reclor_lab.course.checks import CHECK_RECORDS
            from reclor_lab.data import class_weights, format_example

            texts = [format_example(r, self.cfg.template) for r in CHECK_RECORDS]
            enc = self.tokenizer(texts, padding=True, return_tensors="pt")
            labels = [r["label"] for r in CHECK_RECORDS]
            batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                     "labels": torch.tensor(labels)}
            # weights from a skewed label list (0.5, 1.5, 1.5, 1.5): with uniform ones an unweighted
            # loss would give the same step and pass
            return batch, class_weights(labels + [0, 0, 3])

        batch, weights = self._once("batch", build)
        return self.peft_model, batch, weights

    @property
    def train_epoch_inputs(self) -> tuple:
        """Exercise 16's epoch, drawn from the grading seed (``seed``): the check records with their
        options rotated (so the labels vary: 12 records), shuffled and cut into 3-4 batches (the first
        of 3 with two labels at least, the others of 1-3), four different class weights, and the
        optimizer step the epoch starts at."""
        from reclor_lab.course.checks import CHECK_RECORDS
        from reclor_lab.data import format_example

        rng = random.Random(self.seed)
        records = []
        for r in CHECK_RECORDS:
            for k in range(NUM_LABELS):
                answers = r["answers"][k:] + r["answers"][:k]
                records.append(r | {"answers": answers, "label": (r["label"] - k) % NUM_LABELS})
        rng.shuffle(records)
        # the first batch holds 3 records with two labels at least, so that the class weights act
        # (at batch 1, or on one label, the weighted mean is the plain one)
        first_other = next(k for k in range(3, len(records)) if records[k]["label"] != records[0]["label"])
        records[1], records[first_other] = records[first_other], records[1]
        sizes = [3] + [rng.randint(1, 3) for _ in range(rng.randint(2, 3))]  # at most 12 records
        batches, start = [], 0
        for n in sizes:
            chunk = records[start:start + n]
            start += n
            enc = self.tokenizer([format_example(r, self.cfg.template) for r in chunk], padding=True,
                                 return_tensors="pt")
            batches.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                            "labels": torch.tensor([r["label"] for r in chunk])})
        weights = torch.tensor(rng.sample([0.5, 1.0, 2.0, 3.0], NUM_LABELS))  # four different weights
        step = rng.randint(1, 5)  # not 0: an epoch that reads the schedule from step 0 must show
        return self.peft_model, batches, weights, step


def _hidden_eval(rng, ctx) -> list:
    """Uneven batches of hidden records with random labels and class weights, for the evaluation pass."""
    device = next(ctx.model.parameters()).device
    cases = []
    for k in range(2):
        n = rng.randint(5, 9)
        records = [{"context": _phrase(rng, rng.randint(4, 12)), "question": _phrase(rng, rng.randint(3, 8)),
                    "answers": [_phrase(rng, rng.randint(1, 5)) for _ in range(NUM_LABELS)]} for _ in range(n)]
        texts = [reference_format_record(r) for r in records]
        cuts = sorted(rng.sample(range(1, n), rng.randint(1, 3)))
        batches = []
        for a, b in zip([0] + cuts, cuts + [n]):
            enc = ctx.tokenizer(texts[a:b], padding=True, return_tensors="pt")
            labels = torch.tensor([rng.randrange(NUM_LABELS) for _ in range(b - a)], device=device)
            batches.append({"input_ids": enc["input_ids"].to(device),
                            "attention_mask": enc["attention_mask"].to(device), "labels": labels})
        weights = torch.tensor([rng.choice([0.5, 1.0, 2.0, 3.0]) for _ in range(NUM_LABELS)])
        cases.append((f"hidden batches {k} (sizes {[b - a for a, b in zip([0] + cuts, cuts + [n])]})",
                      (ctx.model, batches, weights)))
    return cases


def _same_pair(got: Any, want: tuple[float, float]) -> bool:
    try:
        a, b = (float(x.item() if isinstance(x, torch.Tensor) else x) for x in got)
    except (TypeError, ValueError, RuntimeError):
        return False
    return _close(a, want[0]) and _close(b, want[1])


_WORDS = ("lantern", "river", "council", "orchard", "bridge", "keeper", "winter", "market", "signal",
          "harbor", "engine", "garden", "ledger", "meadow", "quarry", "tunnel", "violin", "copper")


def _phrase(rng, n: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n)).capitalize() + "."


def _hidden_records(rng, ctx) -> list:
    cases = []
    for k in range(3):
        record = {"context": _phrase(rng, rng.randint(4, 12)), "question": _phrase(rng, rng.randint(3, 8)),
                  "answers": [_phrase(rng, rng.randint(1, 5)) for _ in range(NUM_LABELS)],
                  "label": rng.randrange(NUM_LABELS), "id_string": f"hidden_{k}"}
        cases.append((f"hidden record {k}", (record,)))
    return cases


def _hidden_labels(rng, ctx) -> list:
    cases = []
    for k in range(3):
        labels = list(range(NUM_LABELS)) + [rng.randrange(NUM_LABELS) for _ in range(rng.randint(4, 30))]
        rng.shuffle(labels)
        cases.append((f"hidden labels {k} ({len(labels)} labels)", (labels,)))
    return cases


def _same_floats(got: Any, want: Sequence[float]) -> bool:
    try:
        got = [float(x) for x in got]
    except (TypeError, ValueError):
        return False
    return len(got) == len(want) and all(_close(a, b) for a, b in zip(got, want))


def _hidden_ids(rng, ctx) -> list:
    """Right-padded rows of random token ids (pad inside some rows' text too)."""
    pad = ctx.tokenizer.pad_token_id
    vocab = [i for i in range(3, min(ctx.tokenizer.vocab_size, 500)) if i != pad]
    cases = []
    for k in range(2):
        width = rng.randint(6, 14)
        rows = []
        for r in range(rng.randint(2, 5)):
            n = width if r == 0 else rng.randint(1, width)
            row = [rng.choice(vocab) for _ in range(n)] + [pad] * (width - n)
            if n > 2 and rng.random() < 0.5:
                row[rng.randrange(1, n - 1)] = pad
            rows.append(row)
        cases.append((f"hidden batch {k}", (torch.tensor(rows), pad)))
    return cases


def _same_positions(got: Any, want: torch.Tensor) -> bool:
    if isinstance(got, (list, tuple)):
        got = torch.tensor(got)
    return (isinstance(got, torch.Tensor) and not got.is_floating_point() and got.dtype != torch.bool
            and torch.equal(got.detach().cpu().long().flatten(), want.long().flatten()))


def _hidden_blocks(rng, ctx) -> list:
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    return [(f"hidden block {k}", (torch.randn(64, generator=g) * rng.uniform(0.005, 0.2),)) for k in range(3)]


def _same_nf4(got: Any, want: tuple) -> bool:
    try:
        codes, absmax, values = got
        return (torch.equal(torch.as_tensor(codes).detach().cpu().flatten().long(), want[0])
                and torch.equal(torch.as_tensor(absmax).detach().float().cpu().flatten()[0], want[1])
                and torch.equal(torch.as_tensor(values).detach().float().cpu().flatten(), want[2]))
    except Exception:
        return False


def _hidden_module(rng, ctx) -> list:
    """A small Llama-shaped model (:func:`reclor_lab.course.runner.llama_shaped`) whose 4-bit layers
    have names drawn at grading time, with a plain linear among them and a 4-bit head ``score``."""
    names = rng.sample(["wq", "wk", "wv", "wo", "proj_in", "proj_out", "fc1", "fc2", "gate_x", "mix"], 6)
    return [("a hidden Llama-shaped model with other layer names", (Obj("llama_shaped", {"names": names}),))]


def _same_list(got: Any, want: list) -> bool:
    return isinstance(got, (list, tuple)) and list(got) == want


def _hidden_shapes(rng, ctx) -> list:
    cases = []
    for k in range(3):
        shapes = [(rng.randint(1, 5000), rng.randint(1, 5000)) for _ in range(rng.randint(1, 6))]
        cases.append((f"hidden shapes {k}", (shapes, rng.choice([1, 2, 4, 8, 16, 32, 64]))))
    return cases


def _same_int(got: Any, want: int) -> bool:
    return isinstance(got, int) and not isinstance(got, bool) and got == want


def _hidden_lora(rng, ctx) -> list:
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    cases = []
    for k in range(2):
        out_f, in_f, r = rng.randint(4, 40), rng.randint(4, 40), rng.choice([1, 2, 4, 8])
        alpha = r * rng.choice([0.5, 1.0, 2.0, 4.0])
        x = torch.randn(rng.randint(1, 5), in_f, generator=g)
        W0 = torch.randn(out_f, in_f, generator=g) / in_f ** 0.5
        A = torch.randn(r, in_f, generator=g) / in_f ** 0.5
        B = torch.randn(out_f, r, generator=g) / r ** 0.5
        mask = (torch.rand(x.shape, generator=g) > 0.25).float() / 0.75
        cases.append((f"hidden layer {k} ({out_f}×{in_f}, r={r}, alpha={alpha:g}, dropout on)",
                      (x, W0, A, B, alpha, r, Obj("fixed_mask", {"mask": mask}))))
    return cases


def _same_tensor(got: Any, want: torch.Tensor) -> bool:
    return (isinstance(got, torch.Tensor) and got.shape == want.shape
            and torch.allclose(got.detach().float().cpu(), want.detach().float(), rtol=RTOL, atol=1e-5))


def _hidden_memory(rng, ctx) -> list:
    cases = []
    for k in range(2):
        heads = rng.choice([8, 16, 24, 40])
        shape = ModelShape(layers=rng.randint(4, 48), hidden=heads * 128, intermediate=rng.randint(8, 40) * 512,
                           heads=heads, kv_heads=heads, vocab=rng.choice([32000, 50000, 128256]))
        cases.append((f"a hidden model shape {k} ({shape.layers} layers, hidden {shape.hidden})",
                      (shape, rng.randint(1, 8), rng.choice([128, 256, 512, 1024]), rng.choice([4, 8, 16, 64]),
                       rng.random() < 0.5)))
    return cases


def _same_memory(got: Any, want: dict) -> bool:
    if not isinstance(got, dict) or set(got) != set(want):
        return False
    try:
        return all(math.isclose(float(got[k]), want[k], rel_tol=1e-6) for k in want)
    except (TypeError, ValueError):
        return False


def _hidden_ce(rng, ctx) -> list:
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    cases = []
    for k in range(2):
        n = rng.randint(2, 9)
        weights = torch.rand(NUM_LABELS, generator=g) * 3 + 0.2
        cases.append((f"hidden batch {k} of {n}", (torch.randn(n, NUM_LABELS, generator=g) * 2,
                                                    torch.randint(0, NUM_LABELS, (n,), generator=g), weights)))
    return cases


def _same_scalar(got: Any, want: torch.Tensor) -> bool:
    return (isinstance(got, torch.Tensor) and got.dim() == 0
            and torch.allclose(got.detach().float().cpu(), want.detach().float(), rtol=RTOL, atol=1e-6))


def _hidden_batches(rng, ctx) -> list:
    cases = []
    for k in range(3):
        batches = []
        for _ in range(rng.randint(1, 5)):
            n = rng.randint(1, 8)
            draw = [rng.randrange(NUM_LABELS) for _ in range(2 * n)]
            batches.append((draw[:n], draw[n:]))
        cases.append((f"hidden batches {k}", (batches,)))
    return cases


def _same_float(got: Any, want: float) -> bool:
    if isinstance(got, torch.Tensor) and got.dim() == 0:
        got = got.item()
    return isinstance(got, (int, float)) and not isinstance(got, bool) and _close(float(got), want)


def _hidden_lora_linear(rng, ctx) -> list:
    """Plain ``nn.Linear`` bases (crossing as their weights) of shapes, ranks, alphas, dropouts and
    input batches drawn at grading time, a bias or none."""
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    cases = []
    for k in range(2):
        out_f, in_f, r = rng.randint(4, 40), rng.randint(4, 40), rng.choice([1, 2, 4, 8])
        alpha, p = r * rng.choice([0.5, 2.0, 4.0]), rng.choice([0.1, 0.2, 0.5])
        base = {"weight": torch.randn(out_f, in_f, generator=g) / in_f ** 0.5,
                "bias": torch.randn(out_f, generator=g) if rng.random() < 0.5 else None}
        lead = (rng.randint(1, 4),) if k == 0 else (2, rng.randint(1, 3))
        A = torch.randn(r, in_f, generator=g) / in_f ** 0.5
        B = torch.randn(out_f, r, generator=g) / r ** 0.5
        cases.append((f"hidden layer {k} ({out_f}×{in_f}, r={r}, alpha={alpha:g}, dropout {p})",
                      (base, r, alpha, p, A, B, torch.randn(*lead, in_f, generator=g),
                       torch.randn(*lead, out_f, generator=g), rng.randrange(10**6))))
    return cases


def _same_lora_linear(got: Any, want: dict) -> bool:
    try:
        return _lora_linear_problem(got, want) is None
    except Exception:  # noqa: BLE001 - facts of the wrong kinds: not the same
        return False


def _hidden_qlora_model(rng, ctx) -> list:
    """The same folder built in another compute dtype than the check's bf16, drawn at grading time
    (one more tiny-model load inside, about a second at most): a function that fixes its dtype to
    the check's fails it."""
    dtype = rng.choice(["float16", "float32"])
    return [(f"hidden: compute dtype {dtype}", (ctx.cfg.model_name_or_path, dtype))]


def _same_qlora_model(got: Any, want: dict) -> bool:
    try:
        return _qlora_model_problem(got, want) is None
    except Exception:  # noqa: BLE001 - facts of the wrong kinds: not the same
        return False


#: Every exercise as the grader judges it, by the name of its function (one entry per ``EXERCISES`` entry).
SPECS: dict[str, Exercise] = {
    "format_record": Exercise(
        check_format_record, reference_format_record, hidden=_hidden_records,
        giveaways=("reclor_lab.data.format_example", "reclor_lab.config.REFERENCE_TEMPLATE",
                   "reclor_lab.config.TINY_TEMPLATE", CHECKS + "reference_format_record")),
    "class_weights_by_hand": Exercise(
        check_class_weights, reference_class_weights, hidden=_hidden_labels, same=_same_floats,
        giveaways=("reclor_lab.data.class_weights", CHECKS + "reference_class_weights")),
    "last_token_index": Exercise(
        check_last_token_index, reference_last_token_index, inputs=lambda ctx: (ctx.model, ctx.tokenizer),
        hidden=_hidden_ids, same=_same_positions,
        giveaways=("reclor_lab.model.last_token_index", CHECKS + "reference_last_token_index")),
    "nf4_block": Exercise(
        check_nf4_block, reference_nf4_block, hidden=_hidden_blocks, same=_same_nf4,
        giveaways=("bitsandbytes.functional.quantize_4bit", "bitsandbytes.functional.dequantize_4bit",
                   "bitsandbytes.functional.quantize_nf4", "bitsandbytes.functional.dequantize_nf4",
                   "torch.ops.bitsandbytes.quantize_4bit", "torch.ops.bitsandbytes.dequantize_4bit",
                   "reclor_lab.model.nf4_roundtrip", CHECKS + "reference_nf4_block")),
    "lora_targets": Exercise(
        check_lora_targets, reference_lora_targets, inputs=lambda ctx: (ctx.model,), hidden=_hidden_module,
        same=_same_list,
        giveaways=("reclor_lab.lora.find_lora_targets", "reclor_lab.lora.target_shapes",
                   "reclor_lab.model.quantizable_linears", CHECKS + "reference_lora_targets")),
    "count_lora_params": Exercise(
        check_count_lora_params, reference_count_lora_params, hidden=_hidden_shapes, same=_same_int,
        giveaways=("reclor_lab.shapes.lora_param_count", "reclor_lab.shapes.lora_params",
                   "reclor_lab.lora.predicted_lora_params", CHECKS + "reference_count_lora_params")),
    "lora_forward": Exercise(
        check_lora_forward, reference_lora_forward, inputs=lambda ctx: (ctx.lora_layer,), hidden=_hidden_lora,
        same=_same_tensor, giveaways=(CHECKS + "reference_lora_forward",)),
    "qlora_memory": Exercise(
        check_qlora_memory, reference_qlora_memory, hidden=_hidden_memory, same=_same_memory,
        giveaways=("reclor_lab.model.estimate_bytes", "reclor_lab.model.memory_report",
                   "reclor_lab.shapes.nf4_bytes_per_param",
                   CHECKS + "reference_qlora_memory", CHECKS + "_memory_terms")),
    "weighted_ce": Exercise(
        check_weighted_ce, reference_weighted_ce, hidden=_hidden_ce, same=_same_scalar,
        giveaways=("reclor_lab.loss.weighted_cross_entropy", CHECKS + "reference_weighted_ce")),
    # no hidden cases: a step changes a model in place; the check's own comparison with the
    # reference's two steps leaves nothing that a cached answer could fit
    "one_train_step": Exercise(
        check_train_step, reference_train_step, inputs=lambda ctx: ctx.train_step_inputs, record_params=True,
        giveaways=("reclor_lab.train.train_step", "reclor_lab.train.optimizer_step",
                   CHECKS + "reference_train_step", CHECKS + "_unclipped_step")),
    "accuracy_over_examples": Exercise(
        check_accuracy, reference_accuracy, hidden=_hidden_batches, same=_same_float,
        giveaways=("reclor_lab.metrics.accuracy_over_examples", CHECKS + "reference_accuracy")),
    "evaluation_pass": Exercise(
        check_evaluation_pass, reference_evaluation_pass, inputs=lambda ctx: (ctx.model, ctx.tokenizer),
        hidden=_hidden_eval, same=_same_pair,
        giveaways=("reclor_lab.train.evaluate", "reclor_lab.train.predict_logits",
                   "reclor_lab.results.analysis.predict_proba", CHECKS + "reference_evaluation_pass",
                   CHECKS + "_eval_logits", CHECKS + "_eval_result")),
    # no per-case hidden answers: any rule that clears the floors passes, so the check itself runs on
    # records drawn from the grader's seed (ctx.seed) instead of the notebook's
    "rule_baseline": Exercise(
        check_rule_baseline, reference_rule_baseline, inputs=lambda ctx: (ctx.seed,),
        giveaways=("reclor_lab.results.baselines.rule_answer", "reclor_lab.results.baselines.overlap_answer",
                   "reclor_lab.results.baselines.rule_baselines", "reclor_lab.tools.synth.opens_sweepingly",
                   "reclor_lab.tools.synth.opens_modestly", "reclor_lab.tools.synth.SWEEPING",
                   "reclor_lab.tools.synth.SWEEPING_CLAUSE", "reclor_lab.tools.synth.generate_split",
                   "reclor_lab.tools.synth.generated_parts", "reclor_lab.tools.synth.cue_part",
                   CHECKS + "reference_rule_baseline", CHECKS + "_rule_cases")),
    # the exercise is a class: inside, lora_linear_facts builds it on the base and returns plain facts;
    # outside they are compared with the same facts of peft's layer (computed here, never inside)
    "LoRALinear": Exercise(
        check_lora_linear, reference_lora_linear_facts, inputs=lambda ctx: (ctx.lora_layer.get_base_layer(),),
        hidden=_hidden_lora_linear, same=_same_lora_linear, probe=CHECKS + "lora_linear_facts",
        giveaways=("reclor_lab.lora.LoRALinear", CHECKS + "ReferenceLoRALinear", CHECKS + "reference_lora_linear_facts",
                   "peft.get_peft_model",
                   "peft.inject_adapter_in_model", "peft.tuners.lora.LoraModel", "peft.tuners.lora.model.LoraModel",
                   "peft.tuners.lora.Linear", "peft.tuners.lora.layer.Linear", "peft.tuners.lora.bnb.Linear4bit")),
    # no hidden cases: an epoch changes the model in place, and the check's own epoch is already drawn
    # from the grader's seed (ctx.seed: the batches, the class weights, the starting step), compared
    # with the reference's epoch on every trainable parameter; nothing cached can fit it. The checks'
    # reference_train_step stays available: it stands in for a student's one_train_step (exercise 10)
    # called in the epoch, and is written out so that the blocked package step is not needed
    "train_epoch": Exercise(
        check_train_epoch, reference_train_epoch, inputs=lambda ctx: ctx.train_epoch_inputs, record_params=True,
        giveaways=("reclor_lab.train.fit", "reclor_lab.train.train_step", "reclor_lab.train.optimizer_step",
                   "reclor_lab.runs.session.RunSession", "reclor_lab.runs.trainer.fit_with_trainer",
                   CHECKS + "reference_train_epoch", CHECKS + "_epoch_mistakes")),
    # a function that returns a model: inside, qlora_model_facts builds it from the kit's tiny model folder
    # (read-only there) and returns plain facts; outside they are compared with the kit's model's
    "qlora_model": Exercise(
        check_qlora_model, reference_qlora_model_facts, inputs=lambda ctx: (ctx.cfg.model_name_or_path,),
        hidden=_hidden_qlora_model, same=_same_qlora_model, probe=CHECKS + "qlora_model_facts",
        giveaways=("reclor_lab.model.load_model", "reclor_lab.model.bnb_config", "reclor_lab.lora.inject_lora",
                   "reclor_lab.lora.prepare_kbit", "reclor_lab.lora.lora_config", "reclor_lab.lora.find_lora_targets",
                   "reclor_lab.lora.target_shapes", "reclor_lab.model.quantizable_linears",
                   "reclor_lab.course.runner.tiny_model", "reclor_lab.course.runner.with_lora",
                   CHECKS + "reference_qlora_model", CHECKS + "reference_qlora_model_facts")),
}
