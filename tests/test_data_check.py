"""``reclor-lab data check`` on an official-format file of real English: Llama-2's token counts by
default, the tokenizer it measured with named, and advice that helps when a record cannot fit."""

from __future__ import annotations

import json
from pathlib import Path

from reclor_lab.cli import main
from reclor_lab.config import TINY_MODEL_DIR

ENGLISH = Path(__file__).parent / "fixtures" / "english" / "val.json"  # written for the kit, not ReClor text
# Llama-2's token counts of its three records in the reference layout (with <s>), from
# llama-tokenizer-js 1.2.2's encoder (node), which its own suite checks against SentencePiece.
LLAMA2_LENGTHS = [150, 110, 131]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_default_counts_are_llama2s_and_the_tokenizer_is_named(capsys):
    code, out, err = run(capsys, "data", "check", str(ENGLISH))
    assert code == 0, err
    assert out.startswith(f"token counts: the tokenizer of {TINY_MODEL_DIR} "
                          "(TokenizersBackend, 32,000 tokens: Llama-2's")
    mean = sum(LLAMA2_LENGTHS) / len(LLAMA2_LENGTHS)
    assert f"tokens/example: mean {mean:.1f}, p95 148, max {max(LLAMA2_LENGTHS)}; 0 of 3 passages shortened" in out


def test_a_record_that_cannot_fit_gets_advice_that_works(capsys):
    code, out, err = run(capsys, "data", "check", str(ENGLISH), "--max-len", "60")
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    prefix = f"reclor-lab: error: {ENGLISH}: record 0 (id_string 'english_0'): its question and options alone take "
    assert err.startswith(prefix)
    need = int(err[len(prefix):].split()[0])
    assert need > 60 and f"raise max_len to at least {need} for this run (`data check --max-len {need}`" in err
    # the advice is enough: at that max_len every record fits, the long ones with a shortened passage
    code, out, err = run(capsys, "data", "check", str(ENGLISH), "--max-len", str(need))
    assert code == 0, err
    assert f"passages shortened to fit max_len {need}" in out and "0 of 3" not in out


def test_beyond_the_models_length_no_max_len_is_suggested(tmp_path, capsys):
    records = json.loads(ENGLISH.read_text())
    long_option = " ".join(["The committee reviewed every proposal twice before it voted on the budget."] * 45)
    records[1]["answers"][3] = long_option  # question and options now far beyond the tiny model's 512
    path = tmp_path / "val.json"
    path.write_text(json.dumps(records))
    code, out, err = run(capsys, "data", "check", str(path), "--max-len", "512")
    # (transformers also logs its own "longer than the specified maximum" warning on stderr)
    errors = [line for line in err.splitlines() if line.startswith("reclor-lab:")]
    assert code == 1 and len(errors) == 1
    err = errors[0]
    assert "record 1 (id_string 'english_1'): its question and options alone take" in err
    assert "this model reads at most 512 tokens, so no max_len fits it: leave the record out" in err
    assert "raise max_len" not in err
