"""A ReClor file's checks: machinery of :mod:`reclor_lab.data`, not QLoRA.

:func:`read_records` reads a file as a JSON list of records, :func:`check_records` checks every
record (its keys, its texts, its four options, its label, a unique ``id_string``). Bad input
raises one :class:`~reclor_lab.errors.DataError` that names the file, the record (index and
``id_string``) and what is wrong. Files are only read, never written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reclor_lab.config import NUM_LABELS, OPTION_LETTERS
from reclor_lab.errors import DataError

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


# --- a record too long for max_len -------------------------------------------------------------

#: A ``model_max_length`` above this is transformers' "no limit known" placeholder (Llama-2's hub
#: tokenizer says 1e30), not a model's context length.
_NO_KNOWN_LIMIT = 1_000_000


def cannot_fit(source: str | Path | None, index: int, record: dict, n: int, max_len: int, tokenizer,
               cut_mark: str) -> DataError:
    """The error of a record whose input is ``n`` tokens even with its whole passage cut (to
    ``cut_mark``), naming the record (``source``: its file) and the one thing that helps: only the
    passage is ever shortened, so a larger ``max_len`` (as far as the model reads) or leaving the
    record out."""
    where = _where(Path(source), index, record) if source else f"record {index} (id_string {record['id_string']!r})"
    what = (f"its question and options alone take {n} tokens (the passage cut down to {cut_mark.strip()!r}), "
            f"more than max_len {max_len}, and only a passage is ever shortened")
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and n > limit and limit < _NO_KNOWN_LIMIT:
        return DataError(f"{where}: {what}; this model reads at most {limit} tokens, so no max_len fits it: "
                         "leave the record out")
    return DataError(f"{where}: {what}; raise max_len to at least {n} for this run (`data check --max-len {n}`, "
                     f"`train --set max_len={n}`) or leave the record out")
