"""Every figure a notebook's Markdown states is one its cells print, or a fixed constant named here.

A sentence in a notebook is a claim to a student. A figure about the run (an accuracy, a token
count, a ratio) changes when the data, the model or the code change; a Markdown sentence does not.
So a Markdown figure must be printed by a cell that nbval compares (not ``NBVAL_IGNORE_OUTPUT``:
those outputs differ between machines while the Markdown stays), rounded as the sentence rounds
it; or it must be a fixed constant, listed in :data:`FIXED` with the reason it cannot change
(Llama-2-7B's shape, a figure quoted from a paper or from the README's GPU benchmark, a setting
of the reference). A figure that depends on the run belongs in a printed line instead, as
notebook 05 prints whether its validation loss rose.

What counts as a figure: a number with a decimal point, a percentage, a ratio (``1.2×``) or a
whole number from 10 up, outside code spans, math and fenced code, and not naming a place
("notebook 04", "exercise 10", "epoch 3", "section 2"). Single digits are counts of things and
list numbers ("the four options"), not measurements.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("0*.ipynb"))

# A number: thousands with commas or plain digits, an optional fraction, then % or ×.
NUMBER = re.compile(r"(?<![\w.\-/+])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?:(\s?%)|(×))?(?![\w])")
# Words that make the number after them a name, not a measurement.
NAMING = re.compile(r"(?i)\b(notebooks?|exercises?|sections?|items?|epochs?|steps?|cells?|python|"
                    r"transformers|bitsandbytes|version|records?\s+(?:id|index)|val_|top)\s*$")
OUTPUT_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")

# Fixed constants, per notebook: figure as written -> why it cannot change with a run.
FIXED: dict[str, dict[str, str]] = {
    "01": {
        "32,000": "Llama-2's vocabulary size, a property of the tokenizer (the cell prints it as 32,000 too)",
        "1.3": "a general rule of thumb for English prose, stated as such; the cell prints this data's own ratio",
        "40": "the demo's own setting: max_len 40 tokens short of the longest record (a code constant)",
        "1.0": "the definition in exercise 2: an absent option gets weight 1.0",
    },
    "02": {
        "6.7": "Llama-2-7B's size in billions of weights (a fixed model)",
        "27": "6.7 billion fp32 weights in GB (a fixed model)",
        "13.5": "6.7 billion bf16 weights in GB (a fixed model)",
        "0.37": "bits saved by double quantization: 0.5 - 0.127, arithmetic of the format (also printed)",
        "0.3": "GB saved on Llama-2-7B by double quantization (a fixed model; printed as 0.30 GB)",
        "16": "NF4 has 16 code values (the format)",
        "64": "NF4's block size (the format; bitsandbytes' default the kit uses)",
        "15": "uniform int4's levels -7..7 (the format)",
        "0.005": "one of FP4's code values (the format)",
        "1.6 %": "1/64: the share of one weight per block of 64 (arithmetic)",
        "32": "bits of an fp32 absmax (the format)",
        "0.5": "32 / 64 bits per weight for plain NF4's absmax (arithmetic of the format)",
        "256": "the second-level block size of double quantization (the format)",
        "0.127": "bits per weight of double quantization's scales (arithmetic of the format)",
        "6.5": "Llama-2-7B's quantized weights in billions (a fixed model; printed in full)",
        "131": "Llama-2-7B's lm_head in millions of weights: 32,000 x 4,096 (a fixed model)",
        "4.127": "bits per weight with double quantization (the format; printed as 4.127)",
    },
    "03": {
        "32": "Llama-2-7B's layers (a fixed model)",
        "4096": "Llama-2-7B's hidden size (a fixed model)",
        "11008": "Llama-2-7B's MLP size (a fixed model)",
        "6,607,360,000": "Llama-2-7B's parameters as a classifier (a fixed model; the package's constant)",
        "607": "tokens/s with gradient checkpointing in the README's H200 benchmark (not this run)",
        "733": "tokens/s without it, same benchmark (not this run)",
        "1.2×": "733 / 607 from that benchmark",
        "16": "the reference's r and alpha (its recipe)",
        "1 %": "an answer choice of the predict question",
        "10 %": "an answer choice of the predict question",
        "512": "the demo layer's width, a code constant of the cell",
        "0.01": "the demo's learning rate, a code constant of the cell",
        "0.05": "the reference's LoRA dropout (its recipe)",
        "0.95": "1 - 0.05, dropout's rescaling (arithmetic)",
        "64": "the tiny model's hidden size (printed in the shapes)",
        "2,048": "16 · (64 + 64): the tiny model's LoRA numbers per layer (arithmetic; printed per layer)",
        "4,096": "64 · 64 weights of a tiny projection (arithmetic)",
        "0.4 %": "16 / 4096: Llama-2-7B's rank share (a fixed model; printed as rank 16 of 4096)",
        "0.8 %": "LoRA/full weights of Llama-2-7B's q_proj (a fixed model; the cell prints 0.8%)",
        "2022": "the year of the cited paper (Korthikanti et al.)",
        "494": "the padded length that set every peak in the README's H200 benchmark (not this run)",
        "4.66": "measured peak GiB at batch 1 with checkpointing, H200 benchmark (not this run)",
        "3.36": "the benchmark's 4-bit model in GiB (not this run)",
        "3.6": "the same once embeddings are fp32, benchmark (not this run)",
        "86": "MiB of the largest dequantized bf16 weight of Llama-2-7B (a fixed model)",
        "15 %": "tests/test_plan.py's tolerance for the planner (a test constant)",
        "44.5": "measured peak GiB at batch 8 without checkpointing, H200 benchmark (not this run)",
        "7.7": "the same with checkpointing, H200 benchmark (not this run)",
    },
    "04": {
        "0.5": "the weight in the cell's own toy batch (a code constant)",
        "1,000": "the toy classifier's example count (a code constant)",
        "70 %": "the toy split's share of answer A (a code constant)",
        "0.3": "QLoRA's max_grad_norm (the reference recipe's setting)",
        "3.4×": "the README's H200 benchmark of the kit against the reference's habits (not this run)",
        "25 %": "chance for four options",
        "160": "MB of Llama-2-7B's fp32 adapter and head: 40 M x 4 bytes (a fixed model)",
        "40": "millions of trainable parameters of Llama-2-7B at r=16 (a fixed model; notebook 03 prints it)",
        "500": "the reference's logging_steps (its settings; printed with the defaults)",
        "4,638": "ReClor's official training records (the data set; printed too)",
        "2,300": "4,638 / 2 steps per epoch rounded (printed as 2,319)",
        "96": "the Trainer demo's training examples (a code constant)",
        "64": "the Trainer demo's validation examples (a code constant)",
        "60 %": "the reference's reported accuracy (quoted from the reference)",
    },
    "05": {
        "95 %": "the confidence level of every interval",
        "25 %": "chance for four options",
        "60 %": "the reference's reported accuracy (quoted from the reference)",
        "30 %": "an example of the bug's doubling, half of the quoted 60 %",
        "500": "ReClor's official validation records (the data set)",
        "55.6": "Wilson interval of 300 of 500 (printed by the cell as 0.556)",
        "64.2 %": "Wilson interval of 300 of 500 (printed by the cell as 0.642)",
        "256": "the bundled validation split's size (a shipped file, data/README; the tables print n = 256)",
        "16": "the width of a 16-bit dtype (fp16, bf16)",
    },
    "06": {
        "25 %": "chance for four options",
        "60 %": "the reference's reported accuracy (quoted from the reference)",
        "95 %": "the confidence level of every interval",
        "500": "ReClor's official validation records (the data set)",
        "2.2": "one standard error at 60 % on 500 examples (arithmetic on the quoted figures)",
        "300": "the check's fresh records (a constant of checks.check_rule_baseline)",
        "85 %": "the check's bar overall (a constant of checks.check_rule_baseline)",
        "50 %": "the check's bar on HARD (a constant of checks.check_rule_baseline)",
        "512": "the tiny model's context window (its config; printed too)",
        "56.0 %": "XLNet-large on ReClor's test set (Yu et al. 2020)",
        "75.7 %": "XLNet-large on test EASY (Yu et al. 2020)",
        "40.5 %": "XLNet-large on test HARD (Yu et al. 2020)",
        "62.0 %": "XLNet-large on val (Yu et al. 2020)",
        "55.6": "RoBERTa-large on test (Yu et al. 2020), and the Wilson interval of 60 % of 500",
        "75.5": "RoBERTa-large on test EASY (Yu et al. 2020)",
        "40.0": "RoBERTa-large on test HARD (Yu et al. 2020)",
        "62.6 %": "RoBERTa-large on val (Yu et al. 2020)",
        "64.2 %": "the Wilson interval of 60 % of 500 (arithmetic on the quoted figures)",
        "67 %": "a val accuracy whose interval clears both published val figures (arithmetic)",
        "17": "ReClor's question types (the data set)",
        "440": "the official test file's EASY records (the data set)",
        "560": "the official test file's HARD records (the data set)",
        "10": "the cell lists the 10 most confident wrong answers (a code constant)",
        "256": "the bundled validation split's size (a shipped file, data/README; the tables print n = 256)",
        "80 %": "the calibration question's example confidence (a figure of speech, not a result)",
    },
}


@dataclass(frozen=True)
class Figure:
    text: str       # as written: "0.805", "60 %", "1.2×"
    value: float    # the number, a percentage as its fraction
    unit: float     # one unit of its last written digit, in the same scale as value
    sentence: str   # where it stands


def _visible_markdown(source: str) -> str:
    """Markdown prose without fenced code, math and code spans (formulas and code are not claims)."""
    source = re.sub(r"```.*?```", " ", source, flags=re.S)
    source = re.sub(r"\$\$.*?\$\$", " ", source, flags=re.S)
    source = re.sub(r"\$[^$\n]*\$", " ", source)
    return re.sub(r"`[^`\n]*`", " ", source)


def markdown_figures(source: str) -> list[Figure]:
    """The figures a Markdown cell states (see the module's docstring for what counts)."""
    text = _visible_markdown(source)
    found = []
    for m in NUMBER.finditer(text):
        whole, frac, percent, times = m.groups()
        if NAMING.search(text[max(0, m.start() - 25):m.start()]):
            continue
        if not (frac or percent or times) and int(whole.replace(",", "")) < 10:
            continue
        digits = len(frac) - 1 if frac else 0
        value, unit = float(whole.replace(",", "") + (frac or "")), 10.0 ** -digits
        if percent:
            value, unit = value / 100, unit / 100
        start = max(text.rfind(". ", 0, m.start()), text.rfind("\n", 0, m.start())) + 1
        end = min([i for i in (text.find(". ", m.end()), text.find("\n", m.end())) if i >= 0] or [len(text)])
        found.append(Figure(m.group(0).strip(), value, unit, " ".join(text[start:end].split())))
    return found


#: How far a sentence's figures are looked for: the compared code cells nearest to its Markdown cell,
#: this many before it and after it (a sentence reads the cell above it or announces the one below).
NEAR = 1


def cell_outputs(cell: dict) -> str:
    """The text a code cell printed (stdout, and its plain-text or Markdown display data)."""
    texts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream" and out.get("name") == "stdout":
            texts.append("".join(out["text"]))
        for kind in ("text/markdown", "text/plain"):
            if kind in out.get("data", {}):
                texts.append("".join(out["data"][kind]))
    return "\n".join(texts)


def compared(cell: dict) -> bool:
    """A code cell whose outputs nbval compares (not NBVAL_IGNORE_OUTPUT)."""
    return cell["cell_type"] == "code" and "NBVAL_IGNORE_OUTPUT" not in "".join(cell["source"])


def printed(figure: Figure, numbers: list[float]) -> bool:
    """The figure is one of the printed numbers as the sentence rounds it (a percentage may be
    printed as a fraction or as a percentage)."""
    candidates = numbers + [n / 100 for n in numbers]
    return any(abs(n - figure.value) <= figure.unit / 2 + 1e-12 for n in candidates)


def unsupported(nb: dict, fixed: dict[str, str]) -> list[str]:
    """Each Markdown figure that the nearest compared cells do not print and that is not a fixed
    constant."""
    cells = nb["cells"]
    problems = []
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "markdown":
            continue
        before = [c for c in cells[:i] if c["cell_type"] == "code"][-NEAR:]
        after = [c for c in cells[i + 1:] if c["cell_type"] == "code"][:NEAR]
        text = "\n".join(cell_outputs(c) for c in before + after if compared(c))
        numbers = [float(x.replace(",", "")) for x in OUTPUT_NUMBER.findall(text)]
        for figure in markdown_figures("".join(cell["source"])):
            if figure.text not in fixed and not printed(figure, numbers):
                problems.append(f"cell {i}: {figure.text!r} in: {figure.sentence}")
    return problems


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_markdown_figure_is_printed_or_fixed(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    problems = unsupported(nb, FIXED.get(path.name[:2], {}))
    assert not problems, (
        f"{path.name}: figures in Markdown that no compared cell prints (print them from the run, or "
        f"add a fixed constant to FIXED with its reason):\n  " + "\n  ".join(problems))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_fixed_constant_is_still_stated(path):
    """FIXED cannot grow stale: each entry is a figure the notebook's Markdown states today."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    stated = {f.text for c in nb["cells"] if c["cell_type"] == "markdown"
              for f in markdown_figures("".join(c["source"]))}
    stale = sorted(set(FIXED.get(path.name[:2], {})) - stated)
    assert not stale, f"{path.name}: FIXED lists figures its Markdown no longer states: {stale}"


def _notebook(markdown: str, output: str, ignored: bool = False) -> dict:
    code = ("# NBVAL_IGNORE_OUTPUT\n" if ignored else "") + "print(acc)"
    return {"cells": [
        {"cell_type": "code", "source": [code],
         "outputs": [{"output_type": "stream", "name": "stdout", "text": [output]}]},
        {"cell_type": "markdown", "source": [markdown]},
    ]}


def test_a_planted_wrong_figure_fails():
    nb = _notebook("The random head starts at 0.512, below chance.", "accuracy 0.328 [0.274, 0.388]\n")
    assert unsupported(nb, {}) == ["cell 1: '0.512' in: The random head starts at 0.512, below chance."]
    # the printed figure itself, or rounded as printed, passes; a rounding that misses does not
    assert unsupported(_notebook("It starts at 0.328.", "accuracy 0.328 [0.274, 0.388]\n"), {}) == []
    assert unsupported(_notebook("It starts at 33 %.", "accuracy 0.328\n"), {}) == []
    assert unsupported(_notebook("It starts at 32.8 %.", "accuracy 0.328\n"), {}) == []
    assert len(unsupported(_notebook("It starts at 34 %.", "accuracy 0.328\n"), {})) == 1
    assert len(unsupported(_notebook("The layout costs about 20 tokens.", "16 tokens, or 18 with the cue\n"), {})) == 1


def test_a_figure_printed_only_by_an_ignored_cell_fails():
    """An NBVAL_IGNORE_OUTPUT cell's figures change from machine to machine: a static sentence
    cannot cite them."""
    assert len(unsupported(_notebook("It reached 0.832.", "accuracy 0.832\n", ignored=True), {})) == 1
    assert unsupported(_notebook("It reached 0.832.", "accuracy 0.832\n"), {}) == []


def test_fixed_constants_and_names_are_not_checked():
    nb = _notebook("Llama-2-7B has 6,607,360,000 parameters as a classifier.", "nothing\n")
    assert len(unsupported(nb, {})) == 1
    assert unsupported(nb, {"6,607,360,000": "a fixed model"}) == []
    names = "Notebook 04 trains for 3 epochs; exercise 10 writes the step; epoch 12 and section 11 are names."
    assert unsupported(_notebook(names, "nothing\n"), {}) == []
    code_and_math = "The `max_len = 320` setting and $w_c = N / (4 n_c) + 0.5$ are not claims."
    assert unsupported(_notebook(code_and_math, "nothing\n"), {}) == []
