"""Tokenization and the token cache: same ids as the tokenizer itself, hits only for identical
inputs, and a cache that can be damaged, unwritable or switched off without changing results."""

from __future__ import annotations

import dataclasses
import json
import warnings

import pytest

from reclor_lab.runs import cache as token_cache
from reclor_lab.config import BUNDLED_DATA_DIR, REFERENCE_TEMPLATE, TINY_TEMPLATE, get_preset
from reclor_lab.data import column, format_example, load_split, tokenize_records
from reclor_lab.runs.cache import encode_texts
from reclor_lab.model import load_tokenizer

RECORDS = load_split(BUNDLED_DATA_DIR, "val")[:40]


@pytest.fixture(scope="module")
def tok(tiny_tokenizer):
    return tiny_tokenizer


def entries(folder):
    sub = folder / token_cache.SUBDIR
    return sorted(p.name for p in sub.iterdir()) if sub.exists() else []


def test_encode_texts_gives_the_tokenizers_own_ids_whatever_the_backend_was_left_with(tok):
    texts = [format_example(r) for r in RECORDS]
    tok.backend_tokenizer.enable_truncation(8)  # left over from some earlier call: not to be used
    try:
        ids = encode_texts(texts, tok)
    finally:
        tok.backend_tokenizer.no_truncation()
    assert min(map(len, ids)) > 8
    assert ids == tok(texts, truncation=False)["input_ids"]
    assert encode_texts([], tok) == []


def test_a_tokenizer_that_does_more_than_its_backend_is_called_itself(tok):
    class ExtraToken(type(tok)):  # a Python-side rule the Rust backend does not know
        def __call__(self, texts, **kw):
            out = super().__call__(texts, **kw)
            ids = out["input_ids"]
            out["input_ids"] = [x + [7] for x in ids] if ids and isinstance(ids[0], list) else ids + [7]
            return out

    odd = load_tokenizer(get_preset("tiny").model_name_or_path)
    odd.__class__ = ExtraToken
    texts = [format_example(r) for r in RECORDS[:5]]
    assert encode_texts(texts, odd) == [x + [7] for x in tok(texts)["input_ids"]]


def test_tokenize_records_shortens_and_reports_it(tok, tmp_path):
    full = [len(x) for x in encode_texts([format_example(r) for r in RECORDS], tok)]
    max_len = sorted(full)[len(full) // 2]  # shortens about half of them
    ds, stats = tokenize_records(RECORDS, tok, max_len, cache=False)
    assert column(ds, "full_length") == full
    assert all(m == n if n <= max_len else m <= max_len for m, n in zip(column(ds, "length"), full))
    assert all(len(x) == n for x, n in zip(ds["input_ids"], column(ds, "length")))
    assert stats.truncated == sum(n > max_len for n in full) > 0
    assert column(ds, "labels") == [r["label"] for r in RECORDS]


def test_second_call_is_served_from_the_cache_with_identical_contents(tok, tmp_path, monkeypatch):
    first, stats1 = tokenize_records(RECORDS, tok, 192, cache=tmp_path)
    assert len(entries(tmp_path)) == 1

    def no_tokenizing(*a, **k):
        raise AssertionError("a cache hit must not tokenize")

    monkeypatch.setattr(token_cache, "encode_texts", no_tokenizing)
    second, stats2 = tokenize_records(RECORDS, tok, 192, cache=tmp_path)
    assert second.features == first.features and second.column_names == first.column_names
    assert second.to_dict() == first.to_dict()
    assert stats2 == stats1
    assert not second.cache_files  # loaded into memory: nothing keeps the entry's files open


@pytest.mark.parametrize("change", ["max_len", "template", "record", "tokenizer"])
def test_any_change_to_the_inputs_is_a_different_entry(tok, tmp_path, change):
    tokenize_records(RECORDS, tok, 192, cache=tmp_path)
    records, max_len, template, tokenizer = RECORDS, 192, REFERENCE_TEMPLATE, tok
    if change == "max_len":
        max_len = 208
    elif change == "template":
        template = TINY_TEMPLATE
    elif change == "record":
        records = [dict(RECORDS[0], context=RECORDS[0]["context"] + " Also true.")] + RECORDS[1:]
    else:
        tokenizer = load_tokenizer(get_preset("tiny").model_name_or_path)
        tokenizer.add_tokens(["zzzq"])  # a different vocabulary
    ds, _ = tokenize_records(records, tokenizer, max_len, template, cache=tmp_path)
    assert len(entries(tmp_path)) == 2
    fresh, _ = tokenize_records(records, tokenizer, max_len, template, cache=False)
    assert ds.to_dict() == fresh.to_dict()


def test_truncation_settings_of_the_tokenizer_do_not_change_the_key(tok, tmp_path):
    table = {"id_string": ["a"], "text": ["Context: x"]}
    k1 = token_cache.key(table, tok, 128)
    tok(["some text " * 50], truncation=True, max_length=8)  # transformers sets, then clears, truncation
    tok.backend_tokenizer.enable_truncation(16)
    try:
        assert token_cache.key(table, tok, 128) == k1
    finally:
        tok.backend_tokenizer.no_truncation()


def test_a_damaged_entry_is_rebuilt(tok, tmp_path):
    good, _ = tokenize_records(RECORDS, tok, 192, cache=tmp_path)
    (entry,) = entries(tmp_path)
    for f in (tmp_path / token_cache.SUBDIR / entry).glob("*.arrow"):
        f.write_bytes(b"not arrow")
    again, _ = tokenize_records(RECORDS, tok, 192, cache=tmp_path)
    assert again.to_dict() == good.to_dict()
    assert token_cache.load(tmp_path / token_cache.SUBDIR, entry).to_dict() == good.to_dict()


def test_an_unwritable_cache_folder_warns_once_and_changes_nothing(tok, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    token_cache._warned.clear()
    with pytest.warns(UserWarning, match="token cache: cannot write"):
        ds, _ = tokenize_records(RECORDS, tok, 192, cache=blocker / "cache")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokenize_records(RECORDS, tok, 192, cache=blocker / "cache")  # no second warning
    assert blocker.read_text() == "not a folder"
    assert ds.to_dict() == tokenize_records(RECORDS, tok, 192, cache=False)[0].to_dict()


def test_cache_false_writes_nothing(tok, tmp_path, monkeypatch):
    monkeypatch.setenv(token_cache.ENV_VAR, str(tmp_path))
    tokenize_records(RECORDS, tok, 192, cache=False)
    assert not any(tmp_path.iterdir())
    tokenize_records(RECORDS, tok, 192)  # cache=True: the folder from the environment
    assert len(entries(tmp_path)) == 1


def test_cache_location_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(token_cache.ENV_VAR, "off")
    assert token_cache.resolve(True) is None
    monkeypatch.setenv(token_cache.ENV_VAR, str(tmp_path / "c"))
    assert token_cache.resolve(True) == tmp_path / "c" / token_cache.SUBDIR
    monkeypatch.delenv(token_cache.ENV_VAR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert token_cache.resolve(True) == tmp_path / "xdg" / "reclor-lab" / token_cache.SUBDIR
    assert token_cache.resolve(False) is None
    assert token_cache.resolve(tmp_path / "d") == tmp_path / "d" / token_cache.SUBDIR


def test_tokenizers_without_a_fast_backend_are_not_cached(tok, tmp_path):
    @dataclasses.dataclass
    class SlowTokenizer:  # the interface tokenize_records uses, without a Rust backend
        is_fast: bool = False

        def __call__(self, texts, truncation=False):
            return {"input_ids": [[1] + [len(w) for w in t.split()] for t in texts]}

    ds, _ = tokenize_records(RECORDS, SlowTokenizer(), 160, cache=tmp_path)
    assert entries(tmp_path) == []
    assert ds[0]["input_ids"][:2] == [1, len(format_example(RECORDS[0]).split()[0])]
    assert json.dumps(column(ds, "length"))  # a complete dataset all the same


def test_cache_reads_and_writes_print_no_progress_bars_and_leave_the_setting_alone(tok, tmp_path, capsys):
    import datasets

    datasets.enable_progress_bars()
    tokenize_records(RECORDS, tok, 192, cache=tmp_path)  # a write
    tokenize_records(RECORDS, tok, 192, cache=tmp_path)  # a read
    assert "Saving the dataset" not in capsys.readouterr().err
    assert not datasets.are_progress_bars_disabled()


@pytest.mark.parametrize("poison", ["lengths", "labels", "tokens", "column"])
def test_a_poisoned_entry_under_the_right_key_is_not_served(tok, tmp_path, poison):
    """Defect 9: an entry whose contents were replaced (same key) is checked against the records
    and its stored checksum, dropped, and rebuilt; the statistics are the real ones."""
    good, stats = tokenize_records(RECORDS, tok, 192, cache=tmp_path)
    (entry,) = entries(tmp_path)
    path = tmp_path / token_cache.SUBDIR / entry
    checksum_file = (path / token_cache.CHECKSUM_FILE).read_text()
    bad = good.to_dict()
    if poison == "lengths":
        bad["full_length"] = [99_999] * len(RECORDS)
    elif poison == "labels":
        bad["labels"] = [(x + 1) % 4 for x in bad["labels"]]
    elif poison == "tokens":
        bad["input_ids"] = [[7] * len(x) for x in bad["input_ids"]]
    else:
        del bad["length"]
    import datasets
    import shutil

    shutil.rmtree(path)
    datasets.Dataset.from_dict(bad).save_to_disk(str(path))
    (path / token_cache.CHECKSUM_FILE).write_text(checksum_file)
    with pytest.warns(UserWarning, match="tokenizing again"):
        again, again_stats = tokenize_records(RECORDS, tok, 192, cache=tmp_path)
    assert again.to_dict() == good.to_dict() and again_stats == stats
