"""Honest, independent solutions of the course's exercises: what a class that did not copy hands in.

``reclor-lab course grade`` flags pairs of students whose code for an exercise is the same after
renaming and reformatting (:mod:`reclor_lab.course.similar`). Its threshold, and the exercises it
leaves out because honest solutions are too short to tell apart, are calibrated on these: each
exercise's generator makes the choices that students who work alone make differently (the
algorithm, a loop or a comprehension, a helper or not, which library call, how the edge case is
handled, the order of independent steps), each drawn on its own from ``rng``. Every variant is a
correct solution (``tests/test_class_view.py`` judges a sample with the exercises' own checks).

``solution(name, rng)`` returns the source of one notebook's cell for exercise ``name`` (its
imports, helpers and ``def``).
"""

from __future__ import annotations

import random
from typing import Callable

_GENERATORS: dict[str, Callable[[random.Random], str]] = {}


def _generator(name: str):
    def register(fn):
        _GENERATORS[name] = fn
        return fn
    return register


def names() -> list[str]:
    """The exercises (their function names) that have a generator."""
    return sorted(_GENERATORS)


def solution(name: str, rng: random.Random) -> str:
    """One honest solution of exercise ``name`` (its function's name), drawn from ``rng``."""
    return _GENERATORS[name](rng).strip() + "\n"


def _pick(rng: random.Random, *options):
    return rng.choice(options)


def _lines(*parts: str) -> str:
    return "\n".join(p for p in parts if p)


# --- 1: format a record -------------------------------------------------------------------------------------

@_generator("format_record")
def _format_record(rng: random.Random) -> str:
    style = _pick(rng, "fstring", "join", "concat", "format", "loop", "helper")
    if style == "fstring":
        return _lines("def format_record(record):",
                      "    a, b, c, d = record['answers']",
                      "    return (f\"Context: {record['context']} Question: {record['question']} \"",
                      "            f\"Option A: {a} Option B: {b} Option C: {c} Option D: {d}\")")
    if style == "join":
        return _lines("def format_record(record):",
                      "    parts = ['Context: ' + record['context'], 'Question: ' + record['question']]",
                      "    for letter, text in zip('ABCD', record['answers']):",
                      "        parts.append(f'Option {letter}: {text}')",
                      "    return ' '.join(parts)")
    if style == "concat":
        return _lines("def format_record(record):",
                      "    ans = record['answers']",
                      "    out = 'Context: ' + record['context'] + ' Question: ' + record['question']",
                      "    out += ' Option A: ' + ans[0] + ' Option B: ' + ans[1]",
                      "    out += ' Option C: ' + ans[2] + ' Option D: ' + ans[3]",
                      "    return out")
    if style == "format":
        return _lines("TEMPLATE = 'Context: {} Question: {} Option A: {} Option B: {} Option C: {} Option D: {}'",
                      "",
                      "def format_record(record):",
                      "    return TEMPLATE.format(record['context'], record['question'], *record['answers'])")
    if style == "loop":
        return _lines("def format_record(record):",
                      "    text = f\"Context: {record['context']} Question: {record['question']}\"",
                      "    for i in range(4):",
                      "        text += ' Option ' + 'ABCD'[i] + ': ' + record['answers'][i]",
                      "    return text")
    return _lines("def option_line(letter, answer):",
                  "    return f'Option {letter}: {answer}'",
                  "",
                  "def format_record(record):",
                  "    options = ' '.join(option_line(l, a) for l, a in zip(['A', 'B', 'C', 'D'], record['answers']))",
                  "    return f\"Context: {record['context']} Question: {record['question']} {options}\"")


# --- 2: class weights ---------------------------------------------------------------------------------------

@_generator("class_weights_by_hand")
def _class_weights(rng: random.Random) -> str:
    k = _pick(rng, "4", "NUM_LABELS")
    head = "from reclor_lab.config import NUM_LABELS\n\n" if k == "NUM_LABELS" else ""
    count = _pick(rng, "counter", "count", "loop", "dict")
    build = _pick(rng, "comprehension", "loop", "map")
    if count == "counter":
        head = "from collections import Counter\n" + head
        counting = "    counts = Counter(labels)"
        n_c = "counts[c]"
    elif count == "count":
        counting = ""
        n_c = "labels.count(c)"
    elif count == "loop":
        counting = _lines(f"    counts = [0] * {k}", "    for y in labels:", "        counts[y] += 1")
        n_c = "counts[c]"
    else:
        counting = _lines("    counts = {}", "    for y in labels:", "        counts[y] = counts.get(y, 0) + 1")
        n_c = "counts.get(c, 0)"
    total = _pick(rng, "n", "len")
    n = "n" if total == "n" else "len(labels)"
    n_line = "    n = len(labels)" if total == "n" else ""
    if build == "comprehension":
        body = f"    return [{n} / ({k} * {n_c}) if {n_c} > 0 else 1.0 for c in range({k})]"
    elif build == "loop":
        body = _lines("    weights = []", f"    for c in range({k}):", f"        m = {n_c}",
                      "        if m == 0:", "            weights.append(1.0)", "        else:",
                      f"            weights.append({n} / ({k} * m))", "    return weights")
    else:
        body = _lines("    def weight(c):", f"        m = {n_c}", f"        return {n} / ({k} * m) if m else 1.0",
                      f"    return list(map(weight, range({k})))")
    return head + _lines("def class_weights_by_hand(labels):", counting, n_line, body)


# --- 3: the position the head reads -------------------------------------------------------------------------

@_generator("last_token_index")
def _last_token_index(rng: random.Random) -> str:
    style = _pick(rng, "arange", "flip", "loop", "nonzero", "max")
    if style == "arange":
        return _lines("import torch", "", "def last_token_index(input_ids, pad_token_id):",
                      "    keep = (input_ids != pad_token_id).long()",
                      "    pos = torch.arange(input_ids.size(1)).unsqueeze(0)",
                      "    return (keep * pos).argmax(dim=1)")
    if style == "flip":
        return _lines("import torch", "", "def last_token_index(input_ids, pad_token_id):",
                      "    real = (input_ids != pad_token_id).int()",
                      "    from_end = torch.flip(real, dims=[1]).argmax(dim=1)",
                      "    return input_ids.shape[1] - 1 - from_end")
    if style == "loop":
        return _lines("import torch", "", "def last_token_index(input_ids, pad_token_id):",
                      "    out = []",
                      "    for row in input_ids.tolist():",
                      "        j = len(row) - 1",
                      "        while j > 0 and row[j] == pad_token_id:",
                      "            j -= 1",
                      "        out.append(j)",
                      "    return torch.tensor(out)")
    if style == "nonzero":
        return _lines("import torch", "", "def last_token_index(input_ids, pad_token_id):",
                      "    result = torch.zeros(input_ids.shape[0], dtype=torch.long)",
                      "    for i in range(input_ids.shape[0]):",
                      "        idx = torch.nonzero(input_ids[i] != pad_token_id)",
                      "        if len(idx) > 0:",
                      "            result[i] = idx.max()",
                      "    return result")
    return _lines("import torch", "", "def last_token_index(input_ids, pad_token_id):",
                  "    batch, length = input_ids.shape",
                  "    steps = torch.arange(length).expand(batch, length)",
                  "    masked = torch.where(input_ids == pad_token_id, torch.zeros_like(steps), steps)",
                  "    return masked.max(dim=1).values")


# --- 4: NF4 on one block ------------------------------------------------------------------------------------

@_generator("nf4_block")
def _nf4_block(rng: random.Random) -> str:
    imports = ["import torch", "from reclor_lab.model import NF4_CODE"]
    top = []
    where = _pick(rng, "local", "module")
    if where == "module":
        top.append("LEVELS = torch.tensor(NF4_CODE)")
        levels = "LEVELS"
        make = ""
    else:
        levels = _pick(rng, "levels", "table", "q")
        make = f"    {levels} = torch.tensor(NF4_CODE, dtype=torch.float32)"
    flat = _pick(rng, "", "    block = block.flatten()", "    block = block.reshape(-1)", "    block = block.float()")
    absmax = _pick(rng, "block.abs().max()", "torch.max(torch.abs(block))", "block.abs().amax()",
                   "torch.abs(block).max()")
    scale = _pick(rng, "absmax", "m", "scale")
    norm = _pick(rng, "var", "div", "inline")
    if norm == "var":
        norm_line, x = f"    x = block / {scale}", "x"
    elif norm == "div":
        norm_line, x = f"    normed = torch.div(block, {scale})", "normed"
    else:
        norm_line, x = "", f"(block / {scale})"
    search = _pick(rng, "argmin", "loop", "bucketize", "stack", "helper")
    if search == "argmin":
        col = _pick(rng, f"{x}[:, None]", f"{x}.unsqueeze(-1)", f"{x}.view(-1, 1)", f"{x}.reshape(-1, 1)")
        dist = _pick(rng, f"({col} - {levels}).abs()", f"(({col} - {levels}) ** 2)", f"torch.abs({col} - {levels})")
        find = (f"    codes = {dist}.argmin(dim=1)" if rng.random() < 0.5
                else f"    codes = torch.argmin({dist}, dim=-1)")
    elif search == "loop":
        find = _lines("    idx = []", f"    for w in {x}.tolist():",
                      f"        idx.append(min(range(len({levels})), key=lambda k: abs(w - float({levels}[k]))))",
                      "    codes = torch.tensor(idx)")
    elif search == "bucketize":
        find = _lines(f"    edges = ({levels}[1:] + {levels}[:-1]) / 2", f"    codes = torch.bucketize({x}, edges)")
    elif search == "stack":
        find = _lines(f"    dists = torch.stack([({x} - c).abs() for c in {levels}])",
                      "    codes = torch.min(dists, dim=0).indices")
    else:
        top.append(_lines("def nearest(values, grid):", "    d = (values.unsqueeze(1) - grid.unsqueeze(0)).abs()",
                          "    return d.argmin(dim=1)"))
        find = f"    codes = nearest({x}, {levels})"
    deq = _pick(rng, f"{levels}[codes] * {scale}", f"torch.index_select({levels}, 0, codes) * {scale}",
                f"{scale} * {levels}[codes]")
    ret = _pick(rng, "direct", "var", "paren")
    if ret == "direct":
        out = f"    return codes, {scale}, {deq}"
    elif ret == "var":
        out = _lines(f"    values = {deq}", f"    return codes, {scale}, values")
    else:
        out = f"    return (codes, {scale}, {deq})"
    cast = _pick(rng, "", "    codes = codes.long()", "    codes = codes.to(torch.int64)")
    guard = _pick(rng, "", f"    if {scale} == 0:\n        {scale} = torch.tensor(1.0)",
                  f"    {scale} = torch.clamp({scale}, min=1e-12)")
    order = rng.random() < 0.5
    first = [make, flat] if order else [flat, make]
    return _lines(*imports, "", *top, "", "def nf4_block(block):", *first, f"    {scale} = {absmax}", guard, norm_line,
                  find, cast, out)


# --- 5: the LoRA targets ------------------------------------------------------------------------------------

@_generator("lora_targets")
def _lora_targets(rng: random.Random) -> str:
    test = _pick(rng, "isinstance", "typename")
    head = "import bitsandbytes as bnb\n\n" if test == "isinstance" else ""
    is4 = "isinstance(module, bnb.nn.Linear4bit)" if test == "isinstance" else "type(module).__name__ == 'Linear4bit'"
    leaf = _pick(rng, "name.split('.')[-1]", "name.rsplit('.', 1)[-1]", "name.rpartition('.')[2]")
    style = _pick(rng, "loop", "setcomp", "list", "helper")
    if style == "loop":
        body = _lines("    found = set()", "    for name, module in model.named_modules():",
                      f"        if not {is4}:", "            continue",
                      f"        short = {leaf}", "        if short != 'score':", "            found.add(short)",
                      "    return sorted(found)")
    elif style == "setcomp":
        body = _lines(f"    leaves = {{{leaf} for name, module in model.named_modules() if {is4}}}",
                      "    leaves.discard('score')", "    return sorted(leaves)")
    elif style == "list":
        body = _lines("    result = []", "    for name, module in model.named_modules():",
                      f"        short = {leaf}",
                      f"        if {is4} and short != 'score' and short not in result:",
                      "            result.append(short)", "    result.sort()", "    return result")
    else:
        head += _lines("def leaf_name(name):", f"    return {leaf}") + "\n\n"
        body = _lines(f"    names = [leaf_name(name) for name, module in model.named_modules() if {is4}]",
                      "    return sorted(set(names) - {'score'})")
    return head + _lines("def lora_targets(model):", body)


# --- 6: count the LoRA parameters ---------------------------------------------------------------------------

@_generator("count_lora_params")
def _count(rng: random.Random) -> str:
    style = _pick(rng, "sum", "loop", "factor", "map")
    if style == "sum":
        return _lines("def count_lora_params(shapes, r):", "    return sum(r * (o + i) for o, i in shapes)")
    if style == "loop":
        return _lines("def count_lora_params(shapes, r):", "    total = 0", "    for out_f, in_f in shapes:",
                      "        total += r * in_f + r * out_f", "    return total")
    if style == "factor":
        return _lines("def count_lora_params(shapes, r):", "    return r * sum(a + b for a, b in shapes)")
    return _lines("def count_lora_params(shapes, r):", "    return sum(map(lambda s: r * (s[0] + s[1]), shapes))")


# --- 7: the LoRA forward pass -------------------------------------------------------------------------------

@_generator("lora_forward")
def _lora_forward(rng: random.Random) -> str:
    style = _pick(rng, "matmul", "torch", "linear", "steps")
    if style == "matmul":
        return _lines("def lora_forward(x, W0, A, B, alpha, r, dropout):",
                      "    return x @ W0.T + (alpha / r) * (dropout(x) @ A.T @ B.T)")
    if style == "torch":
        return _lines("import torch", "", "def lora_forward(x, W0, A, B, alpha, r, dropout):",
                      "    base = torch.matmul(x, W0.t())",
                      "    update = torch.matmul(torch.matmul(dropout(x), A.t()), B.t())",
                      "    return base + update * alpha / r")
    if style == "linear":
        return _lines("import torch.nn.functional as F", "", "def lora_forward(x, W0, A, B, alpha, r, dropout):",
                      "    scaling = alpha / r",
                      "    return F.linear(x, W0) + scaling * F.linear(F.linear(dropout(x), A), B)")
    return _lines("def lora_forward(x, W0, A, B, alpha, r, dropout):", "    h = x @ W0.transpose(0, 1)",
                  "    low = dropout(x) @ A.transpose(0, 1)", "    h = h + (low @ B.transpose(0, 1)) * (alpha / r)",
                  "    return h")


# --- 14: a LoRALinear module ---------------------------------------------------------------------------------

@_generator("LoRALinear")
def _lora_linear(rng: random.Random) -> str:
    init = _pick(rng, "kaiming", "uniform", "linear")
    holder = _pick(rng, "params", "linears")
    drop = _pick(rng, "module", "functional")
    order = _pick(rng, "base_first", "update_first", "steps")
    scale = _pick(rng, "attr", "inline")
    head = ["import math", "", "import torch", "from torch import nn"]
    if drop == "functional":
        head.append("import torch.nn.functional as F")
    if rng.random() < 0.5:
        init_lines = ["        super().__init__()", "        for p in base.parameters():",
                      "            p.requires_grad = False", "        self.base = base"]
    else:
        init_lines = ["        super().__init__()", "        self.base = base",
                      "        self.base.requires_grad_(False)"]
    n_in, n_out = "base.in_features", "base.out_features"
    if holder == "params":
        if init == "kaiming":
            a = [f"        self.A = nn.Parameter(torch.empty(r, {n_in}))",
                 "        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))"]
        elif init == "uniform":
            a = [f"        bound = 1 / math.sqrt({n_in})",
                 f"        self.A = nn.Parameter(torch.empty(r, {n_in}).uniform_(-bound, bound))"]
        else:
            a = [f"        self.A = nn.Parameter(nn.Linear({n_in}, r, bias=False).weight.detach().clone())"]
        b = [f"        self.B = nn.Parameter(torch.zeros({n_out}, r))"]
        A_t, B_t = "self.A.T", "self.B.T"
        low = "h @ self.A.T @ self.B.T"
    else:
        a = [f"        self.A = nn.Linear({n_in}, r, bias=False)"]
        if init != "linear":
            a.append("        nn.init.kaiming_uniform_(self.A.weight, a=math.sqrt(5))")
        b = [f"        self.B = nn.Linear(r, {n_out}, bias=False)", "        nn.init.zeros_(self.B.weight)"]
        A_t = B_t = None
        low = "self.B(self.A(h))"
    del A_t, B_t
    if drop == "module":
        d_init, d_call = ["        self.dropout = nn.Dropout(dropout)"], "self.dropout(x)"
    else:
        d_init, d_call = ["        self.p = dropout"], "F.dropout(x, self.p, self.training)"
    if scale == "attr":
        s_init, s_use = ["        self.scaling = alpha / r"], "self.scaling"
    else:
        s_init, s_use = ["        self.alpha, self.r = alpha, r"], "(self.alpha / self.r)"
    if order == "base_first":
        body = ["        out = self.base(x)", f"        h = {d_call}", f"        return out + {low} * {s_use}"]
    elif order == "update_first":
        body = [f"        h = {d_call}", f"        update = {s_use} * {low}", "        return update + self.base(x)"]
    else:
        body = [f"        h = {d_call}", f"        delta = {low}", f"        delta = delta * {s_use}",
                "        y = self.base(x)", "        return y + delta"]
    return _lines(*head, "", "", "class LoRALinear(nn.Module):",
                  "    def __init__(self, base, r, alpha, dropout=0.0):",
                  *init_lines, *a, *b, *d_init, *s_init, "",
                  "    def forward(self, x):", *body)


# --- 15: the QLoRA configuration -------------------------------------------------------------------------------

_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _qlora_targets(rng: random.Random) -> tuple[list[str], str, list[str]]:
    """(imports, the target_modules expression, lines that compute it from ``model``) of one choice."""
    style = _pick(rng, "literal", "split", "all_linear", "scan")
    if style == "literal":
        names = list(_PROJECTIONS)
        rng.shuffle(names)
        return [], repr(names), []
    if style == "split":
        return [], "attention + mlp", ["    attention = ['q_proj', 'k_proj', 'v_proj', 'o_proj']",
                                       "    mlp = ['gate_proj', 'up_proj', 'down_proj']"]
    if style == "all_linear":
        return [], "'all-linear'", []
    return (["import bitsandbytes as bnb"], "sorted(targets)",
            ["    targets = set()", "    for name, module in model.named_modules():",
             "        if isinstance(module, bnb.nn.Linear4bit) and 'score' not in name:",
             "            targets.add(name.rsplit('.', 1)[-1])"])


@_generator("qlora_model")
def _qlora_model(rng: random.Random) -> str:
    target_imports, targets, target_lines = _qlora_targets(rng)
    task = _pick(rng, "'SEQ_CLS'", "TaskType.SEQ_CLS")
    peft_names = ["LoraConfig", "get_peft_model"] + (["TaskType"] if task.startswith("TaskType") else [])
    prepare = rng.random() < 0.3
    if prepare:
        peft_names.append("prepare_model_for_kbit_training")
    head = ["import torch" if rng.random() < 0.5 else "",
            *target_imports,
            "from peft import " + ", ".join(sorted(peft_names)),
            "from transformers import AutoModelForSequenceClassification, BitsAndBytesConfig"]
    pad = _pick(rng, "config", "tokenizer", "number")
    if pad == "tokenizer":
        head[-1] = "from transformers import AutoModelForSequenceClassification, AutoTokenizer, BitsAndBytesConfig"
    quant = ["    quant = BitsAndBytesConfig(", "        load_in_4bit=True,", "        bnb_4bit_quant_type='nf4',",
             "        bnb_4bit_use_double_quant=True,", "        bnb_4bit_compute_dtype=compute_dtype,", "    )"]
    if rng.random() < 0.5:
        quant[2:5] = [quant[4], quant[2], quant[3]]
    dtype_arg = _pick(rng, "", ", dtype=compute_dtype")
    load = [f"    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=4, "
            f"quantization_config=quant{dtype_arg})"]
    pad_line = {"config": "    model.config.pad_token_id = model.config.eos_token_id",
                "tokenizer": "    model.config.pad_token_id = AutoTokenizer.from_pretrained(model_path).eos_token_id",
                "number": "    model.config.pad_token_id = 2  # </s>: Llama-2 has no pad token, eos stands in"}[pad]
    settings = _pick(rng, "kwargs", "dict")
    if settings == "kwargs":
        lora = ["    lora = LoraConfig(r=16, lora_alpha=16, lora_dropout=0.05, bias='none',",
                f"                      target_modules={targets}, task_type={task})"]
    else:
        lora = ["    settings = dict(r=16, lora_alpha=16, lora_dropout=0.05)",
                f"    lora = LoraConfig(task_type={task}, target_modules={targets}, **settings)"]
    prep = ["    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)"] if prepare else []
    if rng.random() < 0.5:  # the pad id before or after the adapters go in: the same config either way
        body = [*quant, *load, pad_line, *prep, *target_lines, *lora, "    return get_peft_model(model, lora)"]
    else:
        body = [*quant, *load, *prep, *target_lines, *lora, "    peft_model = get_peft_model(model, lora)",
                pad_line.replace("model.config", "peft_model.config", 1), "    return peft_model"]
    return _lines(*head, "", "", "def qlora_model(model_path, compute_dtype):", *body)


# --- 8: QLoRA memory of Llama-2-7B --------------------------------------------------------------------------

@_generator("qlora_memory")
def _qlora_memory(rng: random.Random) -> str:
    head = "from reclor_lab.course.checks import NF4_DQ_BITS, TRAINED_BYTES\n\n"
    split = _pick(rng, "attn_mlp", "per_layer", "inline")
    if split == "attn_mlp":
        weights = _lines("    h, m, L = shape.hidden, shape.intermediate, shape.layers",
                         "    attention = 4 * h * h", "    mlp = 3 * h * m", "    quantized = L * (attention + mlp)",
                         "    embed = shape.vocab * h", "    norms = (2 * L + 1) * h", "    head = 4 * h",
                         "    plain = embed + norms + head")
    elif split == "per_layer":
        weights = _lines("    h = shape.hidden", "    m = shape.intermediate", "    L = shape.layers",
                         "    per_layer = 4 * h * h + 3 * h * m", "    quantized = per_layer * L",
                         "    plain = h * (shape.vocab + 2 * L + 1 + 4)")
    else:
        weights = _lines("    h, m, L = (shape.hidden, shape.intermediate, shape.layers)",
                         "    quantized = L * h * (4 * h + 3 * m)",
                         "    plain = shape.vocab * h + 2 * L * h + h + 4 * h")
    lora = _pick(rng, "shapes", "formula", "loop", "helper")
    if lora == "shapes":
        lora_code = _lines("    shapes = [(h, h)] * 4 + [(m, h)] * 2 + [(h, m)]",
                           "    adapters = L * sum(r * (a + b) for a, b in shapes)")
    elif lora == "formula":
        lora_code = "    adapters = L * r * (8 * h + 3 * (h + m))"
    elif lora == "helper":
        head += _lines("def adapter_params(d_out, d_in, rank):", "    return rank * d_in + rank * d_out") + "\n\n"
        lora_code = _lines("    attention_lora = 4 * adapter_params(h, h, r)",
                           "    mlp_lora = 2 * adapter_params(m, h, r) + adapter_params(h, m, r)",
                           "    adapters = L * (attention_lora + mlp_lora)")
    else:
        lora_code = _lines("    adapters = 0", "    for out_f, in_f in [(h, h)] * 4 + [(m, h), (m, h), (h, m)]:",
                           "        adapters += r * (out_f + in_f)", "    adapters *= L")
    bytes_ = _pick(rng, "", "    nf4_bytes = NF4_DQ_BITS / 8", "    bits_per_weight = NF4_DQ_BITS")
    if bytes_:
        weights += "\n" + bytes_
    head_params = _pick(rng, "4 * h", "h * 4", "score_params")
    if head_params == "score_params":
        weights += "\n    score_params = 4 * h"
    tokens = _pick(rng, "bs", "inline", "helper")
    if tokens == "bs":
        act = _lines("    tokens = batch_size * seq_len",
                     "    layer_acts = tokens * (34 * h + 5 * shape.heads * seq_len)",
                     "    if checkpointing:", "        activations = L * tokens * h * 2 + layer_acts", "    else:",
                     "        activations = L * layer_acts")
    elif tokens == "helper":
        head += _lines("def layer_activations(b, s, h, heads):", "    return b * s * (34 * h + 5 * heads * s)") + "\n\n"
        act = _lines("    per_layer_acts = layer_activations(batch_size, seq_len, h, shape.heads)",
                     "    if not checkpointing:", "        activations = per_layer_acts * L", "    else:",
                     "        activations = per_layer_acts + 2 * L * batch_size * seq_len * h")
    else:
        act = _lines("    one = batch_size * seq_len * (34 * h + 5 * shape.heads * seq_len)",
                     "    saved = 2 * h * batch_size * seq_len * L",
                     "    activations = saved + one if checkpointing else one * L")
    per_weight = {"": "NF4_DQ_BITS / 8", "    nf4_bytes = NF4_DQ_BITS / 8": "nf4_bytes",
                  "    bits_per_weight = NF4_DQ_BITS": "bits_per_weight / 8"}[bytes_]
    ret = _pick(rng, "dict", "build", "vars", "dictcall")
    if ret == "dict":
        out = _lines(f"    return {{'weights': quantized * {per_weight} + 4 * plain,",
                     f"            'trained': TRAINED_BYTES * (adapters + {head_params}),",
                     "            'activations': activations}")
    elif ret == "build":
        out = _lines("    result = {}", f"    result['weights'] = plain * 4 + quantized * ({per_weight})",
                     f"    result['trained'] = (adapters + {head_params}) * TRAINED_BYTES",
                     "    result['activations'] = activations", "    return result")
    elif ret == "vars":
        out = _lines(f"    weight_bytes = quantized * {per_weight} + plain * 4",
                     f"    trained_bytes = (adapters + {head_params}) * TRAINED_BYTES",
                     "    return {'weights': weight_bytes, 'trained': trained_bytes, 'activations': activations}")
    else:
        out = _lines(f"    return dict(weights=4 * plain + {per_weight} * quantized,",
                     f"                trained=TRAINED_BYTES * ({head_params} + adapters), activations=activations)")
    middle = [lora_code, act] if rng.random() < 0.5 else [act, lora_code]
    return head + _lines("def qlora_memory(shape, batch_size, seq_len, r, checkpointing):", weights, *middle, out)


# --- 9: weighted cross-entropy ------------------------------------------------------------------------------

@_generator("weighted_ce")
def _weighted_ce(rng: random.Random) -> str:
    style = _pick(rng, "gather", "logsumexp", "onehot", "loop")
    if style == "gather":
        return _lines("import torch", "", "def weighted_ce(logits, labels, weights):",
                      "    logp = torch.log_softmax(logits.float(), dim=-1)",
                      "    picked = logp.gather(1, labels.unsqueeze(1)).squeeze(1)",
                      "    w = weights.float()[labels]",
                      "    return -(w * picked).sum() / w.sum()")
    if style == "logsumexp":
        return _lines("import torch", "", "def weighted_ce(logits, labels, weights):",
                      "    z = logits.float()",
                      "    nll = torch.logsumexp(z, dim=1) - z[torch.arange(len(labels)), labels]",
                      "    per = weights.float()[labels]",
                      "    return torch.sum(per * nll) / torch.sum(per)")
    if style == "onehot":
        return _lines("import torch", "import torch.nn.functional as F", "",
                      "def weighted_ce(logits, labels, weights):",
                      "    target = F.one_hot(labels, num_classes=logits.shape[-1]).float()",
                      "    losses = -(target * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1)",
                      "    wts = (target * weights.float()).sum(dim=-1)",
                      "    return (losses * wts).sum() / wts.sum()")
    return _lines("import torch", "", "def weighted_ce(logits, labels, weights):",
                  "    num, den = 0.0, 0.0",
                  "    for row, y in zip(logits.float(), labels.tolist()):",
                  "        loss = -torch.log_softmax(row, dim=0)[y]",
                  "        num = num + weights[y].float() * loss",
                  "        den = den + weights[y].float()",
                  "    return num / den")


# --- 10: one training step ----------------------------------------------------------------------------------

@_generator("one_train_step")
def _train_step(rng: random.Random) -> str:
    head = "import torch\n\n"
    inputs = _pick(rng, "keys", "filter", "pop")
    if inputs == "keys":
        forward = "    logits = model(input_ids=batch['input_ids'], attention_mask=batch['attention_mask']).logits"
    elif inputs == "filter":
        forward = _lines("    features = {k: v for k, v in batch.items() if k != 'labels'}",
                         "    out = model(**features)", "    logits = out.logits")
    else:
        forward = _lines("    inputs = dict(batch)", "    labels = inputs.pop('labels')",
                         "    logits = model(**inputs).logits")
    labels = "labels" if inputs == "pop" else "batch['labels']"
    params = _pick(rng, "all", "trainable")
    clip = ("    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)" if params == "all" else
            _lines("    trainable = [p for p in model.parameters() if p.requires_grad]",
                   "    torch.nn.utils.clip_grad_norm_(trainable, max_norm=max_grad_norm)"))
    zero = _pick(rng, "before", "after")
    ret = _pick(rng, "item", "float")
    value = "loss.item()" if ret == "item" else "float(loss.detach())"
    return head + _lines("def one_train_step(model, batch, optimizer, weights, max_grad_norm=0.3):",
                         "    optimizer.zero_grad()" if zero == "before" else "", forward,
                         f"    loss = weighted_ce(logits, {labels}, weights)", "    loss.backward()", clip,
                         "    optimizer.step()", "    optimizer.zero_grad()" if zero == "after" else "",
                         f"    return {value}")


# --- 16: one epoch -----------------------------------------------------------------------------------------

@_generator("train_epoch")
def _train_epoch(rng: random.Random) -> str:
    head = "import torch\n\n"
    loss_line = _pick(rng, "    loss = weighted_ce(logits, batch['labels'], weights)",
                      "    loss = torch.nn.functional.cross_entropy(logits.float(), batch['labels'], weight=weights)")
    forward = _pick(rng, "logits = model(input_ids=batch['input_ids'], attention_mask=batch['attention_mask']).logits",
                    "logits = model(**{k: v for k, v in batch.items() if k != 'labels'}).logits")
    set_lr = _pick(rng, "for group in optimizer.param_groups:\n    group['lr'] = lr_at({s})",
                   "optimizer.param_groups[0]['lr'] = lr_at({s})")
    clip = _pick(rng, "torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)",
                 "torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], "
                 "max_norm=max_grad_norm)")
    zero = _pick(rng, "before", "after")
    loop = _pick(rng, "counter", "enumerate", "via_step")
    if loop == "via_step":  # exercise 10's step, with the schedule's lr set first
        lr_lines = "\n".join("        " + x for x in set_lr.format(s="step").splitlines())
        body = _lines("    for batch in batches:", lr_lines,
                      "        losses.append(one_train_step(model, batch, optimizer, weights, max_grad_norm))",
                      "        step += 1", "    return losses, step")
        return head + _lines("def train_epoch(model, batches, optimizer, weights, lr_at, step=0, max_grad_norm=0.3):",
                             "    model.train()", "    losses = []", body)
    s_name = "step" if loop == "counter" else "step + i"
    inner = _lines("optimizer.zero_grad()" if zero == "before" else "", forward, loss_line.strip(),
                   "loss.backward()", set_lr.format(s=s_name), clip,
                   "optimizer.step()", "optimizer.zero_grad()" if zero == "after" else "",
                   "step += 1" if loop == "counter" else "", "losses.append(loss.item())")
    inner = "\n".join("        " + line for line in inner.splitlines())
    for_line = "    for batch in batches:" if loop == "counter" else "    for i, batch in enumerate(batches):"
    end = "    return losses, step" if loop == "counter" else "    return losses, step + len(batches)"
    return head + _lines("def train_epoch(model, batches, optimizer, weights, lr_at, step=0, max_grad_norm=0.3):",
                         "    model.train()", "    losses = []", for_line, inner, end)


# --- 11: accuracy over examples -----------------------------------------------------------------------------

@_generator("accuracy_over_examples")
def _accuracy(rng: random.Random) -> str:
    style = _pick(rng, "loop", "sums", "flat", "zip")
    if style == "loop":
        return _lines("def accuracy_over_examples(batches):", "    right = seen = 0",
                      "    for preds, labels in batches:",
                      "        for p, y in zip(preds, labels):", "            right += p == y", "            seen += 1",
                      "    return right / seen")
    if style == "sums":
        return _lines("def accuracy_over_examples(batches):",
                      "    hits = sum(sum(int(p == y) for p, y in zip(ps, ys)) for ps, ys in batches)",
                      "    return hits / sum(len(ys) for _, ys in batches)")
    if style == "flat":
        return _lines("def accuracy_over_examples(batches):", "    all_p, all_y = [], []", "    for ps, ys in batches:",
                      "        all_p.extend(ps)", "        all_y.extend(ys)",
                      "    return sum(a == b for a, b in zip(all_p, all_y)) / len(all_y)")
    return _lines("def accuracy_over_examples(batches):",
                  "    pairs = [(p, y) for preds, labels in batches for p, y in zip(preds, labels)]",
                  "    return sum(1 for p, y in pairs if p == y) / len(pairs)")


# --- 12: the evaluation pass --------------------------------------------------------------------------------

@_generator("evaluation_pass")
def _evaluation(rng: random.Random) -> str:
    head = "import torch\n\n"
    guard = _pick(rng, "no_grad", "inference")
    ctx = "torch.no_grad()" if guard == "no_grad" else "torch.inference_mode()"
    restore = _pick(rng, "flag", "always")
    pre = "    was_training = model.training\n    model.eval()" if restore == "flag" else "    model.eval()"
    post = "    model.train(was_training)" if restore == "flag" else "    model.train()"
    call = _pick(rng, "kw", "filter")
    forward = ("model(input_ids=b['input_ids'], attention_mask=b['attention_mask']).logits" if call == "kw" else
               "model(**{k: v for k, v in b.items() if k != 'labels'}).logits")
    style = _pick(rng, "concat", "running", "lists")
    if style == "lists":
        loss_of = _pick(rng, "logsumexp", "log_softmax")
        per = ("torch.logsumexp(z, dim=-1) - z.gather(1, y[:, None]).squeeze(1)" if loss_of == "logsumexp"
               else "-torch.log_softmax(z, dim=-1)[torch.arange(len(y)), y]")
        body = _lines("    losses, wts, hits = [], [], []", f"    with {ctx}:", "        for b in batches:",
                      f"            z = {forward}.float()", "            y = b['labels']",
                      f"            losses.append({per})", "            wts.append(weights.float()[y])",
                      "            hits.append(z.argmax(dim=-1) == y)", post,
                      "    nll, w, right = torch.cat(losses), torch.cat(wts), torch.cat(hits)",
                      "    return float((nll * w).sum() / w.sum()), float(right.float().mean())")
    elif style == "concat":
        body = _lines("    outs, ys = [], []", f"    with {ctx}:", "        for b in batches:",
                      f"            outs.append({forward}.float())", "            ys.append(b['labels'])",
                      post, "    logits = torch.cat(outs)", "    labels = torch.cat(ys)",
                      "    w = weights.float()[labels]",
                      "    nll = torch.logsumexp(logits, dim=-1) - logits.gather(1, labels[:, None]).squeeze(1)",
                      "    loss = (w * nll).sum() / w.sum()",
                      "    acc = (logits.argmax(dim=-1) == labels).float().mean()",
                      "    return loss.item(), acc.item()")
    else:
        body = _lines("    weighted, weight_sum, correct, count = 0.0, 0.0, 0, 0", f"    with {ctx}:",
                      "        for b in batches:", f"            logits = {forward}.float()",
                      "            y = b['labels']", "            w = weights.float()[y]",
                      "            logp = torch.log_softmax(logits, dim=-1)",
                      "            weighted += float(-(w * logp[torch.arange(len(y)), y]).sum())",
                      "            weight_sum += float(w.sum())",
                      "            correct += int((logits.argmax(-1) == y).sum())", "            count += len(y)",
                      post, "    return weighted / weight_sum, correct / count")
    return head + _lines("def evaluation_pass(model, batches, weights):", pre, body)


# --- 13: a rule without a model -----------------------------------------------------------------------------

@_generator("rule_baseline")
def _rule(rng: random.Random) -> str:
    tokens = _pick(rng, "regex", "split", "isalpha")
    if tokens == "regex":
        head = _lines("import re", "", "def tokens(text):", "    return set(re.findall(r\"[a-z0-9']+\", text.lower()))")
    elif tokens == "split":
        head = _lines("def tokens(text):", "    return {w.strip('.,;:?!').lower() for w in text.split()}")
    else:
        head = _lines("def tokens(text):", "    cleaned = ''.join(ch.lower() if ch.isalnum() else ' ' for ch in text)",
                      "    return set(cleaned.split())")
    cue = _pick(rng, "tuple", "any", "lower")
    if cue == "tuple":
        flag = _lines("BAD_OPENINGS = ('In every case,', 'Without exception,', 'It is always true that',",
                      "                'Invariably,', 'in every respect', 'invariably')", "",
                      "def sweeping(option):", "    return option.startswith(BAD_OPENINGS)")
    elif cue == "any":
        flag = _lines("ABSOLUTES = ['In every case,', 'Without exception,', 'It is always true that', 'Invariably,',",
                      "             'in every respect', 'invariably']", "",
                      "def sweeping(option):", "    return any(option.startswith(a) for a in ABSOLUTES)")
    else:
        flag = _lines("def sweeping(option):", "    start = option.lower()",
                      "    for word in ('in every case', 'without exception', 'it is always true', 'invariably',",
                      "                 'in every respect'):", "        if start.startswith(word):",
                      "            return True", "    return False")
    context = _pick(rng, "context", "both")
    if rng.random() < 0.5:
        head = head.replace("def tokens(text):", "STOP = {'the', 'a', 'an', 'of', 'to', 'and', 'in', 'is'}\n\n"
                            "def all_tokens(text):", 1) + "\n\ndef tokens(text):\n    return all_tokens(text) - STOP"
    score = _pick(rng, "overlap", "count", "ratio")
    if score == "overlap":
        measure = "len(tokens(answer) & passage)"
    elif score == "count":
        measure = "sum(1 for w in tokens(answer) if w in passage)"
    else:
        measure = "len(tokens(answer) & passage) / (1 + len(tokens(answer)))"
    passage_line = ("    passage = tokens(record['context'])" if context == "context" else
                    "    passage = tokens(record['context']) | tokens(record['question'])")
    pick = _pick(rng, "max", "loop")
    of_i = measure.replace("answer", "record['answers'][i]")
    if pick == "max":
        body = _lines(passage_line,
                      "    options = [i for i, a in enumerate(record['answers']) if not sweeping(a)]",
                      _pick(rng, "    if not options:\n        options = list(range(4))",
                            "    options = options or [0, 1, 2, 3]",
                            "    if len(options) == 0:\n        return 0"),
                      f"    return max(options, key=lambda i: {of_i})")
    else:
        body = _lines(passage_line, "    best, best_score = 0, -1",
                      "    for i, answer in enumerate(record['answers']):", "        if sweeping(answer):",
                      "            continue", f"        s = {measure}", "        if s > best_score:",
                      "            best, best_score = i, s", "    return best")
    return _lines(head, "", flag, "", "def rule_baseline(record):", body)


# --- a copy in disguise -------------------------------------------------------------------------------------

def _kept_names(tree) -> set[str]:
    """The names a disguise keeps: builtins, imported modules, the exercise's (the last def or
    class) and a class's methods."""
    import ast
    import builtins

    keep = set(dir(builtins))
    exercise = None
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            keep |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            exercise = node.name  # the last def (or class) is the exercise's (the generators put it last)
        if isinstance(node, ast.ClassDef):  # its methods keep their names: torch calls forward
            keep |= {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
    keep.add(exercise)
    return keep


def _commented(code: str, rng: random.Random) -> list[str]:
    """The lines of ``code``, a ``# my own work`` comment above about half its returns, loops and ifs."""
    lines = []
    for line in code.splitlines():
        lines.append(line)
        if line.lstrip().startswith(("return", "for ", "if ")) and rng.random() < 0.5:
            lines.insert(len(lines) - 1, " " * (len(line) - len(line.lstrip())) + "# my own work")
    return lines


def disguise(source: str, rng: random.Random) -> str:
    """``source`` as a student who copied it hands it in: every name the author chose (functions
    but the exercise's, arguments, variables, helpers) renamed, the layout redone (``ast.unparse``),
    comments and a docstring added. The logic is the same.

    >>> src = "def f(a):\\n    b = a + 1\\n    return b"
    >>> "a + 1" in disguise(src, random.Random(0))
    False
    """
    import ast

    tree = ast.parse(source)
    keep = _kept_names(tree)
    words = ["val", "tmp", "thing", "res", "acc", "item", "foo", "data", "stuff", "my"]
    renamed: dict[str, str] = {}

    def new(name: str) -> str:
        if name in keep or name.startswith("__"):
            return name
        return renamed.setdefault(name, f"{rng.choice(words)}_{len(renamed)}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            node.id = new(node.id)
        elif isinstance(node, ast.arg):
            node.arg = new(node.arg)
        elif isinstance(node, ast.FunctionDef):
            node.name = new(node.name)
    return "# solution\n" + "\n".join(_commented(ast.unparse(tree), rng)) + "\n"
