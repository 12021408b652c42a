"""A ReClor file's checks, and its records fitted to ``max_len``: machinery of
:mod:`reclor_lab.data`, not QLoRA.

:func:`read_records` reads a file as a JSON list of records, :func:`check_records` checks every
record (its keys, its texts, its four options, its label, a unique ``id_string``). Bad input
raises one :class:`~reclor_lab.errors.DataError` that names the file, the record (index and
``id_string``) and what is wrong. Files are only read, never written. :func:`fit_passages`
shortens a too-long example's passage in its middle (or says why it cannot), and
:class:`TokenStats` reports the lengths before and after.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from reclor_lab.config import NUM_LABELS, OPTION_LETTERS
from reclor_lab.errors import DataError
from reclor_lab.runs.cache import encode_texts

REQUIRED_KEYS = ("context", "question", "answers", "id_string")
#: The longest text field a record may have, in characters. ReClor's passages run to a few
#: thousand; a far longer one is a wrong file, and tokenizing it would take gigabytes.
MAX_FIELD_CHARS = 100_000
#: ReClor's 17 question types: a record's ``question_type`` is an index 0-16
#: (:mod:`reclor_lab.results.qtypes` names them).
NUM_QUESTION_TYPES = 17


def _where(path: Path, index: int, record: Any) -> str:
    ident = record.get("id_string") if isinstance(record, dict) else None
    if isinstance(ident, str):
        return f"{path}: record {index} (id_string {ident!r})"
    return f"{path}: record {index}"


def _check_text(where: str, what: str, text: str) -> None:
    """A JSON escape such as ``"\\ud800"`` decodes to a lone surrogate: not text any tokenizer takes."""
    if len(text) > MAX_FIELD_CHARS:
        raise DataError(f"{where}: {what} is {len(text):,} characters long, more than the {MAX_FIELD_CHARS:,} a "
                        "record's field may have (ReClor's passages are a few thousand): check the file")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(f"{where}: {what} holds an invalid character {text[e.start]!r} at position "
                        f"{e.start} (a lone UTF-16 surrogate)") from None


def _check_record(path: Path, index: int, rec: Any, labeled: bool | None) -> None:
    if not isinstance(rec, dict):
        raise DataError(f"{_where(path, index, rec)}: expected a JSON object, got {type(rec).__name__}")
    where = _where(path, index, rec)
    for key in REQUIRED_KEYS:
        if key not in rec:
            raise DataError(f"{where}: missing key {key!r} (a record needs {', '.join(REQUIRED_KEYS)})")
    for key in ("context", "question", "id_string"):
        if not isinstance(rec[key], str):
            raise DataError(f"{where}: {key!r} must be a string, got {type(rec[key]).__name__}")
        if not rec[key].strip():
            raise DataError(f"{where}: {key!r} is empty")
        _check_text(where, key, rec[key])
    _check_answers(where, rec["answers"])
    _check_label(where, rec, labeled)


def _check_answers(where: str, answers: Any) -> None:
    if not isinstance(answers, list):
        raise DataError(f"{where}: 'answers' must be a list of {NUM_LABELS} strings, got {type(answers).__name__}")
    if len(answers) != NUM_LABELS:
        raise DataError(f"{where}: 'answers' must have exactly {NUM_LABELS} options, got {len(answers)}")
    for j, ans in enumerate(answers):
        if not isinstance(ans, str):
            raise DataError(f"{where}: option {OPTION_LETTERS[j]} must be a string, got {type(ans).__name__}")
        if not ans.strip():
            raise DataError(f"{where}: option {OPTION_LETTERS[j]} is empty")
        _check_text(where, f"option {OPTION_LETTERS[j]}", ans)


def _check_label(where: str, rec: dict, labeled: bool | None) -> None:
    if "label" in rec:
        label = rec["label"]
        if not isinstance(label, int) or isinstance(label, bool):
            raise DataError(f"{where}: 'label' must be an integer 0-{NUM_LABELS - 1}, got {label!r}")
        if not 0 <= label < NUM_LABELS:
            raise DataError(f"{where}: 'label' must be 0-{NUM_LABELS - 1}, got {label}")
    elif labeled:
        raise DataError(f"{where}: missing 'label' (this split must be labeled)")
    if "question_type" in rec and (not isinstance(rec["question_type"], int) or isinstance(rec["question_type"], bool)
                                   or not 0 <= rec["question_type"] < NUM_QUESTION_TYPES):
        raise DataError(f"{where}: 'question_type' must be an integer 0-{NUM_QUESTION_TYPES - 1}, "
                        f"got {str(rec['question_type'])[:40]}")


def read_records(path: Path) -> list:
    """The records of a ReClor file: a non-empty JSON list (not yet checked)."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except RecursionError:
        raise DataError(f"{path}: not a ReClor file (JSON nested too deeply to read)") from None
    except ValueError as e:  # e.g. an integer of more than 4,300 digits
        raise DataError(f"{path}: not a ReClor file ({e})") from None
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON list of records, got a JSON {type(records).__name__}")
    if not records:
        raise DataError(f"{path}: the file holds no records")
    return records


def check_records(path: Path, records: list, labeled: bool | None) -> None:
    """Check every record of ``path``; ``labeled`` as :func:`reclor_lab.data.read_reclor` takes it."""
    if labeled is None and isinstance(records[0], dict):
        labeled = "label" in records[0]
    seen: dict[str, int] = {}
    for i, rec in enumerate(records):
        _check_record(path, i, rec, labeled)
        if labeled is False and "label" in rec:
            raise DataError(f"{_where(path, i, rec)}: has a 'label' but earlier records have none")
        first = seen.setdefault(rec["id_string"], i)
        if first != i:
            raise DataError(f"{_where(path, i, rec)}: duplicate id_string (first used by record {first})")


# --- a record fitted to max_len --------------------------------------------------------------------

#: What stands where a passage was shortened to fit ``max_len`` (its start and end are kept).
CUT_MARK = " … "


@dataclass(frozen=True)
class TokenStats:
    """Token-length statistics of one split under one tokenizer and ``max_len``."""

    n: int
    mean: float
    p95: float
    max: int
    max_len: int
    truncated: int  # examples longer than max_len, whose passage was shortened to fit

    def line(self) -> str:
        return (f"tokens/example: mean {self.mean:.1f}, p95 {self.p95:.0f}, max {self.max}; "
                f"{self.truncated} of {self.n} passages shortened to fit max_len {self.max_len}")


def token_stats(full_lengths: Sequence[int], max_len: int) -> TokenStats:
    arr = np.asarray(full_lengths)
    return TokenStats(n=len(arr), mean=float(arr.mean()), p95=float(np.percentile(arr, 95)),
                      max=int(arr.max()), max_len=max_len, truncated=int((arr > max_len).sum()))


def _units(text: str, tokenizer) -> list[tuple[int, int]]:
    """Character spans of ``text`` to cut between: its tokens where the tokenizer gives offsets,
    else its words."""
    if getattr(tokenizer, "is_fast", False):
        spans = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        spans = [(a, b) for a, b in spans if b > a]
        if spans:
            return spans
    import re

    return [m.span() for m in re.finditer(r"\S+", text)]


def cut_passage(context: str, units: list[tuple[int, int]], drop: int) -> str:
    """``context`` without ``drop`` of its ``units`` (character spans) from the middle: its start
    and end kept, :data:`CUT_MARK` where the cut is.

    >>> cut_passage("a b c d e f", [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11)], 3)
    'a b … f'
    """
    keep = len(units) - drop
    head, tail = keep - keep // 2, keep // 2
    start = context[:units[head - 1][1]] if head else ""
    end = context[units[len(units) - tail][0]:] if tail else ""
    return (start.rstrip() + CUT_MARK + end.lstrip()).strip()


def fit_passages(records: list[dict], texts: list[str], ids: list[list[int]], tokenizer, max_len: int,
                 text_of: Callable[[dict], str], source: str | Path | None = None,
                 first_index: int = 0) -> tuple[list[str], list[list[int]]]:
    """Texts and ids where every example fits ``max_len``: a longer example's passage
    (``context``) loses tokens from its middle (:func:`cut_passage`); the question, the four
    options and whatever the template puts after them (the tiny preset's " Answer:") are never
    cut. ``text_of`` formats a record as the model reads it (:func:`reclor_lab.data.format_example`
    with the run's template). An example whose question and options alone do not fit raises one
    :class:`DataError` naming the record (``source``: the file, ``first_index``: the index of
    ``records[0]`` in it).

    Each shortened text is encoded again, so its ids are exactly those of the text the model
    reads; a cut that still overflows (a tokenizer merges differently at the cut) drops more.
    """
    texts, ids = list(texts), list(ids)
    todo = {i: None for i, x in enumerate(ids) if len(x) > max_len}
    if not todo:
        return texts, ids
    units = {i: _units(records[i]["context"], tokenizer) for i in todo}
    mark = len(encode_texts([CUT_MARK.strip()], tokenizer)[0])
    drop = {i: min(len(units[i]), len(ids[i]) - max_len + mark) for i in todo}
    while todo:
        order = list(todo)
        cut = [text_of({**records[i], "context": cut_passage(records[i]["context"], units[i], drop[i])})
               for i in order]
        for i, text, new in zip(order, cut, encode_texts(cut, tokenizer)):
            if len(new) <= max_len:
                texts[i], ids[i] = text, new
                del todo[i]
            elif drop[i] == len(units[i]):  # the whole passage cut, and still too long
                raise cannot_fit(source, first_index + i, records[i], len(new), max_len, tokenizer)
            else:
                drop[i] = min(len(units[i]), drop[i] + len(new) - max_len)
    return texts, ids


# --- a record too long for max_len -------------------------------------------------------------

#: A ``model_max_length`` above this is transformers' "no limit known" placeholder (Llama-2's hub
#: tokenizer says 1e30), not a model's context length.
_NO_KNOWN_LIMIT = 1_000_000


def cannot_fit(source: str | Path | None, index: int, record: dict, n: int, max_len: int, tokenizer) -> DataError:
    """The error of a record whose input is ``n`` tokens even with its whole passage cut (to
    :data:`CUT_MARK`), naming the record (``source``: its file) and the one thing that helps: only
    the passage is ever shortened, so a larger ``max_len`` (as far as the model reads) or leaving
    the record out."""
    where = _where(Path(source), index, record) if source else f"record {index} (id_string {record['id_string']!r})"
    what = (f"its question and options alone take {n} tokens (the passage cut down to {CUT_MARK.strip()!r}), "
            f"more than max_len {max_len}, and only a passage is ever shortened")
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and n > limit and limit < _NO_KNOWN_LIMIT:
        return DataError(f"{where}: {what}; this model reads at most {limit} tokens, so no max_len fits it: "
                         "leave the record out")
    return DataError(f"{where}: {what}; raise max_len to at least {n} for this run (`data check --max-len {n}`, "
                     f"`train --set max_len={n}`) or leave the record out")
