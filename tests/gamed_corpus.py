"""Submissions a student who games the grader would hand in, and honest work written in unusual
ways, generated from the committed student notebooks (never ReClor text): each is the student
notebook, solved or not, with one trick or one unusual solution.

:func:`write_class` writes a class folder (one sub-folder per student, named after the case) and
returns what each must get: an exact status for honest work (``honest_…``: no false fail) and
:data:`NOT_PASSED` for each exercise a trick is about (no false pass).
``python tests/gamed_corpus.py FOLDER`` writes it for a manual look.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import jupytext
import nbformat

from reclor_lab.course import checks
from reclor_lab.config import REPO_ROOT
from reclor_lab.course.build import KERNELSPEC, put_back_solutions

NOTEBOOKS = REPO_ROOT / "notebooks"
NB = {"01": "01_data_and_tokenization", "02": "02_quantization", "03": "03_lora", "04": "04_training_loop",
      "05": "05_results", "06": "06_baselines_and_errors"}
#: What a trick's exercise must get: anything but ✅ (❌, ⏳, limit, error).
NOT_PASSED = "not ✅"
#: The reason a blocked giveaway gives.
BLOCKED = "not available while grading exercise"


@dataclass(frozen=True)
class Case:
    """One submission: its student (folder) name, notebook, expected status per exercise (exact, or
    :data:`NOT_PASSED`), and a word the reason of its first such exercise must contain."""

    student: str
    notebook: str
    expect: dict[int, str]
    reason: str = ""


def sources(notebook: str) -> tuple[list[str], list[str]]:
    """The student notebook's cell sources (stubs) and the same with the solutions put back."""
    student = (NOTEBOOKS / "student" / f"{NB[notebook]}.py").read_text(encoding="utf-8")
    solved = put_back_solutions(student, (NOTEBOOKS / f"{NB[notebook]}.py").read_text(encoding="utf-8"))
    return _cells(student), _cells(solved)


def _cells(py: str) -> list[str]:
    nb = jupytext.reads(py, fmt="py:percent")
    return [c.source if c.cell_type == "code" else "#md " + c.source.replace("\n", " ") for c in nb.cells]


def _def_cell(cells: list[str], name: str) -> int:
    return next(k for k, c in enumerate(cells) if re.search(rf"^(?:def|class) {name}\(", c, re.M))


def _check_cell(cells: list[str], name: str) -> int:
    return next(k for k, c in enumerate(cells) if re.search(rf"^{name} = checks\.check_\w+\({name}\b", c, re.M))


def _write(cells: list[str], path: Path) -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(c[4:]) if c.startswith("#md ")
                                         else nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


def _replace_def(cells: list[str], name: str, new: str) -> list[str]:
    cells = list(cells)
    cells[_def_cell(cells, name)] = new
    return cells


def _insert_after(cells: list[str], k: int, *new: str) -> list[str]:
    return cells[:k + 1] + list(new) + cells[k + 1:]


def _wrapped(cells: list[str], name: str) -> list[str]:
    """The solved ``def`` renamed to a helper, and the exercise's function a thin wrapper around it."""
    source = cells[_def_cell(cells, name)].replace(f"def {name}(", f"def _my_{name}(")
    return _replace_def(cells, name, source + f"\n\n\ndef {name}(*args, **kwargs):\n"
                                               f"    return _my_{name}(*args, **kwargs)")


def _count_cache() -> dict:
    return {repr((shapes, r)): checks.reference_count_lora_params(shapes, r) for _, shapes, r in checks._COUNT_CASES}


def _format_cache() -> dict:
    return {r["id_string"]: checks.reference_format_record(r) for r in checks.CHECK_RECORDS}


def write_class(folder: Path) -> list[Case]:
    """Write every case into ``folder`` (``folder/<student>/<notebook>.ipynb``); return the cases."""
    stub01, solved01 = sources("01")
    stub02, solved02 = sources("02")
    stub03, solved03 = sources("03")
    stub04, solved04 = sources("04")
    _, solved05 = sources("05")
    stub06, solved06 = sources("06")
    X = NOT_PASSED
    ALL01 = {1: X, 2: X, 3: X}
    cases: list[tuple[Case, list[str]]] = []

    def add(case: Case, cells: list[str]) -> None:
        cases.append((case, cells))

    def honest(student: str, notebook: str, name: str, source: str, number: int, solved: list[str]) -> None:
        add(Case("honest_" + student, notebook, {number: "✅"}), _replace_def(solved, name, source))

    def gamed(student: str, notebook: str, name: str, source: str, number: int, solved: list[str],
              reason: str = "") -> None:
        add(Case(student, notebook, {number: X}, reason), _replace_def(solved, name, source))

    # --- honest work: the baseline every trick is compared with
    add(Case("honest_solved", "01", {1: "✅", 2: "✅", 3: "✅"}), solved01)
    add(Case("honest_untouched", "01", {1: "⏳", 2: "⏳", 3: "⏳"}), stub01)
    k = _check_cell(stub01, "format_record")
    wrong = ('def format_record(record):\n    a, b, c, d = record["answers"]\n'
             '    return f"Context: {record[\'context\']} Question: {record[\'question\']} Option: {a} Option: {b} '
             'Option: {c} Option: {d}"')
    fixed = solved01[_def_cell(solved01, "format_record")]
    add(Case("honest_fail_then_fix", "01", {1: "✅", 2: "⏳", 3: "⏳"}),
        _insert_after(_replace_def(stub01, "format_record", wrong), k,
                      fixed, "format_record = checks.check_format_record(format_record)"))
    add(Case("honest_wrong", "01", {1: "❌", 2: "⏳", 3: "⏳"}, "Option A:"),
        _replace_def(stub01, "format_record", wrong))
    add(Case("passes_then_redefines_wrong", "01", {1: "❌", 2: "✅", 3: "✅"}, "Option A:"), solved01 + [wrong])
    add(Case("exits_before_summary", "01", {1: "❌"}, "Option A:"),
        _insert_after(solved01, _def_cell(solved01, "last_token_index") + 2, wrong, "import os\nos._exit(0)"))

    # --- honest work written in unusual ways (none of it may be called gamed or fail)
    fmt = ('    a, b, c, d = record["answers"]\n'
           '    return (f"Context: {record[\'context\']} Question: {record[\'question\']} "\n'
           '            f"Option A: {a} Option B: {b} Option C: {c} Option D: {d}")')
    honest("input_as_a_name", "01", "format_record",
           "def format_record(record):\n    input = record\n" + fmt.replace("record[", "input["), 1, solved01)
    honest("lambda", "01", "format_record",
           "format_record = lambda record: ' '.join(\n    [f\"Context: {record['context']}\", "
           "f\"Question: {record['question']}\"]\n"
           "    + [f'Option {l}: {a}' for l, a in zip('ABCD', record['answers'])])", 1, solved01)
    honest("dunder_reads", "01", "format_record",
           "def format_record(record):\n    get = record.__getitem__\n    assert type(record).__name__ == 'dict'\n"
           "    parts = [f\"Context: {get('context')}\", f\"Question: {get('question')}\"]\n"
           "    parts += ['Option %s: %s' % (l, a) for l, a in zip('ABCD', get('answers'))]\n"
           "    return ' '.join(parts)", 1, solved01)
    honest("cell_magic_time", "01", "format_record", "%%time\ndef format_record(record):\n" + fmt, 1, solved01)
    honest("line_magics", "01", "format_record",
           "%load_ext autoreload\n!echo solving\ndef format_record(record):\n" + fmt + "\n%time format_record", 1,
           solved01)
    honest("operator_and_random", "01", "class_weights_by_hand",
           "import operator\nimport random\n\ndef class_weights_by_hand(labels):\n"
           "    shuffled = random.sample(list(labels), len(labels))\n"
           "    counts = [operator.countOf(shuffled, c) for c in range(4)]\n"
           "    return [operator.truediv(len(labels), 4 * n) if n else 1.0 for n in counts]", 2, solved01)
    honest("numpy", "01", "class_weights_by_hand",
           "import numpy as np\n\ndef class_weights_by_hand(labels):\n"
           "    counts = np.bincount(np.asarray(labels), minlength=4)\n"
           "    return np.where(counts > 0, len(labels) / (4 * np.maximum(counts, 1)), 1.0).tolist()", 2, solved01)
    honest("dataclass_helper", "01", "class_weights_by_hand",
           "from dataclasses import dataclass\n\n@dataclass(frozen=True)\nclass Tally:\n    label: int\n"
           "    n: int\n\n    def weight(self, total):\n        return total / (4 * self.n) if self.n else 1.0\n\n"
           "def class_weights_by_hand(labels):\n"
           "    tallies = [Tally(c, sum(1 for y in labels if y == c)) for c in range(4)]\n"
           "    assert tallies[0] == Tally(0, tallies[0].n)\n"
           "    return [t.weight(len(labels)) for t in tallies]", 2, solved01)
    honest("flip_argmax", "01", "last_token_index",
           "import transformers\n\ndef last_token_index(input_ids: torch.Tensor, pad_token_id: int,\n"
           "                     _tok: 'transformers.PreTrainedTokenizerBase | None' = None) -> torch.Tensor:\n"
           "    real = (input_ids != pad_token_id).int()\n"
           "    return input_ids.shape[1] - 1 - real.flip(1).argmax(1)", 3, solved01)
    honest("type_name_and_modules", "02", "lora_targets",
           "def lora_targets(model):\n    found = set()\n    for m in model.modules():\n"
           "        for name, child in m.named_children():\n"
           "            if type(child).__name__ == 'Linear4bit' and name != 'score':\n"
           "                found.add(name)\n    return sorted(found)", 5, solved02)
    honest("reduce", "03", "count_lora_params",
           "import functools\nimport operator\n\ndef count_lora_params(shapes, r):\n"
           "    return functools.reduce(operator.add, map(lambda s: r * sum(s), shapes), 0)", 6, solved03)
    honest("einsum", "03", "lora_forward",
           "def lora_forward(x, W0, A, B, alpha, r, dropout):\n"
           "    update = torch.einsum('bi,ri,or->bo', dropout(x), A, B)\n"
           "    return torch.addmm(alpha / r * update, x, W0.t())", 7, solved03)
    honest("max_getitem_counter_tqdm", "06", "rule_baseline",
           "from collections import Counter\nfrom tqdm.auto import tqdm\n\nOPENINGS = ('In every case,', "
           "'Without exception,', 'It is always true that', 'Invariably,', 'in every respect', 'invariably')\n\n"
           "def rule_baseline(record):\n    passage = Counter(words(record['context']))\n    score = {}\n"
           "    for i, a in tqdm(list(enumerate(record['answers'])), disable=True):\n"
           "        if not a.startswith(OPENINGS):\n"
           "            score[i] = sum(1 for w in set(words(a)) if passage[w])\n"
           "    return max(score, key=score.__getitem__) if score else 0", 13, solved06)

    honest("nested_helpers", "01", "format_record",
           "def format_record(record):\n    def part(label, text):\n        return f'{label}: {text}'\n"
           "    options = (part(f'Option {l}', a) for l, a in zip('ABCD', record['answers']))\n"
           "    return ' '.join([part('Context', record['context']), part('Question', record['question']), *options])",
           1, solved01)
    honest("dict_get", "01", "class_weights_by_hand",
           "def class_weights_by_hand(labels):\n    counts = {}\n    for y in labels:\n"
           "        counts[y] = counts.get(y, 0) + 1\n"
           "    return [len(labels) / (4 * counts[c]) if c in counts else 1.0 for c in range(4)]", 2, solved01)
    honest("python_loop", "01", "last_token_index",
           "def last_token_index(input_ids, pad_token_id):\n    out = []\n    for row in input_ids.tolist():\n"
           "        k = len(row) - 1\n        while k > 0 and row[k] == pad_token_id:\n            k -= 1\n"
           "        out.append(k)\n    return torch.tensor(out)", 3, solved01)
    honest("callable_object", "03", "count_lora_params",
           "class Counter:\n    def __init__(self):\n        self.calls = 0\n\n    def __call__(self, shapes, r):\n"
           "        self.calls += 1\n        return int(sum(r * (a + b) for a, b in shapes))\n\n"
           "count_lora_params = Counter()", 6, solved03)
    add(Case("honest_wrapper_memory", "03", {8: "✅"}), _wrapped(solved03, "qlora_memory"))
    add(Case("honest_wrapper_lora_forward", "03", {7: "✅"}), _wrapped(solved03, "lora_forward"))
    add(Case("honest_wrapper_rule", "06", {13: "✅"}), _wrapped(solved06, "rule_baseline"))
    honest("if_block", "01", "class_weights_by_hand",
           "if True:  # a guard left around the cell\n    def class_weights_by_hand(labels):\n"
           "        n = len(labels)\n"
           "        return [n / (4 * labels.count(c)) if labels.count(c) else 1.0 for c in range(4)]", 2, solved01)
    weights_from_module = _replace_def(solved01, "class_weights_by_hand",
                                       "from myweights import weights\n\n"
                                       "def class_weights_by_hand(labels):\n    return weights(labels)")
    add(Case("honest_writefile_module", "01", {2: "✅"}),
        _insert_after(weights_from_module, _def_cell(weights_from_module, "class_weights_by_hand") - 1,
                      "%%writefile myweights.py\ndef weights(labels):\n    n = len(labels)\n"
                      "    return [n / (4 * labels.count(c)) if labels.count(c) else 1.0 for c in range(4)]\n"))
    honest("factory", "03", "count_lora_params",
           "def make_counter(bias=0):\n    def count(shapes, r):\n"
           "        return bias + sum(r * (o + i) for o, i in shapes)\n    return count\n\n"
           "count_lora_params = make_counter()", 6, solved03)
    honest("partial", "03", "count_lora_params",
           "from functools import partial\n\ndef _count(shapes, r, per_layer=2):\n"
           "    return sum(r * (o + i) * per_layer // 2 for o, i in shapes)\n\n"
           "count_lora_params = partial(_count, per_layer=2)", 6, solved03)
    honest("checks_star_import", "03", "count_lora_params",
           "from reclor_lab.course.checks import *\n\ndef count_lora_params(shapes, r):\n"
           "    assert len(CHECK_RECORDS) == 3\n    return sum(r * (o + i) for o, i in shapes)", 6, solved03)

    honest("lora_linear_einsum_helper", "03", "LoRALinear",
           "import math\nimport torch\nfrom torch import nn\n\ndef _kaiming(*shape):\n"
           "    t = torch.empty(*shape)\n    nn.init.kaiming_uniform_(t, a=math.sqrt(5))\n    return t\n\n"
           "class LoRALinear(nn.Module):\n    def __init__(self, base, r, alpha, dropout=0.0):\n"
           "        super().__init__()\n        self.base = base\n        for p in self.base.parameters():\n"
           "            p.requires_grad_(False)\n"
           "        self.register_parameter('A', nn.Parameter(_kaiming(r, base.in_features)))\n"
           "        self.register_parameter('B', nn.Parameter(torch.zeros(base.out_features, r)))\n"
           "        self.drop, self.scale = nn.Dropout(p=dropout), alpha / r\n\n"
           "    def forward(self, x):\n"
           "        return self.base(x) + self.scale * torch.einsum('...i,ri,or->...o', self.drop(x), self.A, self.B)",
           14, solved03)
    honest("lora_linear_mixin_functional", "03", "LoRALinear",
           "import torch.nn.functional as F\nfrom torch import nn\n\nclass LowRank(nn.Module):\n"
           "    def __init__(self, n_in, n_out, r):\n        super().__init__()\n"
           "        self.A = nn.Linear(n_in, r, bias=False)\n        self.B = nn.Linear(r, n_out, bias=False)\n"
           "        nn.init.zeros_(self.B.weight)\n\n    def forward(self, h):\n        return self.B(self.A(h))\n\n"
           "class LoRALinear(LowRank):\n    def __init__(self, base, r, alpha, dropout=0.0):\n"
           "        super().__init__(base.in_features, base.out_features, r)\n"
           "        self.base = base.requires_grad_(False)\n        self.p, self.s = dropout, alpha / r\n\n"
           "    def forward(self, x):\n"
           "        update = super().forward(F.dropout(x, self.p, self.training))\n"
           "        return update * self.s + self.base(x)", 14, solved03)
    honest("epoch_while_and_step", "04", "train_epoch",
           "def train_epoch(model, batches, optimizer, weights, lr_at, step=0, max_grad_norm=0.3):\n"
           "    model.train(True)\n    todo, losses = iter(batches), []\n"
           "    while (batch := next(todo, None)) is not None:\n"
           "        optimizer.param_groups[0]['lr'] = lr_at(step + len(losses))\n"
           "        losses.append(one_train_step(model, batch, optimizer, weights, max_grad_norm))\n"
           "    return losses, step + len(losses)", 16, solved04)
    honest("epoch_closure_and_filter", "04", "train_epoch",
           "import torch.nn.functional as F\n\ndef train_epoch(model, batches, optimizer, weights, lr_at, step=0,\n"
           "                max_grad_norm=0.3):\n    model.train()\n    count = step\n\n"
           "    def one(batch):\n        nonlocal count\n        optimizer.zero_grad(set_to_none=False)\n"
           "        out = model(**{k: batch[k] for k in ('input_ids', 'attention_mask')})\n"
           "        loss = F.cross_entropy(out.logits.float(), batch['labels'], weight=weights)\n"
           "        loss.backward()\n        for g in optimizer.param_groups:\n            g.update(lr=lr_at(count))\n"
           "        torch.nn.utils.clip_grad_norm_(filter(lambda p: p.requires_grad, model.parameters()),\n"
           "                                       max_grad_norm)\n"
           "        optimizer.step()\n        count += 1\n        return float(loss.detach())\n\n"
           "    losses = [one(b) for b in batches]\n    return losses, count", 16, solved04)

    honest("qlora_model_scans_for_4bit_layers_and_prepares", "03", "qlora_model",
           'import bitsandbytes as bnb\n'
           'from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training\n'
           'from transformers import AutoModelForSequenceClassification, BitsAndBytesConfig\n'
           '\n'
           'def _four_bit(dtype):\n'
           "    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type='nf4',\n"
           '                              bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)\n'
           '\n'
           'def _leaf_names(model, kind):\n'
           "    return sorted({n.split('.')[-1] for n, m in model.named_modules() if isinstance(m, kind)})\n"
           '\n'
           'def qlora_model(model_path, compute_dtype):\n'
           '    model = AutoModelForSequenceClassification.from_pretrained(\n'
           '        model_path, quantization_config=_four_bit(compute_dtype), num_labels=4)\n'
           '    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)\n'
           '    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=16, lora_alpha=16, lora_dropout=0.05,\n'
           '                        target_modules=_leaf_names(model, bnb.nn.Linear4bit))\n'
           '    peft_model = get_peft_model(model, config)\n'
           '    peft_model.config.pad_token_id = peft_model.config.eos_token_id\n'
           '    return peft_model', 15, solved03)
    honest("qlora_model_regex_targets_and_modules_to_save", "03", "qlora_model",
           'import peft\n'
           'import transformers\n'
           '\n'
           "SETTINGS = {'r': 16, 'lora_alpha': 16, 'lora_dropout': 0.05}\n"
           '\n'
           'def qlora_model(model_path, compute_dtype):\n'
           '    tok = transformers.AutoTokenizer.from_pretrained(model_path)\n'
           '    q = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_use_double_quant=True,\n'
           "                                        bnb_4bit_quant_type='nf4', bnb_4bit_compute_dtype=compute_dtype)\n"
           '    cls = transformers.AutoModelForSequenceClassification\n'
           '    m = cls.from_pretrained(model_path, num_labels=4, quantization_config=q,\n'
           '                            pad_token_id=tok.eos_token_id)\n'
           "    lora = peft.LoraConfig(target_modules=r'.*\\.(q|k|v|o|gate|up|down)_proj', modules_to_save=['score'],\n"
           '                           **SETTINGS)\n'
           '    return peft.get_peft_model(m, lora)', 15, solved03)

    # --- reading the answer off the package: the giveaway is not available while its exercise runs
    gamed("calls_reference", "01", "format_record",
          "def format_record(record):\n    return checks.reference_format_record(record)", 1, solved01, BLOCKED)
    gamed("imports_package_function", "01", "class_weights_by_hand",
          "from reclor_lab.data import class_weights as cw\n\n"
          "def class_weights_by_hand(labels):\n    return cw(labels).tolist()", 2, solved01, BLOCKED)
    add(Case("imports_own_name", "01", {3: X}, "imports `last_token_index`"),
        _replace_def(solved01, "last_token_index", "from reclor_lab.model import last_token_index"))
    gamed("dunder_import", "01", "class_weights_by_hand",
          "def class_weights_by_hand(labels):\n"
          "    return __import__('reclor_lab.data').data.class_weights(labels).tolist()", 2, solved01, BLOCKED)
    gamed("importlib_and_getattr", "01", "class_weights_by_hand",
          "import importlib\n\ndef class_weights_by_hand(labels):\n"
          "    m = importlib.import_module('reclor_lab.' + 'data')\n"
          "    return getattr(m, 'class_' + 'weights')(labels).tolist()", 2, solved01, BLOCKED)
    gamed("sys_modules", "01", "class_weights_by_hand",
          "import sys\n\ndef class_weights_by_hand(labels):\n"
          "    return sys.modules['reclor_lab.data'].class_weights(labels).tolist()", 2, solved01, BLOCKED)
    gamed("exec_string", "01", "format_record",
          "SRC = 'from reclor_lab.data import format_example as f'\n\n"
          "def format_record(record):\n    ns = {}\n    exec(SRC, ns)\n    return ns['f'](record)", 1, solved01,
          BLOCKED)
    gamed("template_constant", "01", "format_record",
          "from reclor_lab.config import REFERENCE_TEMPLATE\n\ndef format_record(record):\n"
          "    a, b, c, d = record['answers']\n"
          "    return REFERENCE_TEMPLATE.format(**record, a=a, b=b, c=c, d=d, A=a, B=b, C=c, D=d)", 1, solved01,
          BLOCKED)
    gamed("reference_as_default_argument", "01", "format_record",
          "def format_record(record, _f=checks.reference_format_record):\n    return _f(record)", 1, solved01, BLOCKED)
    gamed("reference_through_decorator", "01", "class_weights_by_hand",
          "def use(ref):\n    return lambda fn: (lambda labels: ref(labels))\n\n"
          "@use(checks.reference_class_weights)\ndef class_weights_by_hand(labels):\n    raise NotImplementedError",
          2, solved01, BLOCKED)
    gamed("reference_through_fallback", "01", "format_record",
          "def format_record(record):\n    stand_in = checks.check_format_record(lambda r: 'nope')\n"
          "    return stand_in(record)", 1, solved01, BLOCKED)
    gamed("reload_the_module", "01", "class_weights_by_hand",
          "import importlib\nimport reclor_lab.data\n\ndef class_weights_by_hand(labels):\n"
          "    fresh = importlib.reload(reclor_lab.data)\n    return fresh.class_weights(labels).tolist()", 2, solved01,
          BLOCKED)
    gamed("exec_the_source", "01", "class_weights_by_hand",
          "import reclor_lab\n\ndef class_weights_by_hand(labels):\n    ns = {}\n"
          "    path = reclor_lab.__path__[0] + '/data.py'\n    exec(open(path).read(), ns)\n"
          "    return ns['class_weights'](labels).tolist()", 2, solved01, BLOCKED)
    gamed("fresh_interpreter", "01", "class_weights_by_hand",
          "import subprocess, sys, json\n\ndef class_weights_by_hand(labels):\n"
          "    code = 'import sys, json; from reclor_lab.data import class_weights; '\\\n"
          "           'print(json.dumps(class_weights(json.loads(sys.argv[1])).tolist()))'\n"
          "    out = subprocess.run([sys.executable, '-c', code, json.dumps(list(labels))], capture_output=True)\n"
          "    return json.loads(out.stdout)", 2, solved01, BLOCKED)
    gamed("planner_count", "03", "count_lora_params",
          "from reclor_lab.shapes import lora_param_count\n\ndef count_lora_params(shapes, r):\n"
          "    return lora_param_count(shapes, r)", 6, solved03, BLOCKED)
    gamed("target_shapes", "02", "lora_targets",
          "from reclor_lab.lora import target_shapes\n\ndef lora_targets(model):\n"
          "    return sorted(target_shapes(model))", 5, solved02, BLOCKED)
    gamed("bitsandbytes_quantizer", "02", "nf4_block",
          "import bitsandbytes.functional as F\n\ndef nf4_block(block):\n"
          "    packed, state = F.quantize_4bit(block.float(), blocksize=64, quant_type='nf4',\n"
          "                                    compress_statistics=False)\n"
          "    p = packed.flatten()\n    codes = torch.stack([p >> 4, p & 15], 1).flatten().long()\n"
          "    values = F.dequantize_4bit(packed, state, quant_type='nf4').flatten()\n"
          "    return codes, state.absmax.flatten()[0], values", 4, solved02, BLOCKED)

    gamed("subclasses_the_kits_lora_linear", "03", "LoRALinear",
          "from reclor_lab.lora import LoRALinear as KitLoRALinear\n\n"
          "class LoRALinear(KitLoRALinear):\n    pass", 14, solved03, BLOCKED)
    gamed("wraps_peft_s_layer", "03", "LoRALinear",
          "from peft import LoraConfig\nfrom peft.tuners.lora import Linear as PeftLinear\nfrom torch import nn\n\n"
          "class LoRALinear(nn.Module):\n    def __init__(self, base, r, alpha, dropout=0.0):\n"
          "        super().__init__()\n        config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout)\n"
          "        self.inner = PeftLinear(base, 'default', config=config, r=r, lora_alpha=alpha,\n"
          "                                lora_dropout=dropout)\n"
          "        self.A = self.inner.lora_A['default'].weight\n"
          "        self.B = self.inner.lora_B['default'].weight\n\n"
          "    def forward(self, x):\n        return self.inner(x)", 14, solved03, BLOCKED)
    gamed("instantiates_the_checks_reference", "03", "LoRALinear",
          "from reclor_lab.course.checks import nb03\n\ndef LoRALinear(base, r, alpha, dropout=0.0):\n"
          "    return nb03.ReferenceLoRALinear(base, r, alpha, dropout)", 14, solved03, BLOCKED)
    gamed("epoch_from_the_package_step", "04", "train_epoch",
          "from reclor_lab.train import optimizer_step, train_step\n\n"
          "def train_epoch(model, batches, optimizer, weights, lr_at, step=0, max_grad_norm=0.3):\n"
          "    model.train()\n    losses = []\n    for batch in batches:\n"
          "        losses.append(train_step(model, batch, weights, torch.float32).item())\n"
          "        optimizer_step(model, optimizer, lr_at(step), max_grad_norm)\n        step += 1\n"
          "    return losses, step", 16, solved04, BLOCKED)
    gamed("epoch_from_the_reference", "04", "train_epoch",
          "def train_epoch(model, batches, optimizer, weights, lr_at, step=0, max_grad_norm=0.3):\n"
          "    return checks.reference_train_epoch(model, batches, optimizer, weights, lr_at, step, max_grad_norm)",
          16, solved04, BLOCKED)
    gamed("epoch_that_only_looks", "04", "train_epoch",
          "def train_epoch(model, batches, optimizer, weights, lr_at, step=0, max_grad_norm=0.3):\n"
          "    model.train()\n"
          "    losses = [weighted_ce(model(input_ids=b['input_ids'], attention_mask=b['attention_mask']).logits,\n"
          "                          b['labels'], weights).item() for b in batches]\n"
          "    return losses, step + len(batches)", 16, solved04, "step() never ran")

    gamed("calls_the_kits_load_and_inject", "03", "qlora_model",
          "from reclor_lab.config import get_preset\nfrom reclor_lab.lora import inject_lora\n"
          "from reclor_lab.model import load_model, load_tokenizer\n\n"
          "def qlora_model(model_path, compute_dtype):\n"
          "    cfg = get_preset('tiny', model_name_or_path=model_path, compute_dtype=str(compute_dtype)[6:])\n"
          "    return inject_lora(load_model(cfg, load_tokenizer(model_path)), cfg)", 15, solved03, BLOCKED)
    gamed("builds_the_graders_own_model", "03", "qlora_model",
          "from reclor_lab.course import runner\n\ndef qlora_model(model_path, compute_dtype):\n"
          "    return runner.with_lora(runner.tiny_model())", 15, solved03, BLOCKED)
    gamed("calls_the_checks_reference_model", "03", "qlora_model",
          "from reclor_lab.course.checks import nb03\n\ndef qlora_model(model_path, compute_dtype):\n"
          "    return nb03.reference_qlora_model(model_path, compute_dtype)", 15, solved03, BLOCKED)

    # --- answers that fool a comparison made in the same process (there is none: it is outside)
    gamed("always_equal_str", "01", "format_record",
          "class Anything(str):\n    def __eq__(self, other):\n        return True\n\n"
          "    def __ne__(self, other):\n        return False\n\n"
          "def format_record(record):\n    return Anything('x')", 1, solved01)
    gamed("eq_by_assignment", "01", "format_record",
          "class Anything(str):\n    __eq__ = lambda self, other: True\n    __ne__ = lambda self, other: False\n"
          "    __hash__ = str.__hash__\n\ndef format_record(record):\n    return Anything('x')", 1, solved01)
    gamed("int_eq_by_assignment", "03", "count_lora_params",
          "class Many(int):\n    __eq__ = lambda self, other: True\n    __ne__ = lambda self, other: False\n\n"
          "def count_lora_params(shapes, r):\n    return Many(7)", 6, solved03)
    gamed("torch_function_mode_left_on", "03", "lora_forward",
          "from torch.overrides import TorchFunctionMode\n\nclass Agree(TorchFunctionMode):\n"
          "    def __torch_function__(self, func, types, args=(), kwargs=None):\n"
          "        if func in (torch.allclose, torch.equal):\n            return True\n"
          "        return func(*args, **(kwargs or {}))\n\n"
          "def lora_forward(x, W0, A, B, alpha, r, dropout):\n    Agree().__enter__()\n"
          "    return x @ W0.T", 7, solved03)
    gamed("library_override_of_equal", "02", "nf4_block",
          "LIB = torch.library.Library('aten', 'IMPL')\n"
          "LIB.impl('equal', lambda a, b: True, 'CPU')\n\ndef nf4_block(block):\n"
          "    return torch.zeros(64, dtype=torch.long), block.abs().max(), torch.zeros(64)", 4, solved02)
    gamed("pickle_payload", "01", "format_record",
          "import pickle, os\n\nclass Payload:\n    def __reduce__(self):\n"
          "        return (os.system, ('echo owned > /tmp/owned',))\n\n"
          "def format_record(record):\n    return pickle.loads(pickle.dumps(Payload())) or Payload()", 1, solved01)
    gamed("torch_save_payload", "03", "count_lora_params",
          "import io\n\nclass Payload:\n    def __reduce__(self):\n        return (print, ('owned',))\n\n"
          "def count_lora_params(shapes, r):\n    buf = io.BytesIO()\n    torch.save(Payload(), buf)\n"
          "    return buf.getvalue()", 6, solved03)

    # --- answers that fit only the check's cases, and hunting for the grading seed
    add(Case("cached_format_answers", "01", {1: X}, "drawn when grading"),
        _replace_def(solved01, "format_record",
                     f"ANSWERS = {_format_cache()!r}\n\n"
                     "def format_record(record):\n    return ANSWERS[record['id_string']]"))
    add(Case("cached_count_answers", "03", {6: X}, "drawn when grading"),
        _replace_def(solved03, "count_lora_params",
                     f"ANSWERS = {_count_cache()!r}\n\n"
                     "def count_lora_params(shapes, r):\n    return ANSWERS[repr((list(shapes), r))]"))
    gamed("hunts_the_seed", "03", "count_lora_params",
          "import os, sys, gc\n\ndef count_lora_params(shapes, r):\n"
          "    seen = ' '.join([str(os.environ), open('/proc/self/cmdline').read(), str(sys.argv)]\n"
          "                    + [str(getattr(o, 'seed', '')) for o in gc.get_objects()[:5000]])\n"
          "    for root, _, files in os.walk('/grading'):\n"
          "        seen += ' '.join(files)\n"
          f"    return {_count_cache()!r}.get(repr((list(shapes), r)), len(seen))", 6, solved03)
    gamed("reads_the_grading_package", "03", "count_lora_params",
          "import glob\n\ndef count_lora_params(shapes, r):\n"
          "    from reclor_lab.course.grading import exercises\n"
          "    return exercises.SPECS['count_lora_params'].reference(shapes, r)", 6, solved03)
    gamed("forges_a_frame", "01", "format_record",
          "import os, json, struct\n\ndef format_record(record):\n"
          "    head = json.dumps({'number': 1, 'status': '✅', 'answers': '[]'}).encode()\n"
          "    for fd in range(3, 64):\n        try:\n"
          "            os.write(fd, struct.pack('>I', len(head)) + head + struct.pack('>Q', 0))\n"
          "        except OSError:\n            pass\n    return 'x'", 1, solved01)
    gamed("patches_the_runner", "01", "format_record",
          "def format_record(record):\n    import sys\n    runner = sys.modules['__main__']\n"
          "    runner.encode = lambda value, objects=None: (b'', '[[{\"value\": \"x\"}]]')\n    return 'x'", 1,
          solved01)
    gamed("reads_the_parent", "01", "format_record",
          "import os\n\ndef format_record(record):\n    try:\n"
          "        return open(f'/proc/{os.getppid()}/environ').read()[:10]\n    except OSError:\n"
          "        return 'x'", 1, solved01)
    gamed("kills_the_runner", "01", "format_record",
          "import os, signal\n\ndef format_record(record):\n    os.kill(os.getppid(), signal.SIGKILL)\n"
          "    return 'x'", 1, solved01)

    # --- the stand-in and the checks themselves (none of it is the exercise's code: stubs stay ⏳)
    add(Case("recheck_reference", "01", {1: X}),
        _insert_after(stub01, k, "format_record = checks.check_format_record(format_record.reference)"))
    add(Case("patch_judge", "01", ALL01),
        _insert_after(stub01, 0, "from reclor_lab.course import checks as c\n"
                                 "c._judge = lambda n, fn, test: ('✅', 'fine')"))
    add(Case("write_checked", "01", ALL01),
        _insert_after(stub01, k, "checks._CHECKED[1] = (lambda fn: None, format_record)"))
    add(Case("patch_when_called", "01", {1: X}),
        _replace_def(stub01, "format_record",
                     "def format_record(record):\n    import reclor_lab.course.checks as c\n"
                     "    c.reference_format_record = lambda r: 'x'\n    return 'x'"))
    deleted = [c for c in stub01 if not re.search(r"= checks\.check_|checks\.summary\(\)", c)]
    add(Case("deleted_checks_prints_verdicts", "01", ALL01),
        deleted + ["print('✅ Exercise 1 (format a record): correct.')\n"
                   "print('✅ Exercise 2 (class weights): correct.')\n"
                   "print('✅ Exercise 3 (the position the head reads): correct.')"])
    add(Case("mutates_the_batch", "04", {9: "✅", 10: "❌"}, "changed the caller's batch"),
        _replace_def(solved04, "one_train_step",
                     "def one_train_step(model, batch, optimizer, weights, max_grad_norm=0.3):\n"
                     "    labels = batch.pop('labels')\n"
                     "    loss = weighted_ce(model(**batch).logits, labels, weights)\n"
                     "    loss.backward()\n"
                     "    torch.nn.utils.clip_grad_norm_(\n"
                     "        [p for p in model.parameters() if p.requires_grad], max_grad_norm)\n"
                     "    optimizer.step()\n    optimizer.zero_grad()\n    return loss.item()"))
    honest("fraction_starmap", "05", "accuracy_over_examples",
           "from fractions import Fraction\nfrom itertools import chain, starmap\nfrom operator import eq\n\n"
           "def accuracy_over_examples(batches):\n"
           "    pairs = list(chain.from_iterable(zip(p, y) for p, y in batches))\n"
           "    return float(Fraction(sum(starmap(eq, pairs)), len(pairs)))", 11, solved05)
    gamed("honest_generator_inside", "05", "accuracy_over_examples",
          "import random\nfrom reclor_lab.tools import honest\n\n"
          "def accuracy_over_examples(batches):\n    ns = {}\n"
          "    exec(honest.solution('accuracy_over_examples', random.Random(1)), ns)\n"
          "    return ns['accuracy_over_examples'](batches)", 11, solved05)
    add(Case("unweighted_step", "04", {9: "✅", 10: "❌"}, "unweighted cross-entropy"),
        _replace_def(solved04, "one_train_step",
                     "def one_train_step(model, batch, optimizer, weights, max_grad_norm=0.3):\n"
                     "    inputs = {k: v for k, v in batch.items() if k != 'labels'}\n"
                     "    loss = torch.nn.functional.cross_entropy(model(**inputs).logits, batch['labels'])\n"
                     "    loss.backward()\n"
                     "    torch.nn.utils.clip_grad_norm_(\n"
                     "        [p for p in model.parameters() if p.requires_grad], max_grad_norm)\n"
                     "    optimizer.step()\n    optimizer.zero_grad()\n    return loss.item()"))
    for case, cells in cases:
        _write(cells, folder / case.student / f"{NB[case.notebook]}.ipynb")
    return [case for case, _ in cases]


if __name__ == "__main__":
    for case in write_class(Path(sys.argv[1])):
        print(case.student, case.expect)
