"""The exercises' self-checks: pass on the reference, and on a stub or a typical wrong answer say
so in one line and hand back a stand-in that runs the reference but is never passed off as the
student's work: checking it again says ⏳ or ❌ again. ``checks.summary`` re-judges them all."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from reclor_lab.course import checks
from reclor_lab.config import get_preset
from reclor_lab.data import class_weights
from reclor_lab.lora import inject_lora
from reclor_lab.model import load_model, load_tokenizer

MINI = Path(__file__).parent / "fixtures" / "mini"
FALLBACK = "using the reference implementation so the rest of the notebook runs."


def stub(*args, **kwargs):
    raise NotImplementedError("Exercise N: not written yet")


def verdict(capsys) -> str:
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) == 1, f"a check prints exactly one line, got: {out!r}"
    return lines[0]


def assert_passes(capsys, check, fn, *args, number: int):
    assert check(fn, *args) is fn
    line = verdict(capsys)
    assert line.startswith(f"✅ Exercise {number} (") and line.endswith("correct."), line


def _stands_in(got, reference, student) -> None:
    assert isinstance(got, checks.Fallback), got
    assert checks._REFERENCES[got] is reference and got.student is student
    assert not hasattr(got, "reference")  # the stand-in does not hand out the answer


def assert_not_done(capsys, check, *args, reference, number: int):
    got = check(stub, *args)
    _stands_in(got, reference, stub)
    line = verdict(capsys)
    assert line.startswith(f"⏳ Exercise {number} (") and "not done yet" in line, line
    assert line.endswith(FALLBACK), line
    again = check(got, *args)  # re-running only the check cell: still the student's stub
    _stands_in(again, reference, stub)
    assert verdict(capsys) == line


def assert_fails(capsys, check, fn, *args, reference, number: int, hint: str) -> str:
    got = check(fn, *args)
    _stands_in(got, reference, fn)
    line = verdict(capsys)
    assert line.startswith(f"❌ Exercise {number} ("), line
    assert hint in line, line
    assert line.endswith(FALLBACK), line
    again = check(got, *args)  # re-running only the check cell: still the student's wrong answer
    _stands_in(again, reference, fn)
    assert verdict(capsys) == line
    return line


@pytest.fixture(autouse=True)
def fresh_checks():
    """Each test starts with no exercise checked (summary() reads what the checks recorded)."""
    checks._CHECKED.clear()
    yield
    checks._CHECKED.clear()


def test_the_fallback_runs_the_reference_and_names_the_student():
    got = checks.check_accuracy(stub)
    assert got([([0, 1], [0, 0])]) == 0.5  # later cells get the reference's answer
    assert got.__name__ == "stub" and "standing in for yours (⏳)" in repr(got)


def test_summary_judges_the_functions_as_they_stand(capsys):
    checks.summary({})
    assert "No exercise checked yet" in capsys.readouterr().out

    def weights_by_hand(labels):
        n = len(labels)
        return [n / (4 * labels.count(c)) if labels.count(c) else 1.0 for c in range(4)]

    format_record = checks.check_format_record(stub)           # ⏳, a stand-in from now on
    class_weights_by_hand = checks.check_class_weights(weights_by_hand)  # ✅
    capsys.readouterr()
    # as the notebook stands: exercise 1 still the stand-in for the stub, exercise 2 solved
    checks.summary({"format_record": format_record, "class_weights_by_hand": class_weights_by_hand})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("⏳ Exercise 1 (format a record): not done yet"), lines
    assert lines[1] == "✅ Exercise 2 (class weights): correct."
    assert lines[2] == "⏳ Exercise 3 (the position the head reads): not checked yet (its check cell has not run)."
    assert lines[3] == "1 of 3 exercises done."
    # the student fixes exercise 1 and breaks exercise 2 without re-running either check
    checks.summary({"format_record": checks.reference_format_record,
                    "class_weights_by_hand": lambda labels: [1.0, 1.0, 1.0, 1.0]})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "✅ Exercise 1 (format a record): correct."
    assert lines[1].startswith("❌ Exercise 2 (class weights):"), lines
    assert lines[3] == "1 of 3 exercises done."


def test_summary_lists_the_notebooks_unchecked_exercises(capsys):
    checks.check_weighted_ce(checks.reference_weighted_ce)  # notebook 04 also holds exercises 10 and 16
    capsys.readouterr()
    checks.summary({})
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["✅ Exercise 9 (weighted cross-entropy): correct.",
                     "⏳ Exercise 10 (one training step): not checked yet (its check cell has not run).",
                     "⏳ Exercise 16 (one epoch of training): not checked yet (its check cell has not run).",
                     "1 of 3 exercises done."]


def test_check_records_are_the_mini_fixtures():
    records = json.loads((MINI / "train.json").read_text())
    assert list(checks.CHECK_RECORDS) == records[: len(checks.CHECK_RECORDS)]


# --- 1. format a record ---------------------------------------------------------------------------

def test_format_record(capsys):
    ref = checks.reference_format_record
    assert_passes(capsys, checks.check_format_record, lambda r: ref(r), number=1)
    assert_not_done(capsys, checks.check_format_record, reference=ref, number=1)

    def no_letters(r):
        a, b, c, d = r["answers"]
        return f"Context: {r['context']} Question: {r['question']} Option: {a} Option: {b} Option: {c} Option: {d}"

    def no_spaces(r):
        a, b, c, d = r["answers"]
        return f"Context:{r['context']} Question:{r['question']} Option A:{a} Option B:{b} Option C:{c} Option D:{d}"

    def question_first(r):
        a, b, c, d = r["answers"]
        return (f"Question: {r['question']} Context: {r['context']} "
                f"Option A: {a} Option B: {b} Option C: {c} Option D: {d}")

    def lower_case(r):
        return ref(r).replace("Option A", "option A")

    assert_fails(capsys, checks.check_format_record, no_letters, reference=ref, number=1, hint="'Option A:'")
    assert_fails(capsys, checks.check_format_record, no_spaces, reference=ref, number=1, hint="wrong spacing")
    assert_fails(capsys, checks.check_format_record, question_first, reference=ref, number=1, hint="out of order")
    assert_fails(capsys, checks.check_format_record, lower_case, reference=ref, number=1, hint="'Option A:'")
    line = assert_fails(capsys, checks.check_format_record, lambda r: ref(r) + ".", reference=ref,
                        number=1, hint="differs from the reference layout at character")
    assert "test record 0" in line
    assert_fails(capsys, checks.check_format_record, lambda r: None, reference=ref, number=1, hint="NoneType")


# --- 2. class weights ---------------------------------------------------------------------------------

def test_class_weights(capsys):
    ref = checks.reference_class_weights
    assert ref([0, 0, 1, 2, 3, 3, 3, 3]) == [1.0, 2.0, 2.0, 0.5]

    def by_hand(labels):
        n = len(labels)
        return [n / (4 * labels.count(c)) if labels.count(c) else 1.0 for c in range(4)]

    def no_absent_case(labels):
        n = len(labels)
        return [n / (4 * labels.count(c)) for c in range(4)]

    assert_passes(capsys, checks.check_class_weights, by_hand, number=2)
    assert_passes(capsys, checks.check_class_weights, lambda ls: class_weights(ls).tolist(), number=2)
    assert_not_done(capsys, checks.check_class_weights, reference=ref, number=2)
    assert_fails(capsys, checks.check_class_weights, lambda ls: [ls.count(c) / len(ls) for c in range(4)],
                 reference=ref, number=2, hint="frequencies")
    assert_fails(capsys, checks.check_class_weights, lambda ls: [len(ls) / ls.count(c) for c in range(4)],
                 reference=ref, number=2, hint="number of classes")
    line = assert_fails(capsys, checks.check_class_weights, lambda ls: [1.0, 1.0, 1.0, 1.0],
                        reference=ref, number=2, hint="N / (4 · n_c)")
    assert "skewed" in line
    assert_fails(capsys, checks.check_class_weights, lambda ls: [1.0, 1.0], reference=ref, number=2,
                 hint="returned 2 weights")
    assert_fails(capsys, checks.check_class_weights, no_absent_case, reference=ref, number=2,
                 hint="never occurs gets weight 1.0")
    # a tensor where a list is asked fails with the conversion, as a list fails exercise 3
    assert_fails(capsys, checks.check_class_weights, class_weights, reference=ref, number=2,
                 hint="a Tensor, not a list; return a Python list (`.tolist()`")


def test_class_weights_in_counter_order_show_the_labels(capsys):
    """Counter.values() iterates in first-seen order: right weights, wrong classes. The hint
    names the order and the labels that showed it."""
    from collections import Counter

    def counter_values(labels):
        counts = Counter(labels)
        return [len(labels) / (4 * n) for n in counts.values()]

    line = assert_fails(capsys, checks.check_class_weights, counter_values, reference=checks.reference_class_weights,
                        number=2, hint="the right weights in the wrong order: class 1, 0, 2, 3")
    assert "labels [1, 1, 1, 1, 1, 0, 2, 3, 3, 1]" in line and "Counter.values()" in line


# --- 3. the position the head reads ---------------------------------------------------------------

def test_last_token_index(capsys, base_model):
    _, tokenizer, model = base_model
    ref = checks.reference_last_token_index
    args = (model, tokenizer)

    def by_hand(ids, pad):  # another correct way: flip, find the first non-pad from the right
        return ids.shape[1] - 1 - (ids != pad).int().flip(1).argmax(1)

    assert_passes(capsys, checks.check_last_token_index, by_hand, *args, number=3)
    # a list passed once and the next cell crashed on .tolist(): now it fails, naming the conversion
    assert_fails(capsys, checks.check_last_token_index, lambda ids, pad: by_hand(ids, pad).tolist(), *args,
                 reference=ref, number=3, hint="a list, not a tensor; return a torch tensor")
    assert_not_done(capsys, checks.check_last_token_index, *args, reference=ref, number=3)
    line = assert_fails(capsys, checks.check_last_token_index, lambda ids, pad: (ids != pad).sum(1), *args,
                        reference=ref, number=3, hint="where the padding starts")
    assert re.search(r"Row \d+ of the input ids \(pad id \d+\): \[[\d ]+( pad)+\]: it returned \d+, the head "
                     r"reads position \d+\.", line), line  # the row that broke the answer, padding shown
    assert_fails(capsys, checks.check_last_token_index, lambda ids, pad: (ids != pad).sum(1) - 1, *args,
                 reference=ref, number=3, hint="inside the text")
    assert_fails(capsys, checks.check_last_token_index,
                 lambda ids, pad: torch.full((ids.shape[0],), ids.shape[1] - 1), *args,
                 reference=ref, number=3, hint="last column")
    assert_fails(capsys, checks.check_last_token_index, lambda ids, pad: (ids == pad).int().argmax(1) - 1, *args,
                 reference=ref, number=3, hint="no pad token to find")
    assert_fails(capsys, checks.check_last_token_index, lambda ids, pad: (ids != pad).float().sum(1) - 1, *args,
                 reference=ref, number=3, hint="one integer position per row")


def test_last_token_index_is_where_the_model_reads(base_model):
    """The package's rule against transformers' own pooling, with right and left padding."""
    _, tokenizer, model = base_model
    from reclor_lab.model import last_token_index

    body = getattr(model, model.base_model_prefix)
    enc = tokenizer(["a b c d e f", "a b", "a b c"], padding=True, return_tensors="pt")
    for ids, mask in ((enc["input_ids"], enc["attention_mask"]),
                      (enc["input_ids"].flip(1), enc["attention_mask"].flip(1))):  # left padding
        with torch.no_grad():
            own = model(input_ids=ids, attention_mask=mask).logits
            every = model.score(body(input_ids=ids, attention_mask=mask).last_hidden_state)
        index = last_token_index(ids, tokenizer.pad_token_id)
        assert torch.allclose(every[torch.arange(len(ids)), index], own, atol=1e-6)


# --- 4. NF4 on one block --------------------------------------------------------------------------

def _nf4_by_hand(block, *, scale=None, levels=None, multiply=True):
    from reclor_lab.model import NF4_CODE

    code = torch.tensor(NF4_CODE)
    absmax = block.abs().max() if scale is None else scale(block)
    if levels == "uniform":
        codes = torch.round((block / absmax + 1) * 7.5).long().clamp(0, 15)
    elif levels == "unscaled":
        codes = (block.unsqueeze(-1) - code).abs().argmin(-1)
    else:
        codes = (block / absmax).unsqueeze(-1).sub(code).abs().argmin(-1)
    return codes, absmax, code[codes] * absmax if multiply else code[codes]


def test_nf4_block(capsys):
    ref = checks.reference_nf4_block
    check = checks.check_nf4_block
    assert_passes(capsys, check, _nf4_by_hand, number=4)
    assert_passes(capsys, check, lambda b: (lambda c, a, v: (c, a.item(), v))(*_nf4_by_hand(b)),
                  number=4)  # the absmax, a number, may be a Python float
    # lists fail (the cells after the check stack the values and call .unique() on the codes)
    assert_fails(capsys, check, lambda b: tuple(x.tolist() if x.dim() else x for x in _nf4_by_hand(b)),
                 reference=ref, number=4, hint="the codes are a list, not a tensor")
    assert_not_done(capsys, check, reference=ref, number=4)
    assert_fails(capsys, check, lambda b: _nf4_by_hand(b, scale=lambda x: x.max()), reference=ref, number=4,
                 hint="ABSOLUTE value")
    assert_fails(capsys, check, lambda b: _nf4_by_hand(b, levels="uniform"), reference=ref, number=4,
                 hint="evenly spaced levels")
    assert_fails(capsys, check, lambda b: _nf4_by_hand(b, levels="unscaled"), reference=ref, number=4,
                 hint="divide the block by its absmax first")
    assert_fails(capsys, check, lambda b: _nf4_by_hand(b, multiply=False), reference=ref, number=4,
                 hint="multiply them by the block's absmax")
    assert_fails(capsys, check, lambda b: _nf4_by_hand(b)[:2], reference=ref, number=4, hint="three things")


def test_nf4_reference_is_bitsandbytes_bit_for_bit():
    """The hand-made rule (absmax, nearest code) equals bitsandbytes on many random blocks, outliers
    included: the check can demand equality, not closeness."""
    g = torch.Generator().manual_seed(0)
    for k in range(200):
        block = torch.randn(64, generator=g) * (0.01 + k / 50)
        if k % 3 == 0:
            block[k % 64] = -6 * block.abs().max()
        codes, absmax, values = checks.reference_nf4_block(block)
        mine = _nf4_by_hand(block)
        assert torch.equal(codes, mine[0]) and torch.equal(absmax, mine[1]) and torch.equal(values, mine[2])


# --- 5. LoRA targets ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def base_model(cfg, tokenizer):
    """conftest's cfg and tokenizer with the 4-bit tiny Llama they load (no LoRA)."""
    torch.manual_seed(0)
    return cfg, tokenizer, load_model(cfg, tokenizer)


def _linear4bit_names(model):
    return [n for n, m in model.named_modules() if type(m).__name__ == "Linear4bit"]


def test_lora_targets(capsys, base_model):
    _, _, model = base_model
    ref = checks.reference_lora_targets

    def by_hand(m):
        return sorted({n.split(".")[-1] for n in _linear4bit_names(m) if not n.endswith("score")})

    assert_passes(capsys, checks.check_lora_targets, by_hand, model, number=5)
    assert_not_done(capsys, checks.check_lora_targets, model, reference=ref, number=5)
    assert_fails(capsys, checks.check_lora_targets, lambda m: by_hand(m) + ["score"], model,
                 reference=ref, number=5, hint="head `score`")
    assert_fails(capsys, checks.check_lora_targets, lambda m: _linear4bit_names(m), model,
                 reference=ref, number=5, hint="full paths")
    assert_fails(capsys, checks.check_lora_targets, lambda m: by_hand(m)[1:], model,
                 reference=ref, number=5, hint="missing")
    assert_fails(capsys, checks.check_lora_targets, lambda m: by_hand(m)[::-1], model,
                 reference=ref, number=5, hint="sorted")
    assert_fails(capsys, checks.check_lora_targets, lambda m: [n.split(".")[-1] for n in _linear4bit_names(m)],
                 model, reference=ref, number=5, hint="repeated")


# --- 6. count LoRA parameters ---------------------------------------------------------------------------------

def test_count_lora_params(capsys):
    ref = checks.reference_count_lora_params
    assert ref([(4096, 4096)] * 4 + [(11008, 4096)] * 2 + [(4096, 11008)], 16) * 32 == 39_976_960

    def by_hand(shapes, r):
        total = 0
        for out_f, in_f in shapes:
            total += r * in_f + out_f * r
        return total

    assert_passes(capsys, checks.check_count_lora_params, by_hand, number=6)
    assert_not_done(capsys, checks.check_count_lora_params, reference=ref, number=6)
    assert_fails(capsys, checks.check_count_lora_params, lambda s, r: sum(r * o * i for o, i in s),
                 reference=ref, number=6, hint="not r·in·out")
    assert_fails(capsys, checks.check_count_lora_params, lambda s, r: sum(r * i for o, i in s),
                 reference=ref, number=6, hint="only one of the two")
    assert_fails(capsys, checks.check_count_lora_params, lambda s, r: sum(o * i for o, i in s),
                 reference=ref, number=6, hint="full weights")
    assert_fails(capsys, checks.check_count_lora_params, lambda s, r: float(by_hand(s, r)),
                 reference=ref, number=6, hint="return an int")


# --- 7. the LoRA forward pass ------------------------------------------------------------------------

def _lora_layer(model):
    return model.base_model.model.model.layers[0].self_attn.q_proj


def _forward(*, scale="alpha/r", dropout_on="update", base=True):
    def fn(x, W0, A, B, alpha, r, dropout):
        s = {"alpha/r": alpha / r, "r/alpha": r / alpha, "none": 1.0}[scale]
        xd = dropout(x) if dropout_on in ("update", "both") else x
        xb = xd if dropout_on == "both" else x
        return (xb @ W0.T if base else 0) + s * (xd @ A.T) @ B.T
    return fn


def test_lora_forward(capsys, lora_run):
    model = lora_run[0]
    layer = _lora_layer(model)
    before = {n: p.detach().clone() for n, p in layer.named_parameters()}
    scaling, training = dict(layer.scaling), layer.training
    ref = checks.reference_lora_forward
    check = checks.check_lora_forward
    assert_passes(capsys, check, _forward(), layer, number=7)
    assert_not_done(capsys, check, layer, reference=ref, number=7)
    assert_fails(capsys, check, _forward(scale="none"), layer, reference=ref, number=7, hint="unscaled")
    assert_fails(capsys, check, _forward(scale="r/alpha"), layer, reference=ref, number=7, hint="r/alpha")
    assert_fails(capsys, check, _forward(base=False), layer, reference=ref, number=7, hint="add the frozen")
    assert_fails(capsys, check, _forward(dropout_on="none"), layer, reference=ref, number=7,
                 hint="dropout must act on the update's input")
    assert_fails(capsys, check, _forward(dropout_on="both"), layer, reference=ref, number=7,
                 hint="the frozen W0 sees x unchanged")
    assert_fails(capsys, check, lambda x, W0, A, B, alpha, r, d: x @ W0.T + alpha / r * (x @ B.T) @ A.T, layer,
                 reference=ref, number=7, hint="A is (r, in)")
    # the check leaves the layer as it found it: adapter weights, scale, mode
    assert all(torch.equal(p, before[n]) for n, p in layer.named_parameters())
    assert dict(layer.scaling) == scaling and layer.training == training


# --- 14. a LoRALinear module -----------------------------------------------------------------------------

def _lora_linear(*, scale="alpha/r", dropout_on="update", freeze=True, a_init="kaiming", b_init="zeros",
                 layout="peft", use_base=True, params=True):
    """A LoRALinear class with one typical mistake (the defaults make the right one)."""
    import math

    from torch import nn

    class LoRALinear(nn.Module):
        def __init__(self, base, r, alpha, dropout=0.0):
            super().__init__()
            self.base = base.requires_grad_(False) if freeze else base
            n_in, n_out = base.in_features, base.out_features
            A = torch.empty(*((r, n_in) if layout == "peft" else (n_in, r)))
            nn.init.kaiming_uniform_(A, a=math.sqrt(5)) if a_init == "kaiming" else nn.init.zeros_(A)
            B = torch.zeros(*((n_out, r) if layout == "peft" else (r, n_out)))
            if b_init != "zeros":
                nn.init.normal_(B)
            if params:
                self.A, self.B = nn.Parameter(A), nn.Parameter(B)
            else:
                self.A, self.B = A.requires_grad_(True), B.requires_grad_(True)
            self.dropout = nn.Dropout(dropout)
            self.scaling = {"alpha/r": alpha / r, "none": 1.0, "r/alpha": r / alpha, "floor": alpha // r}[scale]

        def forward(self, x):
            xd = self.dropout(x) if dropout_on in ("update", "both") else x
            xb = xd if dropout_on == "both" else x
            frozen = self.base(xb) if use_base else xb @ self.base.weight.T
            return frozen + (xd @ self.A.T @ self.B.T) * self.scaling

    return LoRALinear


def test_lora_linear(capsys, lora_run):
    base = _lora_layer(lora_run[0]).get_base_layer()
    ref, check = checks.ReferenceLoRALinear, checks.check_lora_linear
    state = torch.get_rng_state()
    good = _lora_linear()
    assert_passes(capsys, check, good, base, number=14)
    assert_passes(capsys, check, ref, base, number=14)
    assert torch.equal(torch.get_rng_state(), state)  # the check leaves the caller's random stream alone
    assert all(not p.requires_grad for p in base.parameters())
    assert_not_done(capsys, check, base, reference=ref, number=14)
    assert_fails(capsys, check, _lora_linear(scale="none"), base, reference=ref, number=14, hint="unscaled")
    assert_fails(capsys, check, _lora_linear(scale="r/alpha"), base, reference=ref, number=14, hint="r/alpha")
    assert_fails(capsys, check, _lora_linear(dropout_on="none"), base, reference=ref, number=14,
                 hint="dropout is missing on the LoRA path")
    assert_fails(capsys, check, _lora_linear(dropout_on="both"), base, reference=ref, number=14,
                 hint="the frozen base layer sees x unchanged")
    assert_fails(capsys, check, _lora_linear(freeze=False), base, reference=ref, number=14,
                 hint="the base layer still trains (weight, bias")
    assert_fails(capsys, check, _lora_linear(b_init="normal"), base, reference=ref, number=14,
                 hint="B does not start at zero")
    assert_fails(capsys, check, _lora_linear(a_init="zeros"), base, reference=ref, number=14,
                 hint="A starts at zero")
    assert_fails(capsys, check, _lora_linear(layout="rasbt"), base, reference=ref, number=14,
                 hint="rasbt's layout")
    assert_fails(capsys, check, _lora_linear(params=False), base, reference=ref, number=14,
                 hint="registered as an nn.Parameter")


def test_lora_linear_hints_for_the_plain_layer_and_the_graph(capsys, lora_run):
    """The plain nn.Linear case (a bias) catches multiplying by the weight yourself; a detached A
    loses its gradient; an instance of the wrong kind is named."""
    base = _lora_layer(lora_run[0]).get_base_layer()
    ref, check = checks.ReferenceLoRALinear, checks.check_lora_linear

    class Plain(_lora_linear()):
        def forward(self, x):  # x @ W.T where it can: right on the 4-bit base, no bias on the plain one
            w = self.base.weight
            if w.dim() == 2 and w.shape[1] == x.shape[-1]:
                return x @ w.T + (self.dropout(x) @ self.A.T @ self.B.T) * self.scaling
            return super().forward(x)

    class Detached(_lora_linear()):
        def forward(self, x):
            return self.base(x) + (self.dropout(x) @ self.A.detach().T @ self.B.T) * self.scaling

    assert_fails(capsys, check, Plain, base, reference=ref, number=14, hint="the base layer's bias is missing")
    assert_fails(capsys, check, Detached, base, reference=ref, number=14, hint="A got no gradient")
    assert_fails(capsys, check, lambda *a: "a layer", base, reference=ref, number=14,
                 hint="made a str; write a module: `class LoRALinear(nn.Module)`")


def test_lora_linear_facts_of_peft_s_layer_agree_with_themselves_and_see_the_dropout(lora_run):
    """The reference facts are peft's own layer: B = 0 and A ≠ 0 at the start, the train-mode
    output differs from eval (dropout acts), and its rounding bounds hold it equal to itself."""
    base = _lora_layer(lora_run[0]).get_base_layer()
    for what, args in checks.nb03._lora_linear_cases(base):
        want = checks.reference_lora_linear_facts(*args)
        assert not want["B0"].any() and want["A0"].any(), what
        assert not torch.equal(want["y_train"], want["y"]), what
        assert checks._lora_linear_problem(want, want) is None, what
        got = checks.lora_linear_facts(checks.ReferenceLoRALinear)(*args)
        assert checks._lora_linear_problem(got, want) is None, what


# --- 15. the QLoRA configuration ----------------------------------------------------------------------------

_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _qlora_model(*, quant_type="nf4", double_quant=True, fixed_dtype=None, four_bit=True, skip=None,
                 targets=tuple(_PROJECTIONS), task_type="SEQ_CLS", pad="eos", num_labels=4, lora=(16, 16, 0.05),
                 unfreeze_norm=False, adapters=True):
    """A qlora_model with one typical mistake (the defaults make the right one)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, BitsAndBytesConfig

    def qlora_model(model_path, compute_dtype):
        dtype = fixed_dtype or compute_dtype
        extra = {} if skip is None else {"llm_int8_skip_modules": skip}
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                                   bnb_4bit_use_double_quant=double_quant, bnb_4bit_compute_dtype=dtype, **extra)
        labels = {} if num_labels is None else {"num_labels": num_labels}
        model = AutoModelForSequenceClassification.from_pretrained(
            model_path, quantization_config=quant if four_bit else None, **labels)
        if pad == "eos":
            model.config.pad_token_id = model.config.eos_token_id
        elif pad is not None:
            model.config.pad_token_id = pad
        if not adapters:
            return model
        r, alpha, p = lora
        kw = {} if lora == (8, 8, 0.0) else {"r": r, "lora_alpha": alpha, "lora_dropout": p}
        config = LoraConfig(target_modules=targets if isinstance(targets, str) else list(targets), **kw,
                            **({"task_type": task_type} if task_type else {}))
        model = get_peft_model(model, config)
        if unfreeze_norm:  # the final norm trains too: the base model not frozen
            model.base_model.model.model.norm.requires_grad_(True)
        return model

    return qlora_model


def test_qlora_model_passes_the_kit_s_and_an_honest_model():
    from reclor_lab.config import TINY_MODEL_DIR
    from reclor_lab.lora import predicted_lora_params

    want = checks.reference_qlora_model_facts(str(TINY_MODEL_DIR), checks.QLORA_CHECK_DTYPE)
    kit = checks.reference_qlora_model(str(TINY_MODEL_DIR), torch.bfloat16)
    assert want["trainable"] == predicted_lora_params(kit, _PROJECTIONS, checks.QLORA_R) == 35_072
    assert want["pad_token_id"] == want["eos_token_id"] == 2 and want["layers"]["score"]["trains"]
    q = want["layers"]["model.layers.1.mlp.down_proj"]
    assert q == {"class": "Linear4bit", "quant_type": "nf4", "nested": True, "compute_dtype": "bfloat16",
                 "lora": [16, 16.0, 0.05], "trains": False}
    assert checks._qlora_model_problem(want, want) is None


def test_qlora_model(capsys):
    ref, check = checks.reference_qlora_model, checks.check_qlora_model
    state = torch.get_rng_state()
    good = _qlora_model()
    assert_passes(capsys, check, good, number=15)
    assert_passes(capsys, check, ref, number=15)
    assert_passes(capsys, check, _qlora_model(targets="all-linear"), number=15)  # peft's shorthand: the same
    assert torch.equal(torch.get_rng_state(), state)  # the check leaves the caller's random stream alone
    assert_not_done(capsys, check, reference=ref, number=15)
    for wrong, hint in (
            (dict(quant_type="fp4"), "quantized as 'fp4': use bnb_4bit_quant_type='nf4'"),
            (dict(double_quant=False), "has no double quantization: set bnb_4bit_use_double_quant=True"),
            (dict(fixed_dtype=torch.float32), "computes in float32 (float32 is bitsandbytes' default"),
            (dict(four_bit=False), "layers are not 4-bit (model.layers.0.self_attn.q_proj is Linear)"),
            (dict(skip=[]), "the head `score` is 4-bit"),
            (dict(targets=(*_PROJECTIONS, "score"), task_type=None), "the head `score` has a LoRA adapter"),
            (dict(task_type=None), "the head `score` does not train"),
            (dict(targets=_PROJECTIONS[:4]), "no adapter on ['down_proj', 'gate_proj', 'up_proj']"),
            (dict(targets=("q_proj", "v_proj")), "no adapter on ['down_proj', 'gate_proj', 'k_proj', 'o_proj', "),
            (dict(lora=(8, 8, 0.0)), "are peft's defaults: set r=16, lora_alpha=16, lora_dropout=0.05"),
            (dict(lora=(8, 16, 0.05)), "r is 8: the reference uses r = 16"),
            (dict(lora=(16, 32, 0.05)), "lora_alpha is 32: the reference uses 16, so the update's scale alpha/r is 1"),
            (dict(lora=(16, 16, 0.1)), "lora_dropout is 0.1: the reference uses 0.05"),
            (dict(pad=None), "the model's config has no pad_token_id"),
            (dict(pad=0), "pad_token_id is 0; the reference pads with the eos token"),
            (dict(num_labels=None), "the head has 2 outputs (num_labels 2): pass num_labels=4"),
            (dict(unfreeze_norm=True), "35,136 parameters train, the kit's model 35,072"),
            (dict(adapters=False), "the model has no adapters: return what get_peft_model"),
    ):
        assert_fails(capsys, check, _qlora_model(**wrong), reference=ref, number=15, hint=hint)
    assert_fails(capsys, check, lambda path, dtype: (path, dtype), reference=ref, number=15,
                 hint="qlora_model returned a tuple; return the model that get_peft_model made")

    def causal_lm(model_path, compute_dtype):  # the language model, adapted, instead of a classifier
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=compute_dtype)
        model = AutoModelForCausalLM.from_pretrained(model_path, quantization_config=quant)
        return get_peft_model(model, LoraConfig(r=16, lora_alpha=16, lora_dropout=0.05, target_modules=_PROJECTIONS))

    assert_fails(capsys, check, causal_lm, reference=ref, number=15,
                 hint="the model has no classification head `score`: load it with AutoModelForSequenceClassification")


def test_qlora_model_facts_show_the_layers_of_the_model_handed_back():
    """The facts see a layer peft wrapped under its loaded name, with its adapter, and the head's
    trained copy (one entry, not the copy and its frozen original)."""
    from reclor_lab.config import TINY_MODEL_DIR

    got = checks.qlora_model_facts(_qlora_model(targets=("q_proj",)))(str(TINY_MODEL_DIR), "float32")
    assert sorted(n for n, f in got["layers"].items() if f["lora"]) == [
        "model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]
    assert len(got["layers"]) == 2 * 7 + 1 and got["layers"]["score"]["class"] == "Linear"
    assert got["layers"]["model.layers.0.self_attn.k_proj"]["compute_dtype"] == "float32"
    assert got["trainable"] == 2 * 16 * (64 + 64) + 4 * 64


# --- 8. QLoRA memory -------------------------------------------------------------------------------

def _memory(*, lm_head=False, bits=checks.NF4_DQ_BITS, kept_bytes=4, per_param=16, head=True, ckpt_works=True):
    def fn(shape, b, s, r, checkpointing):
        L, h, m = shape.layers, shape.hidden, shape.intermediate
        quantized = L * (4 * h * h + 3 * h * m)
        kept = shape.vocab * h * (2 if lm_head else 1) + (2 * L + 1) * h + 4 * h
        trained = L * r * (8 * h + 3 * (h + m)) + (4 * h if head else 0)
        one = b * s * (34 * h + 5 * shape.heads * s)
        acts = L * b * s * h * 2 + one if checkpointing and ckpt_works else L * one
        return {"weights": quantized * bits / 8 + kept * kept_bytes, "trained": trained * per_param,
                "activations": acts}
    return fn


def test_qlora_memory(capsys):
    ref = checks.reference_qlora_memory
    check = checks.check_qlora_memory
    assert_passes(capsys, check, _memory(), number=8)
    assert_not_done(capsys, check, reference=ref, number=8)
    assert_fails(capsys, check, _memory(lm_head=True), reference=ref, number=8, hint="lm_head")
    assert_fails(capsys, check, _memory(bits=4), reference=ref, number=8, hint="misses the scales")
    assert_fails(capsys, check, _memory(bits=4.5), reference=ref, number=8, hint="without double quantization")
    assert_fails(capsys, check, _memory(kept_bytes=2), reference=ref, number=8, hint="fp32 while training")
    assert_fails(capsys, check, _memory(per_param=12), reference=ref, number=8, hint="AdamW with one state")
    assert_fails(capsys, check, _memory(per_param=4), reference=ref, number=8, hint="only the weights")
    assert_fails(capsys, check, _memory(head=False), reference=ref, number=8, hint="head `score` trains too")
    assert_fails(capsys, check, _memory(ckpt_works=False), reference=ref, number=8, hint="without checkpointing")
    assert_fails(capsys, check, lambda *a: list(ref(*a).values()), reference=ref, number=8, hint="return a dict")


def test_qlora_memory_reference_matches_the_package_counts():
    """The formula's parts agree with the package's own counts for Llama-2-7B as a classifier."""
    from reclor_lab.model import LLAMA2_7B_CLASSIFIER_OTHER_PARAMS, LLAMA2_7B_QUANTIZED_PARAMS, estimate_bytes

    got = checks.reference_qlora_memory(checks.LLAMA2_7B, 1, 512, 16, checkpointing=True)
    bf16_kept = estimate_bytes(LLAMA2_7B_QUANTIZED_PARAMS, LLAMA2_7B_CLASSIFIER_OTHER_PARAMS, "4bit")
    assert got["weights"] == pytest.approx(bf16_kept + 2 * LLAMA2_7B_CLASSIFIER_OTHER_PARAMS)  # fp32 = bf16 + 2 B
    assert got["trained"] == (39_976_960 + 4 * 4096) * 16
    off = checks.reference_qlora_memory(checks.LLAMA2_7B, 1, 512, 16, checkpointing=False)
    assert off["activations"] > 10 * got["activations"]  # checkpointing is the lever
    double = checks.reference_qlora_memory(checks.LLAMA2_7B, 2, 512, 16, checkpointing=False)
    assert double["activations"] == 2 * off["activations"]

# --- 9. weighted cross-entropy -------------------------------------------------------------------------------------

def test_weighted_ce(capsys):
    ref = checks.reference_weighted_ce

    def by_hand(logits, labels, weights):
        per_example = -logits.log_softmax(-1).gather(1, labels[:, None]).squeeze(1)
        w = weights[labels]
        return (w * per_example).sum() / w.sum()

    def by_batch_size(logits, labels, weights):
        return (weights[labels] * F.cross_entropy(logits, labels, reduction="none")).mean()

    assert_passes(capsys, checks.check_weighted_ce, by_hand, number=9)
    assert_passes(capsys, checks.check_weighted_ce, lambda x, y, w: F.cross_entropy(x, y, weight=w), number=9)
    assert_not_done(capsys, checks.check_weighted_ce, reference=ref, number=9)
    line = assert_fails(capsys, checks.check_weighted_ce, by_batch_size, reference=ref, number=9,
                        hint="divides by the batch size")
    assert "weights [1, 2, 2, 0.5]" in line
    assert "expected" in line and "The inputs: logits [[" in line and "labels [3, 3, 1, 0, 3]" in line
    assert_fails(capsys, checks.check_weighted_ce, lambda x, y, w: F.cross_entropy(x, y), reference=ref,
                 number=9, hint="plain cross-entropy")
    assert_fails(capsys, checks.check_weighted_ce, lambda x, y, w: by_hand(x, y, w).item(), reference=ref,
                 number=9, hint="no .item()")
    assert_fails(capsys, checks.check_weighted_ce,
                 lambda x, y, w: F.cross_entropy(x, y, weight=w, reduction="none"), reference=ref,
                 number=9, hint="one scalar")


def test_weighted_ce_hints_name_three_more_mistakes(capsys):
    """Exercise 9's typical mistakes beyond the batch size: each gets its own hint."""
    ref, check = checks.reference_weighted_ce, checks.check_weighted_ce

    def all_class_weights(logits, labels, weights):  # divides by the four class weights' sum
        w = weights[labels]
        return (w * F.cross_entropy(logits, labels, reduction="none")).sum() / weights.sum()

    def no_minus(logits, labels, weights):  # log p instead of -log p
        w = weights[labels]
        return (w * logits.log_softmax(-1).gather(1, labels[:, None]).squeeze(1)).sum() / w.sum()

    def softmax_over_batch(logits, labels, weights):  # dim=0: each column sums to 1
        w = weights[labels]
        return (w * -logits.log_softmax(0).gather(1, labels[:, None]).squeeze(1)).sum() / w.sum()

    assert_fails(capsys, check, all_class_weights, reference=ref, number=9, hint="sum of all four class weights")
    line = assert_fails(capsys, check, no_minus, reference=ref, number=9, hint="the wrong sign")
    assert re.search(r"it returned -\d\.\d{4}, expected \d\.\d{4}", line), line
    assert_fails(capsys, check, softmax_over_batch, reference=ref, number=9, hint="softmax runs over the batch")


# --- 10. one training step ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lora_run(cfg, tokenizer):
    torch.manual_seed(0)
    model = inject_lora(load_model(cfg, tokenizer), cfg)
    records = json.loads((MINI / "train.json").read_text())
    batch = tokenizer([checks.reference_format_record(r) for r in records], padding=True,
                      return_tensors="pt", truncation=True, max_length=64)
    batch = dict(batch)
    batch["labels"] = torch.tensor([r["label"] for r in records])
    weights = torch.tensor([1.0, 2.0, 2.0, 0.5])
    return model, batch, weights


def _state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _good_step(model, batch, optimizer, weights):
    labels = batch["labels"]  # read, not popped: the caller's batch stays whole
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    loss = F.cross_entropy(logits.float(), labels, weight=weights)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 0.3)
    optimizer.step()
    optimizer.zero_grad()
    return loss.item()


def _step(*, weighted=True, clip=True, zero=True, step=True, item=True, zero_first=False, pop=False):
    def fn(model, batch, optimizer, weights):
        if zero_first:
            optimizer.zero_grad()
        labels = batch.pop("labels") if pop else batch["labels"]  # pop: changes the caller's batch
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        loss = F.cross_entropy(model(**inputs).logits.float(), labels,
                               weight=weights if weighted else None)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 0.3)
        if step:
            optimizer.step()
        if zero:
            optimizer.zero_grad()
        return loss.item() if item else loss
    return fn


def test_train_step(capsys, lora_run):
    model, batch, weights = lora_run
    ref = checks.reference_train_step
    model.eval()
    before = _state(model)
    batch_keys = set(batch)
    rng = torch.get_rng_state()

    def run(fn):
        return checks.check_train_step(fn, model, batch, weights)

    assert run(_good_step) is _good_step
    line = verdict(capsys)
    assert line.startswith("✅ Exercise 10 (") and line.endswith("correct."), line
    zero_first = _step(zero_first=True, zero=False)  # PyTorch's tutorials' and Raschka's order
    assert run(zero_first) is zero_first
    assert verdict(capsys) == "✅ Exercise 10 (one training step): correct."
    _stands_in(run(stub), ref, stub)
    line = verdict(capsys)
    assert "not done yet" in line and line.endswith(FALLBACK), line
    wrong = {
        "the step was not clipped": _step(clip=False),
        "unweighted cross-entropy": _step(weighted=False),
        "the second ran backward()": _step(zero=False),
        "optimizer.step() was never called": _step(step=False),
        "return loss.item()": _step(item=False),
        "it changed the caller's batch": _step(pop=True),
    }
    for hint, fn in wrong.items():
        got = run(fn)
        _stands_in(got, ref, fn)
        line = verdict(capsys)
        assert line.startswith("❌ Exercise 10 (") and hint in line and line.endswith(FALLBACK), line
        _stands_in(run(got), ref, fn)  # checked again: the same verdict, never ✅
        assert verdict(capsys) == line

    # the caller's model, batch and RNG are exactly as they were
    after = _state(model)
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert all(p.grad is None for p in model.parameters())
    assert not model.training
    assert set(batch) == batch_keys
    assert torch.equal(torch.get_rng_state(), rng)


def test_train_step_zero_grad_between_backward_and_step(capsys, lora_run):
    """zero_grad() between backward() and step(): step() was called, with nothing to apply. The
    hint says so (it once said to call step()), and so does a step before backward()."""
    model, batch, weights = lora_run
    model.eval()

    def zero_in_between(model, batch, optimizer, weights):
        loss = F.cross_entropy(model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float(),
                               batch["labels"], weight=weights)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 0.3)
        optimizer.zero_grad()
        optimizer.step()
        return loss.item()

    def step_first(model, batch, optimizer, weights):
        optimizer.zero_grad()
        optimizer.step()
        loss = F.cross_entropy(model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float(),
                               batch["labels"], weight=weights)
        loss.backward()
        return loss.item()

    ref = checks.reference_train_step
    for fn, hint in ((zero_in_between, "cleared between loss.backward() and step()"),
                     (step_first, "ran before loss.backward()")):
        got = checks.check_train_step(fn, model, batch, weights)
        _stands_in(got, ref, fn)
        line = verdict(capsys)
        assert hint in line and "call optimizer.step()." not in line, line
    model.zero_grad(set_to_none=True)


def test_train_step_needs_trainable_parameters():
    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="trainable parameters"):
        checks.check_train_step(_good_step, frozen, {}, None)


# --- 16. one epoch ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def epoch_batches(lora_run, tokenizer):
    """Four uneven batches of the mini records, their options rotated so that every label occurs."""
    records = json.loads((MINI / "train.json").read_text())
    rotated = [r | {"answers": r["answers"][k:] + r["answers"][:k], "label": (r["label"] - k) % 4}
               for k in range(4) for r in records]
    batches, start = [], 0
    for n in (4, 3, 5, 4):
        chunk = rotated[start:start + n]
        start += n
        enc = tokenizer([checks.reference_format_record(r) for r in chunk], padding=True, return_tensors="pt")
        batches.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                        "labels": torch.tensor([r["label"] for r in chunk])})
    return batches


def _epoch(*, loss="kit", zero="after", clip="after", lr="before", train=True, item=True, step0=True,
           count=True, backward_item=False, via_step=False):
    """An epoch written as a student might: ``loss`` "kit" (F.cross_entropy), "log_softmax" (exercise
    9's solution), "plain"; ``zero`` "after", "before", "between", "never"; ``clip`` "after", "before"
    (before backward), "never"; ``lr`` "before" (the step), "after", "never"."""
    def ce(logits, labels, weights):
        if loss == "log_softmax":
            nll = -torch.log_softmax(logits.float(), dim=-1).gather(1, labels.view(-1, 1)).squeeze(1)
            w = weights[labels]
            return (w * nll).sum() / w.sum()
        return F.cross_entropy(logits.float(), labels, weight=None if loss == "plain" else weights)

    def fn(model, batches, optimizer, weights, lr_at, step=0, max_grad_norm=0.3):
        if train:
            model.train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        losses, k = [], step if step0 else 0
        for batch in batches:
            if via_step:  # exercise 10's step, the schedule's lr set before it
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(k)
                losses.append(checks.reference_train_step(model, batch, optimizer, weights, max_grad_norm))
                k += 1
                continue
            if zero == "before":
                optimizer.zero_grad()
            value = ce(model(**{key: v for key, v in batch.items() if key != "labels"}).logits, batch["labels"],
                       weights)
            if clip == "before":
                torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
            if backward_item:
                value = value.item()
            value.backward()
            if zero == "between":
                optimizer.zero_grad()
            if lr == "before":
                optimizer.param_groups[0]["lr"] = lr_at(k)
            if clip == "after":
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            if lr == "after":
                optimizer.param_groups[0]["lr"] = lr_at(k)
            if zero == "after":
                optimizer.zero_grad()
            k += 1
            losses.append(value.item() if item else value)
        return losses, (step + len(batches) if count else len(batches))
    return fn


def test_train_epoch(capsys, lora_run, epoch_batches):
    model, _, weights = lora_run
    ref = checks.reference_train_epoch
    model.eval()
    before = _state(model)
    rng = torch.get_rng_state()
    kept = [dict(b) for b in epoch_batches]

    def run(fn):
        return checks.check_train_epoch(fn, model, epoch_batches, weights)

    right = {"the kit's loss": _epoch(), "exercise 9's loss (rounds otherwise)": _epoch(loss="log_softmax"),
             "zero_grad before backward": _epoch(zero="before"), "exercise 10's step in a loop": _epoch(via_step=True)}
    for what, fn in right.items():
        assert run(fn) is fn, what
        assert verdict(capsys) == "✅ Exercise 16 (one epoch of training): correct.", what
    _stands_in(run(stub), ref, stub)
    line = verdict(capsys)
    assert "not done yet" in line and line.endswith(FALLBACK), line
    wrong = {
        "never cleared": _epoch(zero="never"),
        "cleared between loss.backward() and optimizer.step()": _epoch(zero="between"),
        "the steps were not clipped": _epoch(clip="never"),
        "(before it there are no gradients to clip)": _epoch(clip="before"),
        "never set from the schedule": _epoch(lr="never"),
        "the previous step's learning rate": _epoch(lr="after"),
        "the schedule was read from step 0": _epoch(step0=False),
        "the plain cross-entropy": _epoch(loss="plain"),
        "ran in eval mode": _epoch(train=False),
        "the losses are tensors": _epoch(item=False),
        ".backward() on a Python float": _epoch(backward_item=True),
        "the step count 4 after an epoch of 4 batches that started at step 2": _epoch(count=False),
    }
    for hint, fn in wrong.items():
        got = run(fn)
        _stands_in(got, ref, fn)
        line = verdict(capsys)
        assert line.startswith("❌ Exercise 16 (") and hint in line and line.endswith(FALLBACK), (hint, line)
        _stands_in(run(got), ref, fn)  # checked again: the same verdict, never ✅
        assert verdict(capsys) == line

    # the caller's model, batches and RNG are exactly as they were
    after = _state(model)
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert all(p.grad is None for p in model.parameters())
    assert not model.training
    assert [dict(b) for b in epoch_batches] == kept
    assert torch.equal(torch.get_rng_state(), rng)


def test_train_epoch_tolerance_separates_rounding_from_every_named_mistake(lora_run, epoch_batches):
    """The comparison's slack (``EPOCH_UPDATE_RTOL`` of the update's norm): exercise 9's loss stays
    ten times inside it, every mistake the check names ten times outside."""
    from reclor_lab.course.checks import nb04

    model, _, weights = lora_run
    trainable = [p for p in model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in trainable]
    schedule = checks.LRSchedule(2e-3, warmup_steps=7, total_steps=7)

    def epoch(fn):
        with torch.no_grad():
            for p, s in zip(trainable, start):
                p.copy_(s)
                p.grad = None
        torch.manual_seed(0)
        optimizer = torch.optim.AdamW(trainable, lr=2e-3, weight_decay=1e-3)
        fn(model, [dict(b) for b in epoch_batches], optimizer, weights, schedule, 2)
        return [p.detach().clone() for p in trainable]

    try:
        want = epoch(checks.reference_train_epoch)
        scale = checks._update_norm(want, start)
        assert scale > 0
        assert checks._update_norm(epoch(_epoch()), want) == 0  # the same operations: bit for bit
        assert checks._update_norm(epoch(_epoch(loss="log_softmax")), want) < 0.1 * checks.EPOCH_UPDATE_RTOL * scale
        for hint, wrong in nb04._epoch_mistakes().items():
            assert checks._update_norm(epoch(wrong), want) > 10 * checks.EPOCH_UPDATE_RTOL * scale, hint
    finally:
        with torch.no_grad():
            for p, s in zip(trainable, start):
                p.copy_(s)
                p.grad = None


def test_reference_train_epoch_is_fits_epoch_bit_for_bit(cfg, tmp_path):
    """The check's reference is fit's inner loop: from the same seed, after the same baseline
    evaluation, on fit's batches with fit's optimizer and schedule, the same losses and the same
    trained parameters, bit for bit."""
    from torch.utils.data import DataLoader

    from reclor_lab.data import BatchListSampler, column, epoch_batches, make_collator, model_inputs
    from reclor_lab.train import evaluate, fit, get_lr, make_optimizer, schedule_steps, setup, trainable_parameters

    small = cfg.replace(train_limit=40, eval_limit=8, epochs=1, batch_size=8, warmup_ratio=0.5)
    theirs = setup(small, verbose=False)
    history = fit(theirs, tmp_path / "run", verbose=False)
    mine = setup(small, verbose=False)
    evaluate(mine, mine.val_ds, progress=False)  # fit's baseline draws from torch's generator too
    order = epoch_batches(column(mine.train_ds, "length"), small.batch_size, small.seed, 1, small.group_by_length)
    loader = DataLoader(model_inputs(mine.train_ds), batch_sampler=BatchListSampler(order),
                        collate_fn=make_collator(mine.tokenizer), generator=torch.Generator())
    _, total, warmup = schedule_steps(small, len(mine.train_ds))
    assert small.grad_accum_steps == 1 and warmup > 1  # the learning rate changes from step to step
    optimizer = make_optimizer(mine.model, small, mine.device)
    losses, step = checks.reference_train_epoch(mine.model, list(loader), optimizer, mine.weights,
                                                lambda s: get_lr(s, small, total, warmup))
    assert step == len(history.steps) == len(order)
    assert losses == [row["loss"] for row in history.steps]
    assert all(torch.equal(a, b) for a, b in zip(trainable_parameters(mine.model), trainable_parameters(theirs.model)))


def test_train_epoch_needs_trainable_parameters():
    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="trainable parameters"):
        checks.check_train_epoch(_epoch(), frozen, [], None)


# --- 11. accuracy over examples ------------------------------------------------------------------------------------

def test_accuracy(capsys):
    ref = checks.reference_accuracy

    def by_hand(batches):
        correct = total = 0
        for preds, labels in batches:
            correct += sum(p == y for p, y in zip(preds, labels))
            total += len(labels)
        return correct / total

    def per_batch_mean(batches):
        return sum(sum(p == y for p, y in zip(ps, ys)) / len(ys) for ps, ys in batches) / len(batches)

    def over_batches(batches):
        return sum(sum(p == y for p, y in zip(ps, ys)) for ps, ys in batches) / len(batches)

    assert_passes(capsys, checks.check_accuracy, by_hand, number=11)
    assert_not_done(capsys, checks.check_accuracy, reference=ref, number=11)
    line = assert_fails(capsys, checks.check_accuracy, per_batch_mean, reference=ref, number=11,
                        hint="averages the per-batch accuracies")
    assert "short last batch" in line
    assert_fails(capsys, checks.check_accuracy, over_batches, reference=ref, number=11,
                 hint="number of BATCHES")


def test_a_crash_is_one_line_naming_the_error(capsys):
    def crashes(record):
        return record["answer"]

    _stands_in(checks.check_format_record(crashes), checks.reference_format_record, crashes)
    line = verdict(capsys)
    assert line.startswith("❌ Exercise 1 (") and "raised KeyError: 'answer'" in line, line


# --- hints that name the mistake -------------------------------------------------------------------

def test_hints_name_these_mistakes(capsys):
    def normalised(labels):
        w = [len(labels) / (4 * labels.count(c)) if labels.count(c) else 1.0 for c in range(4)]
        return [x / sum(w) for x in w]

    assert_fails(capsys, checks.check_class_weights, normalised, reference=checks.reference_class_weights,
                 number=2, hint="not normalised")
    assert_fails(capsys, checks.check_count_lora_params, lambda shapes, r: sum(2 * r * max(o, i) for o, i in shapes),
                 reference=checks.reference_count_lora_params, number=6, hint="2r·max(in, out)")

    def in_gib(shape, b, s, r, ckpt):
        return {k: v / 2**30 for k, v in checks.reference_qlora_memory(shape, b, s, r, ckpt).items()}

    assert_fails(capsys, checks.check_qlora_memory, in_gib, reference=checks.reference_qlora_memory, number=8,
                 hint="the right amount in GiB; return bytes")
    assert_fails(capsys, checks.check_accuracy, lambda batches: 100 * checks.reference_accuracy(batches),
                 reference=checks.reference_accuracy, number=11, hint="that is a percentage")


def test_lora_hints_name_integer_division_and_swapped_matrices(capsys, lora_run):
    layer = _lora_layer(lora_run[0])
    ref, check = checks.reference_lora_forward, checks.check_lora_forward
    assert_fails(capsys, check, lambda x, W0, A, B, alpha, r, d: x @ W0.T + (alpha // r) * (d(x) @ A.T) @ B.T,
                 layer, reference=ref, number=7, hint="alpha // r is integer division")
    assert_fails(capsys, check, lambda x, W0, A, B, alpha, r, d: x @ W0.T + alpha / r * (d(x) @ B) @ A,
                 layer, reference=ref, number=7, hint="A and B are swapped")


def test_cells_after_a_miss_say_they_use_the_reference(capsys):
    stand_in = checks.check_format_record(stub)
    capsys.readouterr()
    checks.note(stand_in)
    assert capsys.readouterr().out.strip() == ("(this cell uses the reference implementation of `stub`: `stub` is "
                                               "still ⏳, so what it shows is not your work)")

    def format_record(record):
        raise NotImplementedError

    stand_in = checks.check_format_record(format_record)
    capsys.readouterr()
    checks.note(stand_in)
    assert "exercise 1 is still ⏳" in capsys.readouterr().out
    assert checks.whose(stand_in) == "the reference's" and checks.whose(checks.reference_format_record) == "yours"
    checks.note(checks.reference_format_record)  # a passed function: nothing printed
    assert capsys.readouterr().out == ""


# --- 12. the evaluation pass -----------------------------------------------------------------------------------

def _eval_pass(*, eval_mode=True, no_grad=True, restore=True, per_batch_loss=False, per_batch_acc=False,
               weighted=True):
    """A student's evaluation pass, right by default; each flag makes one typical mistake."""
    def fn(model, batches, weights):
        was_training = model.training
        if eval_mode:
            model.eval()
        logits, labels = [], []
        with torch.set_grad_enabled(not no_grad):
            for b in batches:
                logits.append(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float())
                labels.append(b["labels"])
        if restore:
            model.train(was_training)
        w = weights if weighted else None
        if per_batch_loss:
            loss = sum(F.cross_entropy(lg, y, weight=w).item() for lg, y in zip(logits, labels)) / len(batches)
        else:
            loss = F.cross_entropy(torch.cat(logits), torch.cat(labels), weight=w).item()
        right = [int((lg.argmax(-1) == y).sum()) for lg, y in zip(logits, labels)]
        if per_batch_acc:
            acc = sum(r / len(y) for r, y in zip(right, labels)) / len(batches)
        else:
            acc = sum(right) / sum(len(y) for y in labels)
        return loss, acc
    return fn


def test_evaluation_pass(capsys, lora_run, tiny_llama_dir):
    model, _, _ = lora_run
    tokenizer = load_tokenizer(str(tiny_llama_dir))
    ref = checks.reference_evaluation_pass
    model.train()
    before = _state(model)
    good = _eval_pass()
    assert_passes(capsys, checks.check_evaluation_pass, good, model, tokenizer, number=12)

    def inference_mode(model, batches, weights):  # torch.inference_mode is as good as no_grad
        with torch.inference_mode():
            return good(model, batches, weights)

    assert_passes(capsys, checks.check_evaluation_pass, inference_mode, model, tokenizer, number=12)
    assert_not_done(capsys, checks.check_evaluation_pass, model, tokenizer, reference=ref, number=12)
    wrong = {
        "call model.eval()": _eval_pass(eval_mode=False),
        "torch.no_grad()": _eval_pass(no_grad=False),
        "left in eval mode": _eval_pass(restore=False),
        "mean of the per-batch losses": _eval_pass(per_batch_loss=True),
        "averages the per-batch accuracies": _eval_pass(per_batch_acc=True),
        "plain cross-entropy": _eval_pass(weighted=False),
    }
    for hint, fn in wrong.items():
        assert_fails(capsys, checks.check_evaluation_pass, fn, model, tokenizer, reference=ref, number=12,
                     hint=hint)
    # the check leaves the model as it found it: parameters, mode
    assert model.training
    after = _state(model)
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_evaluation_pass_reference_is_train_evaluate(lora_run, tiny_llama_dir):
    """The reference computes what the kit's loop reports: train.evaluate's loss and accuracy over
    the same records, on uneven batches (7 records in batches of 3)."""
    from torch.utils.data import DataLoader

    from reclor_lab.data import make_collator, model_inputs, tokenize_records
    from reclor_lab.train import Run, evaluate

    model, _, weights = lora_run
    path = tiny_llama_dir
    cfg = get_preset("tiny", model_name_or_path=str(path), compute_dtype="float32", eval_batch_size=3)
    tokenizer = load_tokenizer(str(path))
    records = [dict(r) for r in checks.CHECK_RECORDS] + json.loads((MINI / "train.json").read_text())
    ds, _ = tokenize_records(records, tokenizer, cfg.max_len, cfg.template)
    run = Run(cfg=cfg, tokenizer=tokenizer, model=model, device=torch.device("cpu"), dtype=torch.float32,
              weights=weights)
    want = evaluate(run, ds, progress=False)
    batches = list(DataLoader(model_inputs(ds), batch_size=3, collate_fn=make_collator(tokenizer)))
    assert [len(b["labels"]) for b in batches] == [3, 3, 1]
    loss, acc = checks.reference_evaluation_pass(model, batches, weights)
    assert acc == want["accuracy"]
    assert loss == pytest.approx(want["eval_loss"], rel=1e-6)


# --- 13. beat the model without a model -------------------------------------------------------------------------

def test_rule_baseline(capsys):
    from reclor_lab.results.baselines import overlap_answer

    ref = checks.reference_rule_baseline
    sweeping = ("In every case,", "Without exception,", "It is always true that", "Invariably,",
                "in every respect", "invariably")

    def by_hand(record):  # a student's own version: its own word split, its own list of openings
        passage = set(record["context"].lower().replace(".", " ").replace(",", " ").split())
        options = record["answers"]
        kept = [i for i, a in enumerate(options) if not a.startswith(sweeping)] or list(range(4))
        return max(kept, key=lambda i: len(passage & set(options[i].lower().replace(".", " ").split())))

    def cue_only(record):
        kept = [i for i, a in enumerate(record["answers"]) if not a.startswith(sweeping)]
        return kept[0] if kept else 0

    assert_passes(capsys, checks.check_rule_baseline, by_hand, number=13)
    assert_not_done(capsys, checks.check_rule_baseline, reference=ref, number=13)
    assert_fails(capsys, checks.check_rule_baseline, lambda r: 2, reference=ref, number=13, hint="every time")
    assert_fails(capsys, checks.check_rule_baseline, cue_only, reference=ref, number=13,
                 hint="where no option opens sweepingly (HARD)")
    assert_fails(capsys, checks.check_rule_baseline, overlap_answer, reference=ref, number=13,
                 hint="Reject the sweeping ones first")
    assert_fails(capsys, checks.check_rule_baseline, lambda r: "A", reference=ref, number=13,
                 hint="return the index (0–3)")


def test_rule_baseline_sees_no_label():
    """The judged records carry only what a reader of the question sees: no label, no id."""
    seen = []

    def spy(record):
        seen.append(set(record))
        return 0

    checks.check_rule_baseline(spy)
    assert seen and all(keys == {"context", "question", "answers"} for keys in seen)


# --- exercise numbers ---------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
EXERCISE_MENTION = re.compile(r"\b[Ee]xercises? (\d+)\b")


def _exercise_number_problems(source: str, notebook: str, where: str) -> list[str]:
    """What is wrong with the exercise numbers of one notebook's percent-format source: a number
    checks.EXERCISES does not have; a docstring or stub message ("Exercise N: …" inside
    ``def name``) or a markdown heading ("**Exercise N.**", for the next ``def``) whose number is
    not ``name``'s; a mention of another notebook's exercise that does not say "notebook NN"."""
    cells = re.split(r"^# %%.*$", source, flags=re.M)
    problems = []
    for k, cell in enumerate(cells):
        text = " ".join(line.lstrip("# ").strip() for line in cell.splitlines())
        defined = re.search(r"^(?:def|class) (\w+)\(", cell, re.M)
        following = next((m.group(1) for c in cells[k + 1:] if (m := re.search(r"^(?:def|class) (\w+)\(", c, re.M))),
                         None)
        for m in EXERCISE_MENTION.finditer(text):
            n, at = int(m.group(1)), f"{where}: {text[max(0, m.start() - 30):m.end() + 30]!r}"
            if n not in checks.EXERCISES:
                problems.append(f"{at}: there is no exercise {n}")
                continue
            home, _, name = checks.EXERCISES[n]
            heading = text[m.start() - 2:m.start()] == "**"
            if defined and not heading and text[m.start()] == "E":  # a docstring or stub message
                if (home, name) != (notebook, defined.group(1)):
                    problems.append(f"{at}: inside `{defined.group(1)}`, but exercise {n} is `{name}` "
                                    f"(notebook {home})")
            elif heading:
                if (home, name) != (notebook, following):
                    problems.append(f"{at}: the heading of `{following}`, but exercise {n} is `{name}` "
                                    f"(notebook {home})")
            elif (said := re.match(r"\W*(?:in|of) notebook (\d\d)", text[m.end():])) and said.group(1) != home:
                problems.append(f"{at}: exercise {n} is in notebook {home}, not {said.group(1)}")
            elif home != notebook and f"notebook {home}" not in text[max(0, m.start() - 60):m.end() + 60]:
                problems.append(f"{at}: exercise {n} is in notebook {home}, and the text does not say so")
    return problems


def test_every_exercise_number_matches_the_exercise_table():
    """Every exercise number in the reference notebooks and their student copies (markdown,
    docstrings, stub messages), in the checks' check_* docstrings and in the notebooks README's
    table names the exercise that checks.EXERCISES gives that number."""
    from reclor_lab.course.build import student_source

    problems = []
    for py in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.py")):
        text = py.read_text(encoding="utf-8")
        student, _ = student_source(text, py.name)
        problems += _exercise_number_problems(text, py.name[:2], py.name)
        problems += _exercise_number_problems(student, py.name[:2], f"student {py.name}")
    folder = REPO / "reclor_lab" / "course" / "checks"
    source = "".join(f.read_text(encoding="utf-8") for f in sorted(folder.glob("*.py")))
    for block in re.split(r"^def ", source, flags=re.M)[1:]:
        doc = re.search(r'"""Exercise (\d+)', block)
        used = re.search(r'NUMBER\["(\w+)"\]', block)
        if block.startswith("check_") and doc and used and checks.NUMBER[used.group(1)] != int(doc.group(1)):
            problems.append(f"checks.{block.split('(')[0]}: docstring says exercise {doc.group(1)}, "
                            f"it judges `{used.group(1)}` (exercise {checks.NUMBER[used.group(1)]})")
    table = re.findall(r"^\| (\d+) \| (\d\d) [^|]*\| `(\w+)\(", (REPO / "notebooks" / "README.md").read_text(), re.M)
    assert {int(n): (nb, name) for n, nb, name in table} == {n: (nb, name) for n, (nb, _, name) in
                                                             checks.EXERCISES.items()}
    assert problems == []


def test_the_exercise_number_scan_finds_a_wrong_number():
    source = """# %% [markdown]
# **Exercise 3.** Write `lora_targets(model)`. As in exercise 11, and exercise 4 in notebook 03.

# %%
def lora_targets(model):
    \"\"\"Exercise 3: the names.\"\"\"
    raise NotImplementedError("Exercise 5: write `lora_targets`")
"""
    found = _exercise_number_problems(source, "02", "sample")
    assert len(found) == 4, found  # the heading, the docstring, exercise 11 (notebook 05), notebook 03
    assert not _exercise_number_problems(source.replace("Exercise 3", "Exercise 5").replace(
        "exercise 11", "exercise 11 in notebook 05").replace("notebook 03", "notebook 02"), "02", "sample")
