"""The bundled tiny Llama: loads offline like Llama-2, quantizes to 4 bits, and is reproducible."""

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from reclor_lab.config import NUM_LABELS, REFERENCE_TEMPLATE, TINY_MODEL_DIR  # noqa: E402

FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def test_files_present():
    for name in FILES:
        assert (TINY_MODEL_DIR / name).is_file(), name


def test_tokenizer_like_llama2():
    tok = transformers.AutoTokenizer.from_pretrained(TINY_MODEL_DIR)
    assert tok.pad_token is None
    assert (tok.bos_token, tok.eos_token, tok.unk_token) == ("<s>", "</s>", "<unk>")
    ids = tok("Context: a short test. Question: why?")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] != tok.eos_token_id
    text = REFERENCE_TEMPLATE.format(context="x", question="y", a="1", b="2", c="3", d="4")
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text
    # byte fallback: characters never seen in training still round-trip
    assert tok.decode(tok("naïve café ✓")["input_ids"], skip_special_tokens=True) == "naïve café ✓"


def test_loads_as_4bit_sequence_classifier():
    import bitsandbytes as bnb

    q = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                        bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        TINY_MODEL_DIR, num_labels=NUM_LABELS, quantization_config=q)
    n4 = [n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(n4) >= 7 * model.config.num_hidden_layers
    tok = transformers.AutoTokenizer.from_pretrained(TINY_MODEL_DIR)
    tok.pad_token = tok.eos_token
    model.config.pad_token_id = tok.pad_token_id
    batch = tok(["one short text", "a somewhat longer second text here"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, NUM_LABELS) and torch.isfinite(logits).all()


@pytest.mark.slow
def test_rebuild_reproduces_committed(tmp_path):
    from safetensors.torch import load_file

    from reclor_lab.tiny import build_tiny_model

    out = build_tiny_model(tmp_path / "tiny", verbose=False)
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert json.loads((out / name).read_text()) == json.loads((TINY_MODEL_DIR / name).read_text()), name
    new, old = load_file(out / "model.safetensors"), load_file(TINY_MODEL_DIR / "model.safetensors")
    assert new.keys() == old.keys()
    for k in old:
        assert torch.allclose(new[k], old[k], atol=1e-4, rtol=1e-3), k
