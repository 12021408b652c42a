"""ReClor files → validated records → formatted text → tokenized ``datasets.Dataset`` → batches.

The official ReClor release has ``train.json``, ``val.json`` and ``test.json``: each a JSON list
of objects with ``context``, ``question``, ``answers`` (four strings), ``label`` (0–3) and
``id_string``. The official test split has no ``label`` and carries ``question_type`` instead.

Every record is validated when a file is read. Bad input raises one :class:`DataError` that
names the file, the record (index and ``id_string``) and what is wrong. Files are only read,
never written.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Iterator, Literal, Sequence

import torch
from torch.utils.data import Sampler

# Tokenized splits kept on disk, and many texts encoded in one call of the Rust tokenizer: machinery.
from reclor_lab.runs import cache as token_cache
from reclor_lab.config import NUM_LABELS, OPTION_LETTERS, REFERENCE_TEMPLATE, RunConfig
from reclor_lab.errors import DataError
# The file and record checks (one DataError naming the file, the record and what is wrong): machinery.
# A longer example's passage cut in its middle to fit max_len, and the token statistics: machinery.
from reclor_lab.runs.data_checks import TokenStats, check_records, fit_passages, read_records, token_stats

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
#: Splits that must carry a ``label`` on every record (the official test split has none).
LABELED_SPLITS: tuple[Split, ...] = ("train", "val")
#: Columns the model's forward pass takes; everything else is dropped before batching.
MODEL_COLUMNS = ("input_ids", "attention_mask", "labels")


# --- reading and validating --------------------------------------------------------------------

def read_reclor(path: str | Path, labeled: bool | None = None) -> list[dict]:
    """Read and validate one ReClor JSON file.

    ``labeled``: True requires a ``label`` on every record, False allows none, None infers it
    from the first record and then requires every record to agree.

    >>> recs = read_reclor("data/val.json", labeled=True)   # doctest: +SKIP
    """
    path = Path(path)
    records = read_records(path)  # a JSON list of records, or one DataError that says why not
    check_records(path, records, labeled)  # keys, texts, four options, labels, unique ids
    return records


def split_path(data_dir: str | Path, split: Split) -> Path:
    return Path(data_dir) / f"{split}.json"


def load_split(data_dir: str | Path, split: Split) -> list[dict]:
    """One split of a ReClor folder; train and val must be labeled, test may not be."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    return read_reclor(split_path(data_dir, split), labeled=True if split in LABELED_SPLITS else None)


def run_records(cfg: RunConfig, split: Split) -> list[dict]:
    """A run's records of ``split``: the first ``cfg.train_limit`` of train, the first
    ``cfg.eval_limit`` of val, every record of test. What training, evaluation, the analysis and
    the baselines read.

    >>> from reclor_lab.config import get_preset
    >>> len(run_records(get_preset("tiny", eval_limit=3), "val"))
    3
    """
    limit = {"train": cfg.train_limit, "val": cfg.eval_limit}.get(split)
    return load_split(cfg.data_dir, split)[:limit]


# --- formatting --------------------------------------------------------------------------------

def format_example(record: dict, template: str = REFERENCE_TEMPLATE) -> str:
    """The text the model reads for one record.

    >>> format_example({"context": "All owls hunt.", "question": "Which is true?",
    ...                 "answers": ["w", "x", "y", "z"]})
    'Context: All owls hunt. Question: Which is true? Option A: w Option B: x Option C: y Option D: z'
    """
    a, b, c, d = record["answers"]
    return template.format(context=record["context"], question=record["question"], a=a, b=b, c=c, d=d)


# --- tokenization ------------------------------------------------------------------------------

def tokenize_records(records: list[dict], tokenizer, max_len: int, template: str = REFERENCE_TEMPLATE,
                     cache: bool | str | Path = True, source: str | Path | None = None):
    """Records → ``datasets.Dataset`` with ``input_ids``, ``attention_mask``, ``length``, and
    ``labels`` when the records are labeled; plus the :class:`~reclor_lab.runs.data_checks.TokenStats` of the split.

    An input longer than ``max_len`` has its passage shortened in the middle
    (:func:`reclor_lab.runs.data_checks.fit_passages`): the question, the options and the answer
    cue always reach the model. ``full_length`` keeps the count before shortening, so how many
    were shortened is reported, not hidden. ``source``: the file the records came from, named in
    errors. ``cache``: the split is kept on disk under a key made of everything that decides it
    (:mod:`reclor_lab.runs.cache`), so the next run loads it in milliseconds: True uses the
    default folder (``$RECLOR_LAB_CACHE``, else ``~/.cache/reclor-lab``), a path that folder,
    False none.

    >>> ds, stats = tokenize_records(records, tok, max_len=256)      # doctest: +SKIP
    >>> ds[0]["input_ids"][:3], ds[0]["labels"]                       # doctest: +SKIP
    ([1, 412, 29901], 2)
    """
    from datasets import Dataset

    labeled = all("label" in r for r in records)
    table: dict[str, list] = {
        "id_string": [r["id_string"] for r in records],
        "text": [format_example(r, template) for r in records],
    }
    if labeled:
        table["labels"] = [r["label"] for r in records]

    folder = token_cache.resolve(cache)
    key = token_cache.key(table, tokenizer, max_len) if folder is not None else None
    ds = token_cache.load(folder, key, table, max_len) if key is not None else None
    if ds is None:
        full = token_cache.encode_texts(table["text"], tokenizer)
        table["text"], ids = fit_passages(records, table["text"], full, tokenizer, max_len,
                                          lambda r: format_example(r, template), source)
        table["input_ids"] = ids
        table["attention_mask"] = [[1] * len(x) for x in ids]
        table["full_length"] = [len(x) for x in full]
        table["length"] = [len(x) for x in ids]
        ds = Dataset.from_dict(table)
        if key is not None:
            token_cache.store(folder, key, ds)
    return ds, token_stats(column(ds, "full_length"), max_len)


def measure_records(records: list[dict], tokenizer, max_len: int, template: str = REFERENCE_TEMPLATE,
                    source: str | Path | None = None, chunk: int = 128) -> TokenStats:
    """The :class:`TokenStats` that :func:`tokenize_records` reports, without keeping any tokens
    and without the cache: ``chunk`` records at a time, so memory stays at the records plus one
    chunk's tokens (``reclor-lab data check`` of a 200 MB file). Raises the same errors."""
    full: list[int] = []
    for start in range(0, len(records), chunk):
        part = records[start:start + chunk]
        texts = [format_example(r, template) for r in part]
        ids = token_cache.encode_texts(texts, tokenizer)
        full += [len(x) for x in ids]
        fit_passages(part, texts, ids, tokenizer, max_len, lambda r: format_example(r, template), source,
                     first_index=start)
    return token_stats(full, max_len)


def column(ds, name: str) -> list:
    """One column of a dataset as a plain list, read from Arrow in one go (``ds[name]`` in datasets
    5 looks items up one by one: ~0.2 s per 1,000 examples, every epoch, to sort by length)."""
    return ds.data.column(name).to_pylist()


def model_inputs(ds):
    """The dataset restricted to the columns the model takes, as torch tensors."""
    cols = [c for c in MODEL_COLUMNS if c in ds.column_names]
    return ds.with_format("torch", columns=cols)


def class_weights(labels: Sequence[int], num_labels: int = NUM_LABELS) -> torch.Tensor:
    """Inverse-frequency weights for the answer positions: ``w_c = N / (K · n_c)``.

    A perfectly balanced set gives all ones; a position seen half as often as average gets 2.
    The weighted cross-entropy then counts each position equally in total. A position never
    seen gets weight 1 (it contributes no loss anyway).

    >>> class_weights([0, 0, 1, 2, 3, 3, 3, 3])
    tensor([1.0000, 2.0000, 2.0000, 0.5000])
    """
    counts = Counter(int(x) for x in labels)
    n = sum(counts.values())
    if n == 0:
        raise DataError("cannot compute class weights from an empty label list")
    return torch.tensor(
        [n / (num_labels * counts[c]) if counts[c] else 1.0 for c in range(num_labels)],
        dtype=torch.float32,
    )


def label_distribution(records: list[dict]) -> dict[str, int]:
    counts = Counter(r["label"] for r in records if "label" in r)
    return {OPTION_LETTERS[c]: counts.get(c, 0) for c in range(NUM_LABELS)}


# --- batching ----------------------------------------------------------------------------------

def make_collator(tokenizer):
    """``DataCollatorWithPadding``: pads each batch to its own longest example, not to max_len.

    Input: a list of dicts with ``input_ids`` / ``attention_mask`` (and ``labels``) of varying
    length. Output: ``input_ids`` and ``attention_mask`` of shape ``(batch, longest)``, padded on
    the right with the pad (= eos) id and mask 0, and ``labels`` of shape ``(batch,)``.
    """
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer, padding="longest", return_tensors="pt")


def length_grouped_batches(lengths: Sequence[int], batch_size: int, seed: int,
                           mega: int = 50) -> list[list[int]]:
    """Shuffled batches of examples of similar length (less padding, same randomness of order).

    Shuffle all indices, cut them into windows of ``mega · batch_size``, sort each window by
    length, cut it into batches, then shuffle the batches. Deterministic for a given seed.

    >>> length_grouped_batches([5, 50, 6, 49], batch_size=2, seed=0, mega=2)
    [[1, 3], [2, 0]]
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = max(batch_size * mega, batch_size)
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: -lengths[i])
        batches += [chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def shuffled_batches(n: int, batch_size: int, seed: int) -> list[list[int]]:
    """Plain shuffled batches (the reference's order), deterministic for a given seed."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [order[k:k + batch_size] for k in range(0, n, batch_size)]


class BatchListSampler(Sampler[list[int]]):
    """A batch sampler that replays a precomputed list of batches (see the functions above)."""

    def __init__(self, batches: list[list[int]]):
        self.batches = batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                  group_by_length: bool) -> list[list[int]]:
    """The batch order of one epoch: a pure function of (seed, epoch), so a resumed run sees
    exactly the order an uninterrupted one would."""
    s = seed * 1000 + epoch
    if group_by_length:
        return length_grouped_batches(lengths, batch_size, s)
    return shuffled_batches(len(lengths), batch_size, s)


def padding_fraction(lengths: Sequence[int], batches: list[list[int]]) -> float:
    """Fraction of the tokens in padded batches that are padding."""
    real = sum(lengths[i] for b in batches for i in b)
    total = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1.0 - real / total if total else 0.0
