"""What the model could do without fine-tuning, and what guessing scores: the baselines.

* **LM scoring (zero-shot / k-shot).** The same 4-bit model loaded as a causal LM reads the record
  in the run's layout followed by the answer cue (" Answer:"), and its next-token logits for the
  four letter tokens are the scores of the four options. The letter tokens are found through the
  tokenizer (:func:`reclor_lab.results.letters.letter_token_ids`): whether "A" after "Answer:" is " A",
  "▁A" or "A" depends on the tokenizer. With ``shots = k`` the prompt starts with k labelled training records
  (chosen deterministically, :func:`choose_shots`), each ending in its answer letter.
  Truncation never cuts the question being asked (:func:`build_prompt`): shots go first, then
  the end of the record's passage.
* **The letter head** (``head_init="letters"`` in the run config): the classifier's 4-row
  ``score`` head starts as the LM head's rows of the four letter tokens
  (:func:`reclor_lab.results.letters.letter_head_weights`), so before training the classifier *is* the
  zero-shot scorer.
* **Trivial baselines** (:func:`trivial_baselines`): uniform guessing, always the majority
  position, guessing by the training positions' frequencies.
* **Rules without a model** (:func:`rule_baselines`): the option with the most words in common
  with the passage (:func:`overlap_answer`), and the same after rejecting the options that open
  sweepingly ("In every case, …"; :func:`rule_answer`), the surface cue the bundled data
  carries in its EASY part, as ReClor's EASY questions carry theirs.

Every accuracy comes with a 95 % interval (:func:`reclor_lab.metrics.wilson_interval`).
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from reclor_lab.config import NUM_LABELS, OPTION_LETTERS, RunConfig
from reclor_lab.data import format_example, load_split, run_records
from reclor_lab.errors import BaselineError
# The letter tokens and the letter head live in reclor_lab.results.letters (model loading uses them);
# notebook 06 and older code import them from here as well.
from reclor_lab.results.letters import ANSWER_CUE, letter_head_weights, letter_token_ids  # noqa: F401
from reclor_lab.metrics import compute_classification_metrics, format_accuracy, wilson_interval
from reclor_lab.model import load_model, load_tokenizer, resolve_compute_dtype
from reclor_lab.runs.rundir import RunDir, write_json

#: Between the shots of a k-shot prompt and the question.
SHOT_SEPARATOR = "\n\n"
#: Marks a passage cut short to fit the token budget.
ELLIPSIS = " …"


# --- prompts ------------------------------------------------------------------------------------------

def prompt_text(record: dict, template: str, cue: str = ANSWER_CUE) -> str:
    """The record in ``template``'s layout, ending with the answer cue (added when missing).

    >>> rec = {"context": "All owls hunt.", "question": "Which is true?", "answers": ["w", "x", "y", "z"]}
    >>> prompt_text(rec, "Q: {question} {context} A) {a} B) {b} C) {c} D) {d}")
    'Q: Which is true? All owls hunt. A) w B) x C) y D) z Answer:'
    """
    text = format_example(record, template)
    return text if text.endswith(cue) else text + cue


def choose_shots(train: Sequence[dict], k: int, seed: int) -> list[dict]:
    """``k`` labelled training records for a k-shot prompt: a deterministic sample (same
    records, same seed → same shots, in the same order), the same shots for every question.

    >>> [r["id"] for r in choose_shots([{"id": i, "label": 0} for i in range(10)], 3, seed=0)]
    [6, 9, 0]
    """
    if k < 0:
        raise BaselineError(f"the number of shots must be >= 0, got {k}")
    if k > len(train):
        raise BaselineError(f"{k} shots asked for, but the training split has only {len(train)} records")
    if any("label" not in r for r in train):
        raise BaselineError("shots must come from a labelled split (train)")
    return random.Random(seed).sample(list(train), k)


@dataclass(frozen=True)
class Prompt:
    """Token ids of one LM-scoring prompt, and what had to give way to fit the budget."""

    ids: list[int]
    shots_used: int
    shots_dropped: int
    context_cut: bool


def build_prompt(record: dict, tokenizer, template: str, shots: Sequence[dict] = (),
                 max_tokens: int = 512, cue: str = ANSWER_CUE) -> Prompt:
    """The token ids of ``shots`` (each ending with its answer letter) and then ``record`` ending
    with the cue, at most ``max_tokens`` of them.

    Truncation never cuts the question being asked, its options or the cue: first the shots
    farthest from the question are dropped, one whole shot at a time; then the end of the
    record's own passage is cut (marked with "…"). A record whose question and options alone
    do not fit raises :class:`BaselineError`.
    """
    def encode(text: str) -> list[int]:
        return tokenizer(text, truncation=False, verbose=False)["input_ids"]

    shots = list(shots)
    question = prompt_text(record, template, cue)
    dropped = 0
    while True:
        text = SHOT_SEPARATOR.join([prompt_text(s, template, cue) + f" {OPTION_LETTERS[s['label']]}"
                                    for s in shots] + [question])
        ids = encode(text)
        if len(ids) <= max_tokens or not shots:
            break
        shots.pop(0)
        dropped += 1
    if len(ids) <= max_tokens:
        return Prompt(ids, len(shots), dropped, False)
    context_ids = tokenizer(record["context"], add_special_tokens=False)["input_ids"]
    keep = len(context_ids) - (len(ids) - max_tokens)
    while keep > 0:
        cut = dict(record, context=tokenizer.decode(context_ids[:keep]).rstrip() + ELLIPSIS)
        ids = encode(prompt_text(cut, template, cue))
        if len(ids) <= max_tokens:
            return Prompt(ids, 0, dropped, True)
        keep -= max(1, len(ids) - max_tokens)
    raise BaselineError(
        f"record {record.get('id_string')!r}: its question, options and cue alone need more than "
        f"{max_tokens} tokens; raise the token budget (the model's context window)")


# --- scoring ----------------------------------------------------------------------------------------

def context_window(model, tokenizer) -> int:
    """Tokens the model can read: its ``max_position_embeddings`` (the tokenizer's limit when
    that is smaller)."""
    window = getattr(model.config, "max_position_embeddings", None) or 2048
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < window:
        window = tok_max
    return window


@torch.no_grad()
def score_prompts(model, prompts: Sequence[Sequence[int]], letter_ids: Sequence[int], pad_id: int,
                  batch_size: int = 8, dtype: torch.dtype = torch.float32) -> np.ndarray:
    """The causal LM's next-token logits of the letter tokens after each prompt: ``(n, 4)``.

    Batches of similar length, padded on the right; the logits are read at each prompt's last
    real token. Only the letters' rows of the LM head are applied (not the whole vocabulary:
    on Llama-2 a batch of 8 k-shot prompts would otherwise make gigabytes of logits).
    """
    from reclor_lab.model import autocast_for

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
    head = model.get_output_embeddings()
    rows = torch.as_tensor(list(letter_ids), device=device)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out = np.zeros((len(prompts), len(letter_ids)), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(prompts[i]) for i in idx)
        x = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for j, i in enumerate(idx):
            x[j, : len(prompts[i])] = torch.as_tensor(prompts[i])
            mask[j, : len(prompts[i])] = 1
        x, mask = x.to(device), mask.to(device)
        with autocast_for(device, dtype):
            hidden = decoder(input_ids=x, attention_mask=mask).last_hidden_state
            last = hidden[torch.arange(len(idx), device=device), mask.sum(1) - 1]
            logits = torch.nn.functional.linear(last.to(head.weight.dtype), head.weight[rows])
        out[idx] = logits.float().cpu().numpy()
    model.train(was_training)
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax (over the four options)."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def lm_baseline(cfg: RunConfig, shots: int = 0, split: str = "val", verbose: bool = True,
                model=None, tokenizer=None) -> dict[str, Any]:
    """Zero-shot (``shots=0``) or k-shot LM scoring of ``split`` with the run's model, template
    and records (:func:`reclor_lab.data.run_records`: ``train_limit`` and ``eval_limit`` apply).
    Returns the metrics (accuracy with its 95 % interval, macro F1, the confusion matrix), the
    predicted-letter distribution, and per example the predictions and the four probabilities.

    ``model`` / ``tokenizer``: an already loaded causal LM (:func:`reclor_lab.model.load_model`
    with ``task="causal-lm"``), to score several settings without loading it again.
    """
    tokenizer = tokenizer or load_tokenizer(cfg.model_name_or_path)
    model = model or load_model(cfg, tokenizer, task="causal-lm")
    records = run_records(cfg, split)
    chosen = choose_shots(load_split(cfg.data_dir, "train"), shots, cfg.seed) if shots else []
    letters = letter_token_ids(tokenizer)
    window = context_window(model, tokenizer)
    prompts = [build_prompt(r, tokenizer, cfg.template, chosen, window) for r in records]
    logits = score_prompts(model, [p.ids for p in prompts], letters, tokenizer.pad_token_id,
                           cfg.eval_batch_size, resolve_compute_dtype(cfg))
    preds = logits.argmax(-1)
    result: dict[str, Any] = {
        "method": "zero-shot" if shots == 0 else f"{shots}-shot",
        "split": split, "n": len(records), "shots": shots,
        "shot_ids": [s["id_string"] for s in chosen],
        "letter_tokens": tokenizer.convert_ids_to_tokens(letters), "letter_token_ids": letters,
        "context_window": window, **_prompt_figures(prompts, shots, preds),
    }
    if all("label" in r for r in records):
        result.update(compute_classification_metrics(preds, [r["label"] for r in records]))
    result["predictions"] = preds.tolist()
    result["probabilities"] = softmax(logits).round(6).tolist()
    if verbose:
        print(baseline_line(result))
    return result


def _prompt_figures(prompts: list, shots: int, preds: np.ndarray) -> dict[str, Any]:
    """How many prompts kept all their shots or had their passage cut, their mean length, and
    how often each letter was predicted."""
    counts = np.bincount(preds, minlength=NUM_LABELS)
    return {
        "prompts_with_all_shots": sum(p.shots_used == shots for p in prompts),
        "prompts_with_context_cut": sum(p.context_cut for p in prompts),
        "mean_prompt_tokens": float(np.mean([len(p.ids) for p in prompts])),
        "predicted_distribution": {OPTION_LETTERS[c]: int(counts[c]) for c in range(NUM_LABELS)},
    }


def baseline_line(result: dict) -> str:
    """One line: the method, accuracy with its interval, macro F1, predicted letters."""
    dist = ", ".join(f"{k} {v}" for k, v in result["predicted_distribution"].items())
    head = f"{result['method']} LM scoring on {result['split']} ({result['n']} examples"
    if result["shots"]:
        head += f"; {result['prompts_with_all_shots']} prompts with all {result['shots']} shots"
    head += ")"
    if "accuracy" not in result:
        return f"{head}: predicted letters {dist}"
    return (f"{head}: accuracy {format_accuracy(result['accuracy'], result['accuracy_ci95'])}, "
            f"macro F1 {result['f1_macro']:.3f}; predicted letters {dist}")


def write_baseline(result: dict, run_dir: str | Path) -> Path:
    """Write ``result`` as ``baseline-<method>.json`` beside the run's metrics.json."""
    path = RunDir(run_dir).baseline_path(result["method"])
    write_json(path, result)
    return path


# --- trivial baselines -------------------------------------------------------------------------------

def binomial_range(n: int, p: float, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` range of the accuracy of a guesser right with probability ``p`` on
    each of ``n`` examples (exact binomial quantiles / n): what a guesser scores 95 % of the time.

    >>> binomial_range(500, 0.25)
    (0.212, 0.288)
    """
    log_pmf = [math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
               + (k * math.log(p) if k else 0.0) + ((n - k) * math.log1p(-p) if n - k else 0.0)
               for k in range(n + 1)]
    cdf = np.cumsum(np.exp(log_pmf))
    tail = (1 - level) / 2
    lo = int(np.searchsorted(cdf, tail))
    hi = int(np.searchsorted(cdf, 1 - tail))
    return lo / n, min(hi, n) / n


def trivial_baselines(train_labels: Sequence[int], eval_labels: Sequence[int]) -> list[dict]:
    """What guessing scores on ``eval_labels`` (the training labels set the priors):

    * ``chance``: a uniform guess, 25 % in expectation;
    * ``majority``: always the most frequent training position (a fixed prediction, so its
      accuracy is exact and gets a Wilson interval);
    * ``position prior``: a guess drawn from the training positions' frequencies, expected
      accuracy ``sum_c p_train(c) · p_eval(c)``.

    For the two random guessers the interval is the range a guesser's score falls in 95 % of the
    time on this many examples.

    >>> [round(r["accuracy"], 3) for r in trivial_baselines([0, 0, 1, 2], [0, 1, 0, 3])]
    [0.25, 0.5, 0.312]
    """
    train = np.bincount(np.asarray(train_labels, dtype=int), minlength=NUM_LABELS) / len(train_labels)
    counts = np.bincount(np.asarray(eval_labels, dtype=int), minlength=NUM_LABELS)
    n = int(counts.sum())
    majority = int(train.argmax())
    prior = float((train * counts / n).sum())
    return [
        {"method": "chance", "accuracy": 1 / NUM_LABELS, "accuracy_ci95": list(binomial_range(n, 1 / NUM_LABELS)),
         "n": n, "note": "uniform guess; interval: where 95 % of guessers land"},
        {"method": "majority", "accuracy": float(counts[majority] / n),
         "accuracy_ci95": list(wilson_interval(int(counts[majority]), n)), "n": n,
         "note": f"always {OPTION_LETTERS[majority]}, the most frequent training position"},
        {"method": "position prior", "accuracy": prior, "accuracy_ci95": list(binomial_range(n, prior)),
         "n": n, "note": "guess by the training positions' frequencies; interval: where 95 % of guessers land"},
    ]


def results_table(rows: Sequence[dict]) -> str:
    """A fixed-width table of results rows (``method``, ``accuracy``, ``accuracy_ci95``, ``n``),
    with EASY and HARD columns when a row carries ``parts`` (:func:`part_accuracies`)."""
    with_parts = any(r.get("parts") for r in rows)
    extra = f"{'EASY':>7}{'HARD':>7}" if with_parts else ""
    lines = [f"{'method':<30}{'accuracy':>9}  {'95 % interval':<16}{'n':>5}{extra}",
             f"{'-' * 30}{'-' * 9}  {'-' * 16}{'-' * 5}" + ("-" * 14 if with_parts else "")]
    for r in rows:
        lo, hi = r["accuracy_ci95"]
        line = f"{r['method']:<30}{r['accuracy']:>9.3f}  [{lo:.3f}, {hi:.3f}]  {r['n']:>5}"
        if with_parts:
            parts = r.get("parts") or {}
            line += "".join(f"{parts[p]['accuracy']:>7.3f}" if p in parts else f"{'':>7}" for p in ("EASY", "HARD"))
        lines.append(line)
    return "\n".join(lines)


# --- rules without a model ----------------------------------------------------------------------------

#: A word, for the overlap rules: lower-case letters, digits and apostrophes.
WORD = re.compile(r"[a-z0-9']+")


def words(text: str) -> set[str]:
    """The distinct lower-case words of ``text``.

    >>> sorted(words("Mara rises; mara sleeps."))
    ['mara', 'rises', 'sleeps']
    """
    return set(WORD.findall(text.lower()))


def overlap_answer(record: dict, candidates: Sequence[int] | None = None) -> int:
    """The option (among ``candidates``, all four by default) sharing the most distinct words with
    the passage; the first such option on a tie.

    >>> overlap_answer({"context": "Owls hunt mice at night.", "answers": ["Cats sleep.", "Owls hunt.",
    ...                 "Mice hunt at night.", "Dogs bark."]})
    2
    """
    context = words(record["context"])
    candidates = range(len(record["answers"])) if candidates is None else candidates
    return max(candidates, key=lambda i: (len(words(record["answers"][i]) & context), -i))


def rule_answer(record: dict) -> int:
    """Reject the options that open sweepingly ("In every case, …", "Invariably, …"), then take the
    one with the most word overlap with the passage (:func:`overlap_answer`). When every option
    opens sweepingly, none is rejected. No model, no label: the options' surface and the passage.

    >>> rule_answer({"context": "Owls hunt mice at night.", "answers": ["Invariably, mice hunt at night.",
    ...              "Probably, owls hunt.", "Cats sleep.", "Dogs bark."]})
    1
    """
    from reclor_lab.tools.synth import opens_sweepingly

    kept = [i for i, a in enumerate(record["answers"]) if not opens_sweepingly(a)]
    return overlap_answer(record, kept or None)


def part_accuracies(predictions: Sequence[int], records: Sequence[dict]) -> dict[str, Any]:
    """Accuracy with its Wilson interval over all ``records`` and on each part of the EASY / HARD
    split (:func:`reclor_lab.results.analysis.easy_hard`; no parts where the split is not defined):
    ``{"accuracy", "accuracy_ci95", "n", "parts": {"EASY": {...}, "HARD": {...}}}``."""
    from reclor_lab.results.analysis import easy_hard
    preds = [int(p) for p in predictions]
    if len(preds) != len(records):
        raise BaselineError(f"{len(preds)} predictions for {len(records)} records")

    def score(idx: list[int]) -> dict[str, Any]:
        right = sum(preds[i] == records[i]["label"] for i in idx)
        return {"accuracy": right / len(idx) if idx else float("nan"),
                "accuracy_ci95": list(wilson_interval(right, len(idx))) if idx else [float("nan")] * 2,
                "n": len(idx)}

    out = score(list(range(len(records))))
    parts = easy_hard(records)
    out["parts"] = {} if parts is None else {
        part: score([i for i, p in enumerate(parts) if p == part]) for part in ("EASY", "HARD")}
    return out


def rule_baselines(records: Sequence[dict]) -> list[dict]:
    """Results rows (as :func:`results_table` prints them) of the two rules on labelled
    ``records``: word overlap alone, and the rule (sweeping options rejected, then overlap),
    each with its EASY / HARD parts."""
    rows = []
    for method, rule in (("word overlap", overlap_answer), ("rule: no sweeping, overlap", rule_answer)):
        preds = [rule(r) for r in records]
        rows.append({"method": method, "predictions": preds, **part_accuracies(preds, records)})
    return rows
