"""The bundled tiny Llama: loads offline like Llama-2, quantizes to 4 bits, and is reproducible."""

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from reclor_lab.config import NUM_LABELS, REFERENCE_TEMPLATE, TINY_MODEL_DIR  # noqa: E402

FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
         "LICENSE", "NOTICE")


def test_files_present():
    for name in FILES:
        assert (TINY_MODEL_DIR / name).is_file(), name
    # the attribution Llama 2's license asks every copy of its materials to carry in a "Notice" file
    assert ("Llama 2 is licensed under the LLAMA 2 Community License, Copyright (c) Meta Platforms, Inc. "
            "All Rights Reserved.") in (TINY_MODEL_DIR / "NOTICE").read_text()
    assert (TINY_MODEL_DIR / "LICENSE").read_text().startswith("LLAMA 2 COMMUNITY LICENSE AGREEMENT")


def test_tokenizer_like_llama2():
    tok = transformers.AutoTokenizer.from_pretrained(TINY_MODEL_DIR)
    # loaded from tokenizer.json as it stands (transformers' LlamaTokenizer would rebuild it; see tiny.py)
    assert type(tok).__name__ == "TokenizersBackend" and len(tok) == 32000
    assert tok.pad_token is None
    assert [(t, tok.convert_tokens_to_ids(t)) for t in ("<unk>", "<s>", "</s>", "<0x00>", "<0xFF>")] == \
        [("<unk>", 0), ("<s>", 1), ("</s>", 2), ("<0x00>", 3), ("<0xFF>", 258)]
    assert (tok.bos_token, tok.eos_token, tok.unk_token) == ("<s>", "</s>", "<unk>")
    ids = tok("Context: a short test. Question: why?")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] != tok.eos_token_id
    text = REFERENCE_TEMPLATE.format(context="x", question="y", a="1", b="2", c="3", d="4")
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text
    # byte fallback: characters outside the vocabulary still round-trip
    assert tok.decode(tok("naïve café ✓ 🦙")["input_ids"], skip_special_tokens=True) == "naïve café ✓ 🦙"


# Llama-2's ids. From llama-tokenizer-js 1.2.2's own test suite (test-llama-tokenizer.js: the
# "grabbed", whitespace, merge-order, multi-byte and llama-paragraph cases), the two ids the
# model card's examples give ("Hello", "Context:"), and the rest encoded by that package's
# encoder (node), whose suite checks it against Llama-2's SentencePiece model. None is ReClor text.
LLAMA2_IDS = [
    ("Hello", [1, 15043]),
    ("Context:", [1, 15228, 29901]),
    ("grabbed", [1, 2646, 1327, 287]),
    ("\n", [1, 29871, 13]),
    ("\ttabs\t\t\t\tout here", [1, 29871, 12, 21175, 12, 12, 12, 12, 449, 1244]),
    ("ax\n####\nboo", [1, 4853, 13, 4136, 13, 833, 29877]),
    ("镇", [1, 29871, 30411]),
    ("🦙", [1, 29871, 243, 162, 169, 156]),
    ("🦙Ꙋ", [1, 29871, 243, 162, 169, 156, 237, 156, 141]),
    ("Ꙋ🦙", [1, 29871, 237, 156, 141, 243, 162, 169, 156]),
    ("Option A:", [1, 10831, 319, 29901]),
    ("Context: a. Option A: b", [1, 15228, 29901, 263, 29889, 10831, 319, 29901, 289]),
    ("antidisestablishmentarianism", [1, 3677, 333, 275, 342, 370, 1674, 358, 13956, 1608]),
    ("Pneumonoultramicroscopic words are rare.",
     [1, 349, 29765, 265, 5059, 509, 314, 2357, 21785, 293, 3838, 526, 10812, 29889]),
    ("In 1987, 3.14159 and 1,000,000 items cost $42.50 (about 12%).",
     [1, 512, 29871, 29896, 29929, 29947, 29955, 29892, 29871, 29941, 29889, 29896, 29946, 29896, 29945, 29929,
      322, 29871, 29896, 29892, 29900, 29900, 29900, 29892, 29900, 29900, 29900, 4452, 3438, 395, 29946, 29906,
      29889, 29945, 29900, 313, 12717, 29871, 29896, 29906, 28003]),
    ("naïve café, Zürich — “quoted” … ½ °C",
     [1, 1055, 30085, 345, 274, 28059, 29892, 24931, 813, 1346, 339, 5715, 30024, 16088, 29871, 30226, 6719, 29907]),
    ("Hello world!!! ??? ;-) [brackets] {braces} <tags> @user #hash",
     [1, 15043, 3186, 21004, 1577, 8773, 2056, 15805, 518, 2634, 9737, 29962, 426, 2634, 778, 29913, 529, 11338,
      29958, 732, 1792, 396, 8568]),
    ("a  b   c", [1, 263, 29871, 289, 259, 274]),
    ("line one\nline two\r\n\ttabbed", [1, 1196, 697, 13, 1220, 1023, 30004, 13, 12, 3891, 2580]),
    ("日本語のテキスト", [1, 29871, 30325, 30346, 30968, 30199, 30572, 30454, 30255, 30279]),
    ("👍🏽 done", [1, 29871, 243, 162, 148, 144, 243, 162, 146, 192, 2309]),
    ("The committee approved the proposal. Which one of the following, if true, most weakens the argument?",
     [1, 450, 21118, 23454, 278, 24963, 29889, 8449, 697, 310, 278, 1494, 29892, 565, 1565, 29892, 1556, 8062,
      575, 278, 2980, 29973]),
    ("Option B: Some farmers doubt it. Option C: None. Option D: All of them. Answer: C",
     [1, 10831, 350, 29901, 3834, 2215, 13269, 7404, 372, 29889, 10831, 315, 29901, 6213, 29889, 10831, 360,
      29901, 2178, 310, 963, 29889, 673, 29901, 315]),
    ("e-mail, co-operate, state-of-the-art; don't won't it's",
     [1, 321, 29899, 2549, 29892, 1302, 29899, 3372, 403, 29892, 2106, 29899, 974, 29899, 1552, 29899, 442,
      29936, 1016, 29915, 29873, 2113, 29915, 29873, 372, 29915, 29879]),
]

# llama-tokenizer-js's long case: digits, brackets, IPA, en dashes, byte fallback mid-text
LLAMA_PARAGRAPH = (
    "The llama (/ˈlɑːmə/; 🦙Spanish pronunciation: [ˈʎama]) (Lama glama) is a domesticated South American "
    "camelid, widely used as a meat and pack animal by Andean cultures since the Pre-Columbian era. Llamas are "
    "social animals and live with others as a herd. Their wool is soft and contains only a small amount of "
    "lanolin.[2] Llamas can learn simple tasks after a few repetitions. When using a pack, they can carry about "
    "25 to 30% of their body weight for 8 to 13 km (5–8 miles).[3] The name llama (in the past also spelled "
    "\"lama\" or \"glama\") was adopted by European settlers from native Peruvians.[4] The ancestors of llamas "
    "are thought to have originated from the Great Plains of North America about 40 million years ago, and "
    "subsequently migrated to South America about three million years ago during the Great American "
    "Interchange. By the end of the last ice age (10,000–12,000 years ago), camelids were extinct in North "
    "America.[3] As of 2007, there were over seven million llamas and alpacas in South America and over "
    "158,000 llamas and 100,000Ꙋ🦙 alpacas, descended from progenitors imported late in the 20th century, in "
    "the United States and Canada.[5] In Aymara mythology, llamas are important beings. The Heavenly Llama is "
    "said to drink water from the ocean and urinates as it rains.[6] According to Aymara eschatology, llamas "
    "will return to the water springs and lagoons where they come from at the end of time.[6]"
)
LLAMA_PARAGRAPH_IDS = [
    1, 450, 11148, 3304, 20374, 30176, 29880, 30426, 30215, 29885, 30184, 29914, 29936, 29871, 243, 162, 169,
    156, 15495, 728, 11504, 11173, 362, 29901, 518, 30176, 31743, 3304, 2314, 313, 29931, 3304, 3144, 3304,
    29897, 338, 263, 21849, 630, 4275, 3082, 3949, 295, 333, 29892, 17644, 1304, 408, 263, 27654, 322, 4870,
    13019, 491, 1126, 29872, 273, 4185, 1973, 1951, 278, 4721, 29899, 1625, 3774, 713, 3152, 29889, 365,
    5288, 294, 526, 5264, 15006, 322, 5735, 411, 4045, 408, 263, 902, 29881, 29889, 11275, 281, 1507, 338,
    4964, 322, 3743, 871, 263, 2319, 5253, 310, 10906, 22878, 7226, 29906, 29962, 365, 5288, 294, 508, 5110,
    2560, 9595, 1156, 263, 2846, 21159, 2187, 29889, 1932, 773, 263, 4870, 29892, 896, 508, 8677, 1048, 29871,
    29906, 29945, 304, 29871, 29941, 29900, 29995, 310, 1009, 3573, 7688, 363, 29871, 29947, 304, 29871, 29896,
    29941, 2383, 313, 29945, 29994, 29947, 7800, 467, 29961, 29941, 29962, 450, 1024, 11148, 3304, 313, 262,
    278, 4940, 884, 805, 14356, 376, 29880, 3304, 29908, 470, 376, 3820, 3304, 1159, 471, 16356, 491, 7824,
    3604, 9306, 515, 7531, 25493, 1403, 550, 7226, 29946, 29962, 450, 19525, 943, 310, 11829, 294, 526, 2714,
    304, 505, 3978, 630, 515, 278, 7027, 13494, 1144, 310, 4644, 6813, 1048, 29871, 29946, 29900, 7284, 2440,
    8020, 29892, 322, 17602, 9725, 630, 304, 4275, 6813, 1048, 2211, 7284, 2440, 8020, 2645, 278, 7027, 3082,
    4124, 3167, 29889, 2648, 278, 1095, 310, 278, 1833, 14890, 5046, 313, 29896, 29900, 29892, 29900, 29900,
    29900, 29994, 29896, 29906, 29892, 29900, 29900, 29900, 2440, 8020, 511, 3949, 295, 4841, 892, 1294, 5562,
    297, 4644, 6813, 7226, 29941, 29962, 1094, 310, 29871, 29906, 29900, 29900, 29955, 29892, 727, 892, 975,
    9881, 7284, 11829, 294, 322, 394, 29886, 562, 294, 297, 4275, 6813, 322, 975, 29871, 29896, 29945, 29947,
    29892, 29900, 29900, 29900, 11829, 294, 322, 29871, 29896, 29900, 29900, 29892, 29900, 29900, 29900, 237,
    156, 141, 243, 162, 169, 156, 394, 29886, 562, 294, 29892, 5153, 2760, 515, 410, 1885, 17259, 19673, 5683,
    297, 278, 29871, 29906, 29900, 386, 6462, 29892, 297, 278, 3303, 3900, 322, 7400, 7226, 29945, 29962, 512,
    319, 962, 2518, 22082, 3002, 29892, 11829, 294, 526, 4100, 367, 886, 29889, 450, 22977, 368, 365, 29880,
    3304, 338, 1497, 304, 13748, 4094, 515, 278, 23474, 322, 5065, 262, 1078, 408, 372, 1153, 1144, 7226,
    29953, 29962, 7579, 304, 319, 962, 2518, 831, 13496, 3002, 29892, 11829, 294, 674, 736, 304, 278, 4094,
    7689, 886, 322, 301, 4425, 787, 988, 896, 2041, 515, 472, 278, 1095, 310, 931, 7226, 29953, 29962,
]

# Spaces where Llama-2's SentencePiece differs from a Metaspace pre-tokenizer (transformers 5's
# LlamaTokenizer): SentencePiece puts its "▁" in front of every text, even one that starts with a
# space, and turns every space into "▁". Ids encoded by llama-tokenizer-js 1.2.2 (node), whose
# suite checks it against Llama-2's SentencePiece model; test_spaces_agree_with_llama_tokenizer_js
# encodes them again where node and the package are at hand. The last column: what transformers
# 5's LlamaTokenizer gives (None: the same ids), so the cases pin what changed.
SENTENCEPIECE_SPACES = [  # text, Llama-2's ids, LlamaTokenizer's where they differ
    (" Option A:", [1, 29871, 10831, 319, 29901], [1, 10831, 319, 29901]),
    ("  two  spaces", [1, 259, 1023, 29871, 8162], [1, 29871, 1023, 29871, 8162]),
    (" grabbed", [1, 29871, 2646, 1327, 287], [1, 2646, 1327, 287]),
    ("           grabbed", [1, 9651, 2646, 1327, 287], [1, 965, 2646, 1327, 287]),
    ("   lead", [1, 1678, 3275], [1, 259, 3275]),
    (" \n", [1, 259, 13], [1, 29871, 13]),
    (" ", [1, 259], [1, 29871]),
    ("  ", [1, 1678], [1, 259]),
    (" Answer: A", [1, 29871, 673, 29901, 319], [1, 673, 29901, 319]),
    ("\t tab", [1, 29871, 12, 4434], None),
    ("Hi .", [1, 6324, 869], None),
    ("a ,b", [1, 263, 1919, 29890], None),
    ("wait , what ?", [1, 4480, 1919, 825, 1577], None),
    ("x\n  y", [1, 921, 13, 29871, 343], None),
    ("\n  indented", [1, 29871, 13, 29871, 1399, 14927], None),
    ("line\n\n   three", [1, 1196, 13, 13, 259, 2211], None),
    ("end ", [1, 1095, 29871], None),
    ("end  ", [1, 1095, 259], None),
    # llama-tokenizer-js returns [] for "" (a special case in its encode()); SentencePiece encodes
    # nothing, and the tokenizer adds <s> as for any text, as Llama-2's tokenizer.json does
    ("", [1], None),
]


@pytest.fixture(scope="module")
def committed_tokenizer():
    return transformers.AutoTokenizer.from_pretrained(TINY_MODEL_DIR)


@pytest.mark.parametrize("text, ids", LLAMA2_IDS + [(LLAMA_PARAGRAPH, LLAMA_PARAGRAPH_IDS)],
                         ids=lambda x: repr(x)[:24] if isinstance(x, str) else "")
def test_encodes_like_llama2(committed_tokenizer, text, ids):
    from tokenizers import Tokenizer

    assert committed_tokenizer(text)["input_ids"] == ids
    assert committed_tokenizer.decode(ids, skip_special_tokens=True) == text
    assert Tokenizer.from_file(str(TINY_MODEL_DIR / "tokenizer.json")).encode(text).ids == ids


@pytest.mark.parametrize("text, ids, _", SENTENCEPIECE_SPACES, ids=repr)
def test_spaces_encode_like_sentencepiece(committed_tokenizer, text, ids, _):
    from tokenizers import Tokenizer

    assert committed_tokenizer(text)["input_ids"] == ids
    assert committed_tokenizer.decode(ids, skip_special_tokens=True) == text
    assert Tokenizer.from_file(str(TINY_MODEL_DIR / "tokenizer.json")).encode(text).ids == ids
    # inside a text as after <s>: the same ids follow "Context: x"
    inside = committed_tokenizer("Context: x" + text)["input_ids"]
    assert inside == Tokenizer.from_file(str(TINY_MODEL_DIR / "tokenizer.json")).encode("Context: x" + text).ids


@pytest.fixture(scope="module")
def llama_tokenizer_class_dir(tmp_path_factory):
    """The tiny tokenizer's files under transformers' ``LlamaTokenizer`` class, as the hub's
    ``meta-llama/Llama-2-7b-hf`` names it: transformers 5 rebuilds it with a Metaspace pre-tokenizer."""
    import shutil

    d = tmp_path_factory.mktemp("llama-class")
    for name in ("config.json", "tokenizer.json"):
        shutil.copyfile(TINY_MODEL_DIR / name, d / name)
    config = json.loads((TINY_MODEL_DIR / "tokenizer_config.json").read_text())
    (d / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "LlamaTokenizer"}))
    return d


@pytest.mark.parametrize("text, ids, metaspace_ids", SENTENCEPIECE_SPACES, ids=repr)
def test_load_tokenizer_gives_sentencepiece_ids_for_a_rebuilt_llama_tokenizer(llama_tokenizer_class_dir, text, ids,
                                                                             metaspace_ids):
    """The ``llama2-7b`` preset's tokenizer (class ``LlamaTokenizer``) through the kit's
    ``load_tokenizer`` gives the tiny tokenizer's ids; transformers alone gives the Metaspace ids."""
    from reclor_lab.model import load_tokenizer

    rebuilt = transformers.AutoTokenizer.from_pretrained(llama_tokenizer_class_dir)
    assert type(rebuilt).__name__ == "LlamaTokenizer"
    assert rebuilt(text)["input_ids"] == (metaspace_ids or ids)
    tok = load_tokenizer(str(llama_tokenizer_class_dir))
    assert tok(text)["input_ids"] == ids
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_spaces_agree_with_llama_tokenizer_js(tmp_path):
    """The pinned ids, encoded again by llama-tokenizer-js itself under node (skipped where node
    or the package is not at hand)."""
    import shutil
    import subprocess
    import tarfile

    from reclor_lab.tools.tiny import TokenizerSourceError, fetch_llama_tokenizer_js

    if shutil.which("node") is None:
        pytest.skip("node not installed")
    try:
        package = fetch_llama_tokenizer_js(tmp_path / "npm")
    except TokenizerSourceError as e:
        pytest.skip(f"llama-tokenizer-js not available here: {e}")
    with tarfile.open(package) as tar:
        tar.extract("package/llama-tokenizer.js", tmp_path, filter="data")
    script = tmp_path / "encode.mjs"
    script.write_text("import t from './package/llama-tokenizer.js';\n"
                      "console.log(JSON.stringify(JSON.parse(process.argv[2]).map(x => t.encode(x))));\n")
    texts = [text for text, _, _ in SENTENCEPIECE_SPACES if text]
    out = subprocess.run(["node", str(script), json.dumps(texts)], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [ids for text, ids, _ in SENTENCEPIECE_SPACES if text]


def test_the_tokenizer_regenerates_from_the_npm_package(tmp_path):
    """``reclor-lab tiny tokenizer`` writes the committed files again, byte for byte, from
    llama-tokenizer-js (npm's cache or the registry; skipped where neither is reachable)."""
    from reclor_lab.tools.tiny import TOKENIZER_FILES, TokenizerSourceError, fetch_llama_tokenizer_js, write_tokenizer

    try:
        package = fetch_llama_tokenizer_js(tmp_path / "npm")
    except TokenizerSourceError as e:
        pytest.skip(f"llama-tokenizer-js not available here (no npm, or not in npm's cache and no registry): {e}")
    write_tokenizer(tmp_path / "tok", package)
    for name in TOKENIZER_FILES:
        assert (tmp_path / "tok" / name).read_bytes() == (TINY_MODEL_DIR / name).read_bytes(), name


def test_a_wrong_package_is_refused(tmp_path):
    from reclor_lab.tools.tiny import TokenizerSourceError, read_llama_tokenizer_js

    fake = tmp_path / "llama-tokenizer-js-1.2.2.tgz"
    fake.write_bytes(b"not the package")
    with pytest.raises(TokenizerSourceError, match="SHA-256"):
        read_llama_tokenizer_js(fake)
    js = tmp_path / "llama-tokenizer.js"
    js.write_text('const llama_vocab_base64 = "PHVuaz4="\nconst llama_merges_binary = "AAAAAA=="\n')
    with pytest.raises(TokenizerSourceError, match="not Llama-2's vocabulary"):
        read_llama_tokenizer_js(js)


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


def _same_files(a, b):
    from safetensors.torch import load_file

    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert json.loads((a / name).read_text()) == json.loads((b / name).read_text()), name
    for name in ("LICENSE", "NOTICE"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    new, old = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert new.keys() == old.keys()
    return new, old


def test_build_is_bit_for_bit_deterministic_on_one_machine(tmp_path):
    """Same seed, same machine, same files: a shortened build twice (the full one is below)."""
    from reclor_lab.tools.tiny import build_tiny_model

    a = build_tiny_model(tmp_path / "a", verbose=False, steps=15)
    b = build_tiny_model(tmp_path / "b", verbose=False, steps=15)
    new, old = _same_files(a, b)
    for k in old:
        assert torch.equal(new[k], old[k]), k


@pytest.mark.slow
def test_rebuild_reproduces_the_committed_model(tmp_path):
    """Across CPUs a rebuild reproduces the tokenizer, its license files and the config exactly
    and the model's quality, not its last bits (see reclor_lab/tools/tiny.py): fp32 AdamW over 700
    steps amplifies each instruction set's rounding, so the committed weights (built on an AMD
    EPYC) and a rebuild elsewhere differ in the last bits (0.05 % of a tensor's norm between
    AVX-512 and AVX2 kernels).

    Stated tolerances. The mean next-token loss averages ~85,000 tokens (Llama-2's tokenizer;
    ~30,000 under the earlier 2,048-token one); builds on AVX-512 and AVX2 kernels agreed to
    3e-5 relative (the earlier model: 1e-4 on two CPU classes), so 1 % is a wide margin that a
    broken build (a changed corpus, schedule, tokenizer or architecture) still misses by far.
    The answer accuracy is a proportion over 400 texts: at the committed 0.825 its standard
    error is 1.9 points (2.5 at the earlier 0.5-0.6); a rebuild must come within 5 points,
    2.6 standard errors, where the two builds measured agreed exactly.
    """
    from reclor_lab.tools.tiny import build_tiny_model, pretraining_quality

    out = build_tiny_model(tmp_path / "tiny", verbose=False)
    new, old = _same_files(out, TINY_MODEL_DIR)
    assert all(new[k].shape == old[k].shape for k in old)
    rebuilt, committed = pretraining_quality(out), pretraining_quality(TINY_MODEL_DIR)
    assert rebuilt["loss"] == pytest.approx(committed["loss"], rel=0.01), (rebuilt, committed)
    assert abs(rebuilt["answer_accuracy"] - committed["answer_accuracy"]) <= 0.05, (rebuilt, committed)
    assert committed["answer_accuracy"] > 0.6  # far above chance (0.25): the build taught the task layout


def test_tiny_tokenizer_command(tmp_path, capsys):
    """``reclor-lab tiny tokenizer``: a missing tarball is one clear line; a given one writes
    the two tokenizer files and leaves the rest of the folder alone."""
    from reclor_lab.cli import main

    (tmp_path / "keep.txt").write_text("mine")
    assert main(["tiny", "tokenizer", "--output", str(tmp_path), "--package", str(tmp_path / "none.tgz")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("reclor-lab: error: --package") and "npm pack llama-tokenizer-js@1.2.2" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
