"""The token cache: tokenized splits kept on disk, so a second run does not tokenize again; and
what a first run does instead, many texts encoded in one call (:func:`encode_texts`).

Tokenizing ReClor's three splits takes a second or two on a laptop (longer for Llama-2's
tokenizer on long contexts), and every notebook and every ``reclor-lab train`` does it again for
the same files. The cache keeps each tokenized split as an Arrow file under a key that is a hash
of everything that decides its contents:

- the records as the model will see them (``id_string``, the formatted text, the label),
  so any change to a file or to the template is a different key;
- the tokenizer's full definition (vocabulary, merges, normalizer, special tokens), without the
  truncation/padding settings, which the kit does not use;
- ``max_len`` and the cache's own format version.

A stale entry can therefore never be served: different inputs, different key. Entries are
written to a temporary folder and renamed into place, so an interrupted write leaves no half
entry; an entry that cannot be read is removed and rebuilt. The cache is only ever an
optimisation: when its folder cannot be written the kit warns once and goes on without it.

Integrity, precisely. When an entry is written, a SHA-256 of its key and of every column
training reads is stored *outside* the entry, in ``checksums/<key>`` beside ``tokenized/``;
loading recomputes it and serves the entry only on a match. That catches a damaged disk, a
truncated or half-copied entry, an entry moved under another key, and an entry rewritten in
place, checksum file inside it included (what an older kit version, another tool or a
careless edit would do). It does not defend against someone who rewrites both the entry and its
checksum under ``checksums/``: the cache folder is the user's own, with the same trust as the
data folder itself (which nothing signs either). Deleting the whole folder is always safe.

Where: ``$RECLOR_LAB_CACHE`` when set (``off`` turns the cache off), else
``$XDG_CACHE_HOME/reclor-lab`` or ``~/.cache/reclor-lab``. Deleting the folder is always safe.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

ENV_VAR = "RECLOR_LAB_CACHE"
#: Values of ``$RECLOR_LAB_CACHE`` that turn the cache off.
OFF_VALUES = ("off", "0", "false", "no", "none")
#: Bumped whenever the layout of a cached split changes, so old entries are not read.
FORMAT_VERSION = 4
SUBDIR = "tokenized"


def default_root() -> Path | None:
    """The cache folder from the environment, or None when ``$RECLOR_LAB_CACHE`` turns it off."""
    value = os.environ.get(ENV_VAR)
    if value is not None:
        if value.strip().lower() in OFF_VALUES or not value.strip():
            return None
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "reclor-lab"


def resolve(cache: bool | str | Path | None) -> Path | None:
    """The folder for tokenized splits: True → the default, a path → that path, False → none."""
    if cache is True:
        root = default_root()
    elif not cache:
        return None
    else:
        root = Path(cache).expanduser()
    return None if root is None else root / SUBDIR


def tokenizer_fingerprint(tokenizer) -> str | None:
    """A hash of a fast tokenizer's definition; None for other tokenizers (they are not cached,
    since nothing short of their files says what they do)."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is None:
        return None
    spec = json.loads(backend.to_str())
    spec.pop("truncation", None)  # runtime settings the kit switches off when it encodes
    spec.pop("padding", None)
    return hashlib.sha256(json.dumps(spec, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def key(table: dict[str, list], tokenizer, max_len: int) -> str | None:
    """The cache key of one split: records (as formatted), tokenizer, ``max_len``; None when the
    tokenizer cannot be fingerprinted."""
    fingerprint = tokenizer_fingerprint(tokenizer)
    if fingerprint is None:
        return None
    h = hashlib.sha256()
    h.update(json.dumps({"format": FORMAT_VERSION, "max_len": max_len, "tokenizer": fingerprint}).encode())
    h.update(json.dumps(table, ensure_ascii=False).encode())
    return h.hexdigest()[:40]


#: The columns a cached split must have; the checksums folder, beside the entries' folder.
COLUMNS = ("id_string", "input_ids", "attention_mask", "full_length", "length")
CHECKSUMS = "checksums"
#: A copy of the checksum inside the entry, for a person looking at it: never trusted when
#: loading, since a rewrite of the entry could fake it (kit versions before 4 trusted it).
CHECKSUM_FILE = "reclor-lab-checksum.txt"


def checksum(ds, entry: str = "") -> str:
    """A hash of the columns training reads (ids, labels, token ids, lengths), computed on the
    Arrow buffers (tens of milliseconds for all of ReClor); with ``entry``, bound to that key."""
    import numpy as np

    h = hashlib.sha256(entry.encode())
    for name in COLUMNS + ("labels",):
        if name not in ds.column_names:
            continue
        h.update(name.encode())
        col = ds.data.column(name).combine_chunks()
        if name == "id_string":
            h.update("\x00".join(col.to_pylist()).encode("utf-8", "surrogatepass"))
        elif hasattr(col, "flatten"):  # token lists: the values and each list's length
            h.update(np.asarray(col.flatten()).tobytes())
            h.update(np.asarray(col.value_lengths()).tobytes())
        else:
            h.update(np.asarray(col).tobytes())
    return h.hexdigest()


def _checksum_path(folder: Path, entry: str) -> Path:
    return folder.parent / CHECKSUMS / entry


def _problem(ds, folder: Path, entry: str, table: dict[str, list] | None) -> str | None:
    """What is wrong with a cached split, or None: every column there, and the checksum stored
    outside it when it was written (bound to its key, which hashes the records, tokenizer and
    max_len: a match means these are the tokens of exactly these inputs)."""
    wanted = COLUMNS + (("labels",) if table is not None and "labels" in table else ())
    missing = [c for c in wanted if c not in ds.column_names]
    if missing:
        return f"missing columns {missing}"
    try:
        stored = _checksum_path(folder, entry).read_text().strip()
    except OSError:
        return "no checksum"
    if stored != checksum(ds, entry):
        return "a checksum that does not match its contents"
    return None


def load(folder: Path, entry: str, table: dict[str, list] | None = None, max_len: int | None = None):
    """The cached split, in memory (no files stay open), or None when there is none or it fails
    its checksum (then it is removed and the split tokenized again). ``max_len`` is part of the
    key already; it is accepted for the callers that pass it."""
    path = folder / entry
    if not path.is_dir():
        return None
    from datasets import Dataset

    try:
        with _quiet():
            ds = Dataset.load_from_disk(str(path), keep_in_memory=True)
        problem = _problem(ds, folder, entry, table)
    except Exception as e:  # a damaged entry: ours to remove; the split is simply tokenized again
        problem = f"unreadable ({type(e).__name__})"
    if problem is not None:
        warnings.warn(f"token cache: entry {path} has {problem}; tokenizing again", stacklevel=3)
        shutil.rmtree(path, ignore_errors=True)
        return None
    return ds


_warned: set[str] = set()


@contextlib.contextmanager
def _quiet():
    """No datasets progress bar for the cache's own reads and writes (they take milliseconds)."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def store(folder: Path, entry: str, ds) -> Path | None:
    """Write a split under its key (temporary folder, then an atomic rename); returns the entry's
    folder, or None when the cache folder cannot be written (warned once per folder)."""
    path = folder / entry
    tmp = folder / f".tmp-{entry}-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with _quiet():
            ds.save_to_disk(str(tmp))
        sums = _checksum_path(folder, entry)
        sums.parent.mkdir(exist_ok=True)
        sums_tmp = sums.with_name(f".tmp-{entry}-{os.getpid()}")
        sums_tmp.write_text(checksum(ds, entry) + "\n")
        (tmp / CHECKSUM_FILE).write_text(sums_tmp.read_text())
        os.replace(sums_tmp, sums)  # written before the entry appears, so no entry is without one
        try:
            os.replace(tmp, path)
        except OSError:  # another process stored the same entry first: theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
        return path
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if str(folder) not in _warned:
            _warned.add(str(folder))
            warnings.warn(f"token cache: cannot write {folder} ({e.strerror or e}); tokenizing without a cache "
                          f"(set {ENV_VAR} to a writable folder, or to 'off')", stacklevel=3)
        return None


# --- what a miss costs: many texts encoded at once ----------------------------------------------

def encode_texts(texts: list[str], tokenizer) -> list[list[int]]:
    """Token ids (with the tokenizer's special tokens, no truncation) of many texts at once.

    A fast tokenizer's Rust backend encodes the whole list in one call, on every core, and skips
    the offsets and word ids that nobody here reads: about 1.6x faster than ``tokenizer(texts)``
    on ReClor-length texts. It runs on a copy of the backend with truncation and padding off
    (the copy costs milliseconds), whatever settings the tokenizer's last call left on the
    backend. The first text is also encoded by ``tokenizer(...)`` itself: a tokenizer whose
    Python side does more than its backend (a different special-token rule, say) goes the slow
    way for all texts. A tokenizer without a Rust backend goes through ``tokenizer(texts)``;
    the ids are the same either way (tested).
    """
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is None or not hasattr(backend, "encode_batch_fast"):
        return tokenizer(texts, truncation=False)["input_ids"]
    from tokenizers import Tokenizer

    clean = Tokenizer.from_str(backend.to_str())
    clean.no_truncation()
    clean.no_padding()
    ids = [e.ids for e in clean.encode_batch_fast(texts, add_special_tokens=True)]
    if ids[0] != tokenizer(texts[0], truncation=False)["input_ids"]:
        return tokenizer(texts, truncation=False)["input_ids"]
    return ids
