# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: -all
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: reclor-lab (Python 3)
#     language: python
#     name: reclor-lab
# ---

# %% [markdown]
# # 01 · Data and tokenization
#
# Before any model sees ReClor, a question has to become a row of token ids and a label. This
# notebook follows one record all the way:
#
# 1. what a ReClor record is,
# 2. the text the model reads (the reference layout),
# 3. Llama-2's tokenizer: how text splits into sub-words, and why its pad token is the eos token,
# 4. how long the inputs are in tokens, and how a too-long passage is shortened,
# 5. the answer-position distribution and the class weights of the loss,
# 6. what the collator does to a batch,
# 7. which position of each row the classification head reads.
#
# **Stand-alone.** This notebook needs no other notebook: it reads the data folder and the
# model from disk, nothing else. Three exercises: `format_record`, `class_weights_by_hand` and
# `last_token_index`.

# %% [markdown]
# ## The preset
#
# One variable picks everything: `"tiny"` runs on any CPU, offline, on the bundled data and
# the bundled tiny Llama. `"llama2-7b"` runs the same cells as the reference solution
# (Llama-2-7B weights on disk, the official ReClor files in `data/reclor/`, a GPU for section 7
# and the later notebooks). Every later cell reads its settings from `cfg`.

# %%
PRESET = "tiny"  # or "llama2-7b": the reference solution (GPU, weights and data on disk)

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the Hugging Face hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from reclor_lab.config import get_preset
from reclor_lab.course.notebook import start_notebook

start_notebook("torch", "transformers", "tokenizers", "datasets")  # cd to the repo root, print versions

cfg = get_preset(PRESET)
print()
print(cfg.describe())

# %% [markdown]
# Everything this notebook does not teach comes from the `reclor_lab` package; `checks` holds
# the self-checks of the exercises.

# %%
import json
from collections import Counter

import matplotlib.pyplot as plt
import ipywidgets as widgets
import torch
import transformers
from datasets.utils.logging import disable_progress_bar
from torch.utils.data import DataLoader

from reclor_lab.course import checks
from reclor_lab.config import NUM_LABELS, OPTION_LETTERS
from reclor_lab.data import label_distribution, load_split, make_collator, model_inputs, tokenize_records
from reclor_lab.model import load_model, load_tokenizer

disable_progress_bar()  # datasets' progress bars (token-cache writes): tidier output
transformers.logging.disable_progress_bar()  # no "Loading weights 0%" bars stored in the notebook

# %% [markdown]
# ## 1. A ReClor record
#
# Each split is one JSON file: a list of records. A record has a `context` (a short argument),
# a `question` about it, four `answers`, the index of the correct one in `label` (0 → A, …,
# 3 → D) and an `id_string`. The loader validates every record and names the file and the
# record when something is wrong.

# %%
train = load_split(cfg.data_dir, "train")
val = load_split(cfg.data_dir, "val")
test = load_split(cfg.data_dir, "test")
print(f"train {len(train)}, val {len(val)}, test {len(test)} records")
print(json.dumps(train[0], indent=2))

# %% [markdown]
# The test split is unlabeled, like the official one: its records carry a `question_type`
# instead of a `label`. We can predict on it (notebook 05) but not score it.

# %%
print("test record keys:", sorted(test[0]))

# %% [markdown]
# ## 2. The text the model reads
#
# The model takes one string per record. The reference solution lays the parts out on one line:
#
# ```
# Context: … Question: … Option A: … Option B: … Option C: … Option D: …
# ```
#
# **Exercise 1.** Write `format_record`: one record → that string, exactly (single spaces between
# the parts, nothing before `Context:` and nothing after option D).

# %%
def format_record(record: dict) -> str:
    """Exercise 1: the record as `Context: … Question: … Option A: … Option B: … Option C: … Option D: …`."""
    # BEGIN SOLUTION: unpack the four answers, then one f-string in the layout above
    a, b, c, d = record["answers"]
    return (f"Context: {record['context']} Question: {record['question']} "
            f"Option A: {a} Option B: {b} Option C: {c} Option D: {d}")
    # END SOLUTION


# %%
format_record = checks.check_format_record(format_record)

# %% [markdown]
# The package does the same with a template string, `cfg.template`. The `llama2-7b` preset uses
# the reference layout, `REFERENCE_TEMPLATE`. The `tiny` preset uses `TINY_TEMPLATE`: the same
# layout with `" Answer:"` appended (section 7 says why). So on the tiny preset, changing the
# layout means setting `template` in the config; deleting `" Answer:"` is an experiment worth
# running.

# %%
checks.note(format_record)
from reclor_lab.config import REFERENCE_TEMPLATE, TINY_TEMPLATE
from reclor_lab.data import format_example

text = format_record(train[0])
print(text)
print()
print("same as the package's format_example:", text == format_example(train[0], REFERENCE_TEMPLATE))
print("this preset's template:", "TINY_TEMPLATE" if cfg.template == TINY_TEMPLATE else
      "REFERENCE_TEMPLATE" if cfg.template == REFERENCE_TEMPLATE else "your own")

# %% [markdown]
# ## 3. The tokenizer, and why pad = eos
#
# The tokenizer turns the string into ids from the model's vocabulary and puts `<s>` (beginning
# of sequence) in front. Both presets use **Llama-2's own tokenizer**: a SentencePiece BPE of
# 32,000 entries. The tiny model's folder carries the same vocabulary and merges as
# `meta-llama/Llama-2-7b-hf` (rebuilt from the npm package `llama-tokenizer-js` by
# `reclor-lab tiny tokenizer`; its license notice is in `models/tiny-llama/NOTICE`), so the
# `tiny` and `llama2-7b` presets give the **same input ids for the same text**: what you learn
# about lengths here holds for the reference run.
#
# Llama-2 ships **without a pad token**. Batches need one (short inputs are filled up to the
# longest), so the reference reuses the end-of-sequence token: `pad_token = eos_token`, that is
# `</s>`, id 2. That is safe here for two reasons:
#
# * the attention mask is 0 on padding, so the model never attends to it;
# * Llama's sequence classifier reads its logits at one position per row, chosen from the ids:
#   in transformers 5.24, the *rightmost* token whose id is not `pad_token_id` (2). With right
#   padding that is the last real token, as long as the text does not *end* in an eos (section 7
#   shows when pad = eos breaks).
#
# `load_tokenizer` sets both (pad = eos, right padding) and changes nothing else.

# %%
tokenizer = load_tokenizer(cfg.model_name_or_path)
print(type(tokenizer).__name__, f"with {len(tokenizer):,} tokens")
for role in ("bos", "eos", "unk", "pad"):
    print(f"{role}: {getattr(tokenizer, role + '_token')!r} (id {getattr(tokenizer, role + '_token_id')})")
print("padding side:", tokenizer.padding_side)
# two ids anyone can look up in Llama-2's published vocabulary
print('"Hello" ->', tokenizer("Hello")["input_ids"], '| "Context:" ->', tokenizer("Context:")["input_ids"])

# %%
ids = tokenizer(text)["input_ids"]
print(f"{len(ids)} tokens; the first 12:")
for i, t in zip(ids[:12], tokenizer.convert_ids_to_tokens(ids[:12])):
    print(f"  {i:>6}  {t!r}")

# %% [markdown]
# ### How Llama-2 splits a passage
#
# Three rules explain every split you will see:
#
# * **▁ marks a space.** SentencePiece turns each space into `▁` and glues it to the *next*
#   word, so `" the"` is one token, `▁the`, and a word at the very start gets a `▁` too.
# * **Common words are one token; rare words are several.** BPE merged the most frequent
#   pairs of pieces into 32,000 entries: `▁the`, `▁council` and `▁argument` made it; a rare
#   or long word is spelled from pieces (`▁llam` + `as`). A digit is always its own token, so
#   numbers are long.
# * **Byte fallback.** A character outside the vocabulary (an emoji, a rare symbol) becomes its
#   UTF-8 bytes, one token each (`<0xF0>`, `<0x9F>`, …), so nothing is ever `<unk>`.
#
# The passage of the first training record, piece by piece (`|` between tokens):

# %%
def show_pieces(s: str) -> None:
    pieces = tokenizer.convert_ids_to_tokens(tokenizer(s, add_special_tokens=False)["input_ids"])
    print(f"{len(s.split())} words -> {len(pieces)} tokens")
    print(" | ".join(pieces))


show_pieces(train[0]["context"])
print()
multi = sorted({w.strip(".,;:") for w in train[0]["context"].split()
                if len(tokenizer(w.strip(".,;:"), add_special_tokens=False)["input_ids"]) > 1})
print("words of this passage that take more than one token:", ", ".join(multi) or "none")

# %% [markdown]
# **Predict before you run.** How many tokens does the emoji 🦙 take, and how many does
# `"counterintuitive"` take? Write both numbers down, then run the cell.

# %%
show_pieces("🦙")
show_pieces("counterintuitive")
show_pieces("In 1987, about 12,500 llamas lived there.")

# %% [markdown]
# **Predict before you run.** Every input holds `" Option A:"`, `" Option B:"`, … How many tokens
# does `" Option A:"` cost inside a text, and so how many does the kit spend per record on the
# four option labels?

# %%
inside = tokenizer("Context: x Option A:", add_special_tokens=False)["input_ids"]
label = inside[len(tokenizer("Context: x", add_special_tokens=False)["input_ids"]):]
print('" Option A:" ->', tokenizer.convert_ids_to_tokens(label), f"= {len(label)} tokens; x 4 options = {4 * len(label)}")

# %% [markdown]
# Three: `▁Option` (a whole word with its space), `▁A` (the letter with its space) and `:`
# (punctuation is its own token after a letter). So the layout itself (`Context:`, `Question:`,
# four labels, and the tiny preset's `" Answer:"`) costs a fixed number of tokens a record,
# whatever the text. Counted on every training record: the tokens of the whole text minus the
# tokens of its six parts, each encoded alone (SentencePiece's leading `▁` stands for the space
# before a part, so a part costs the same alone as inside the text):

# %%
def layout_cost(record: dict, template: str) -> int:
    """Tokens of the formatted record minus the tokens of its context, question and four options."""
    text_ids = tokenizer(format_example(record, template), add_special_tokens=False)["input_ids"]
    parts = [record["context"], record["question"], *record["answers"]]
    return len(text_ids) - sum(len(tokenizer(part, add_special_tokens=False)["input_ids"]) for part in parts)


for name, template in (("REFERENCE_TEMPLATE", REFERENCE_TEMPLATE), ("TINY_TEMPLATE", TINY_TEMPLATE)):
    costs = Counter(layout_cost(r, template) for r in train)
    print(f"{name:<19} the layout costs " + ", ".join(f"{c} tokens on {n:,} records" for c, n in sorted(costs.items())))

# %% [markdown]
# How many tokens per word does Llama-2 spend on the bundled data? English prose usually comes
# to about 1.3: most words are one token, long and rare ones several, punctuation one more.

# %%
words = sum(len(r["context"].split()) + len(r["question"].split()) + sum(len(a.split()) for a in r["answers"])
            for r in train)
pieces = sum(len(tokenizer(part, add_special_tokens=False)["input_ids"])
             for r in train for part in [r["context"], r["question"], *r["answers"]])
print(f"train split: {words:,} words -> {pieces:,} tokens: {pieces / words:.2f} tokens per word")

# %% [markdown]
# ## 4. How long are the inputs?
#
# Memory and time grow with the sequence length, so the config caps it: `max_len` tokens per
# example. Cutting the *end* of a too-long input would cut option D first (and the " Answer:"
# cue): a model cannot choose an option it never sees. So the kit shortens the **passage**
# instead: it keeps the passage's start and end, drops tokens from its middle, and marks the cut
# with " … "; the question, the four options and the cue always reach the model.
# `tokenize_records` tokenizes a whole split, keeps the length before shortening in
# `full_length` and reports how many passages were shortened: a cut should be counted, not
# hidden.

# %%
train_ds, train_stats = tokenize_records(train, tokenizer, cfg.max_len, cfg.template)
val_ds, val_stats = tokenize_records(val, tokenizer, cfg.max_len, cfg.template)
print("train:", train_stats.line())
print("val:  ", val_stats.line())
print("columns:", train_ds.column_names)

# %%
fig, ax = plt.subplots(figsize=(7, 3))
ax.hist(train_ds["full_length"], bins=40, color="tab:blue", alpha=0.8)
ax.axvline(cfg.max_len, color="tab:red", ls="--", label=f"max_len = {cfg.max_len}")
ax.set_xlabel("tokens per example (before truncation)")
ax.set_ylabel("examples")
ax.set_title(f"Token lengths of the train split ({PRESET} tokenizer)")
ax.legend()
plt.show()

# %% [markdown]
# No bundled record is longer than the tiny preset's `max_len`. To see a cut, tokenize the
# longest validation record with a `max_len` 40 tokens short of its length:

# %%
longest = max(range(len(val)), key=lambda i: val_ds[i]["full_length"])
short_ds, short_stats = tokenize_records([val[longest]], tokenizer, val_ds[longest]["full_length"] - 40,
                                         cfg.template, cache=False)
print(short_stats.line())
print(short_ds[0]["text"])

# %% [markdown]
# ### Play: browse the records
#
# Move the slider to see a validation record as the model reads it, its token count and its
# answer. (In a live notebook the widget is interactive; a saved notebook shows it as static.)

# %%
def describe_record(i: int) -> str:
    rec = val[i]
    n = val_ds[i]["full_length"]
    cut = f" (passage shortened to fit {cfg.max_len})" if n > cfg.max_len else ""
    return (f"<b>{rec['id_string']}</b>: {n} tokens{cut}, answer <b>{OPTION_LETTERS[rec['label']]}</b>"
            f"<br><br>{format_example(rec, cfg.template)}")


slider = widgets.IntSlider(value=0, min=0, max=len(val) - 1, description="val record")
view = widgets.HTML(describe_record(0), layout=widgets.Layout(width="95%"))
slider.observe(lambda change: setattr(view, "value", describe_record(change["new"])), names="value")
widgets.VBox([slider, view])

# %% [markdown]
# ## 5. Answer positions and class weights
#
# If the correct answer sat in position A more often than elsewhere, a model could score above
# chance by always answering A. The reference counts the positions in the training set and
# weights the cross-entropy by their inverse frequency, so each position counts equally in
# total:
#
# $$w_c = \frac{N}{4\, n_c}$$
#
# with $N$ training examples and $n_c$ of them answered by option $c$. A perfectly balanced set
# gets all ones.

# %%
for name, records in (("train", train), ("val", val)):
    dist = label_distribution(records)
    print(f"{name:<5}", "  ".join(f"{k}: {v:>4} ({v / len(records):.1%})" for k, v in dist.items()))

# %% [markdown]
# **Exercise 2.** Write `class_weights_by_hand`: a list of labels (0–3) → the four weights
# $w_c = N / (4\, n_c)$ as a list of floats (an option that never occurs gets weight 1.0).

# %%
def class_weights_by_hand(labels: list[int]) -> list[float]:
    """Exercise 2: w_c = N / (4 * n_c) for c = 0..3 (1.0 for an option that never occurs)."""
    # BEGIN SOLUTION: count each label (collections.Counter), then N / (4 · n_c) for c = 0..3
    counts = Counter(labels)
    n = len(labels)
    return [n / (NUM_LABELS * counts[c]) if counts[c] else 1.0 for c in range(NUM_LABELS)]
    # END SOLUTION


# %%
class_weights_by_hand = checks.check_class_weights(class_weights_by_hand)

# %%
checks.note(class_weights_by_hand)
from reclor_lab.data import class_weights

train_labels = [r["label"] for r in train]
mine = class_weights_by_hand(train_labels)
print("class weights (A B C D):", " ".join(f"{w:.4f}" for w in mine))
print("same as the package's class_weights:",
      all(abs(a - b) < 1e-6 for a, b in zip(mine, class_weights(train_labels).tolist())))

# %% [markdown]
# ## 6. What the collator does to a batch
#
# Examples differ in length; a batch is one rectangular tensor. The collator
# (`DataCollatorWithPadding`) pads each batch to *its own* longest example (not to `max_len`),
# on the right, with the pad (= eos) id, and sets the attention mask to 0 there. The labels
# become one tensor of shape `(batch,)`.

# %%
collate = make_collator(tokenizer)
loader = DataLoader(model_inputs(train_ds), batch_size=4, collate_fn=collate)
batch = next(iter(loader))
for key, tensor in batch.items():
    print(f"{key:<15} {tuple(tensor.shape)}  {tensor.dtype}")
print("real tokens per row:", batch["attention_mask"].sum(1).tolist())
print("labels:", batch["labels"].tolist())

# %% [markdown]
# The end of the shortest row: real tokens, then padding with the eos id and mask 0.

# %%
row = int(batch["attention_mask"].sum(1).argmin())
n_real = int(batch["attention_mask"][row].sum())
window = slice(n_real - 3, n_real + 3)
print("input_ids     ", batch["input_ids"][row, window].tolist())
print("attention_mask", batch["attention_mask"][row, window].tolist())
print("pad id = eos id =", tokenizer.pad_token_id, repr(tokenizer.convert_ids_to_tokens(tokenizer.pad_token_id)))

# %% [markdown]
# ## 7. Which position does the head read?
#
# A decoder is **causal**: position *t* attends only to positions ≤ *t*. So the hidden state of
# the first token has seen one token, and only the *last real token* has seen the whole
# context, question and all four options. The classification head (`score`, a 4 × hidden
# matrix) is applied to that one hidden state per row; that is why a decoder classifier reads
# the last token, where an encoder (BERT) reads the first.
#
# Which position is "last" comes from the ids alone: transformers 5.24 takes, per row, the
# **rightmost position whose id is not `pad_token_id`** (it handles right and left padding
# alike, and it does not look at the attention mask).
#
# **Exercise 3.** Write `last_token_index(input_ids, pad_token_id)`: for a batch `(batch, length)`
# of ids, the position the head reads in each row, as a `LongTensor` of shape `(batch,)`. The
# check feeds your positions to the model's own head and compares with the model's logits.
#
# To judge it against the model, the check needs the model: the 4-bit classifier, loaded as in
# notebook 02 (on the tiny preset that takes a second).

# %%
model = load_model(cfg, tokenizer)


# %%
def last_token_index(input_ids: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """Exercise 3: per row, the position of the rightmost token whose id is not pad_token_id."""
    # BEGIN SOLUTION: no loop needed: which positions hold a real (non-pad) id, then one reduction per row
    positions = torch.arange(input_ids.shape[1])
    return (positions * (input_ids != pad_token_id)).argmax(dim=1)
    # END SOLUTION


# %%
last_token_index = checks.check_last_token_index(last_token_index, model, tokenizer)

# %% [markdown]
# The positions in the batch of section 6, and the token the head reads in each row:

# %%
checks.note(last_token_index)
read_at = last_token_index(batch["input_ids"], tokenizer.pad_token_id)
print("real tokens per row:", batch["attention_mask"].sum(1).tolist(), "| width:", batch["input_ids"].shape[1])
print("head reads position:", read_at.tolist())
for row, i in enumerate(read_at.tolist()):
    print(f"  row {row}: {tokenizer.convert_ids_to_tokens(int(batch['input_ids'][row, i]))!r}")

# %% [markdown]
# The same batch as a picture: each row one example, each column a position; real tokens (mask 1)
# in blue, right padding (the eos id, mask 0) in grey, and the one position per row whose hidden
# state the head reads. Causal attention means that position is the only one that has seen its
# whole row.

# %%
fig, ax = plt.subplots(figsize=(9, 2.2))
ax.imshow(batch["attention_mask"].tolist(), aspect="auto", cmap="Blues", vmin=-0.6, vmax=1.2, interpolation="nearest")
ax.scatter(read_at.tolist(), range(len(read_at)), marker="*", s=140, color="tab:red", label="the head reads here")
ax.set_yticks(range(len(read_at)), [f"row {r}" for r in range(len(read_at))])
ax.set_xlabel("position (token index)")
ax.set_title("A padded batch: real tokens (blue), padding (pale), the position the head reads (red)")
ax.legend(loc="lower left", fontsize=8)
plt.show()

# %% [markdown]
# **Why the tiny preset appends `" Answer:"`.** With the reference layout the last token is the
# last sub-word of option D: the head would read a hidden state that, in a causal LM, is busy
# predicting how option D's sentence goes on. The tiny model was pre-trained (on synthetic
# text, `reclor_lab.tools.tiny`) to name the answer's letter right after `" Answer:"`, so ending the
# input there hands the head the state in which pre-training put the answer. The reference
# fine-tuned Llama-2-7B on the plain layout, and the `llama2-7b` preset keeps it, so its results
# compare with the reference's. What the head reads under each layout, for the first training
# record:

# %%
for name, template in (("REFERENCE_TEMPLATE", REFERENCE_TEMPLATE), ("TINY_TEMPLATE", TINY_TEMPLATE)):
    ids = tokenizer(format_example(train[0], template), return_tensors="pt")["input_ids"]
    i = int(last_token_index(ids, tokenizer.pad_token_id)[0])
    tokens = tokenizer.convert_ids_to_tokens(ids[0, i - 2:i + 1].tolist())
    print(f"{name:<19} ends in {tokens}: the head reads {tokens[-1]!r}")

# %% [markdown]
# **When pad = eos breaks.** The rule cannot tell an eos that belongs to the text from padding.
# An eos *followed by* more text is harmless (the rightmost non-pad token is still the last
# one), but a text that *ends* in eos (a tokenizer set to append eos, or a literal `</s>` at the
# end of a record) loses it: the head reads the token before it instead, and a model trained one
# way and used the other reads the wrong hidden state. Here `</s>` is id 2, the pad id: the
# literal `</s>` at the end of the text below is the special token itself, so the head skips it.
# ReClor's texts contain no eos, and Llama-2's tokenizer does not append one:

# %%
ids = tokenizer(["Context: a short passage. Option D: the end.</s>"], return_tensors="pt")["input_ids"]
print("ids end with:", tokenizer.convert_ids_to_tokens(ids[0, -3:].tolist()))
print("the head reads:", tokenizer.convert_ids_to_tokens(int(ids[0, last_token_index(ids, tokenizer.pad_token_id)[0]])),
      "(not the final eos)")
print("this tokenizer appends eos:", tokenizer("a b")["input_ids"][-1] == tokenizer.eos_token_id)

# %% [markdown]
# ## What you have now
#
# A record → one string → token ids (≤ `max_len`) → padded batches with a mask and labels, the
# class weights of the loss, and the one position per row whose hidden state the head turns into
# four logits. Notebook 02 opens the model's 4-bit weights.
