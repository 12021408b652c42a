"""The kit's tiny offline Llama: Llama-2's own tokenizer, a tiny Llama body, saved like
``meta-llama/Llama-2-7b-hf``.

**The tokenizer is Llama-2's.** :func:`llama2_tokenizer` builds it from the vocabulary and merges
that the npm package ``llama-tokenizer-js`` carries (MIT code; the vocabulary and merges are
Meta's Llama 2 tokenizer, under the Llama 2 Community License: ``models/tiny-llama/LICENSE`` and
``NOTICE``). The 32,000 entries keep Llama-2's ids (``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, the
byte tokens ``<0x00>``..``<0xFF>`` 3..258), ``<s>`` is prepended, nothing is appended, and
bytes outside the vocabulary fall back to byte tokens. ``reclor-lab tiny tokenizer`` regenerates
``tokenizer.json`` and ``tokenizer_config.json`` from the package (``npm pack``), so the committed
files can be checked by anyone; :func:`build_tiny_model` reuses them as they are.

The tokenizer.json is laid out like the hub's Llama-2 file (normalizer ``Prepend("▁")`` +
``Replace(" ", "▁")``, no pre-tokenizer, a BPE with byte fallback), and ``tokenizer_config.json``
names the class ``TokenizersBackend``, which transformers 5 loads from that file as it stands. So
the tiny tokenizer encodes like Llama-2's SentencePiece model (its legacy behaviour, what
llama-tokenizer-js reproduces) for every text, leading and repeated spaces included: the dummy
"▁" goes in front even of a text that starts with a space (``" Option A:"`` →
``[1, 29871, 10831, 319, 29901]``). transformers 5's ``LlamaTokenizer`` class would rebuild the
pipeline with a ``Metaspace`` pre-tokenizer that skips that "▁" (``[1, 10831, 319, 29901]``), and
it does so for ``meta-llama/Llama-2-7b-hf`` too; :func:`reclor_lab.model.load_tokenizer` puts such
a tokenizer back on SentencePiece's layout, so the tiny and the ``llama2-7b`` presets give the
same ids for the same text. None of the bundled texts starts with a space: their ids are the same
either way (measured on every record, option and pre-training text when this changed).

**The model.** :func:`build_tiny_model` creates a Llama-architecture causal LM (hidden size 64,
2 layers: about 0.1 M parameters in its body, 4.1 M in its two 32,000 × 64 tables), pre-trains it
briefly as a causal LM on a corpus made by :func:`reclor_lab.tools.synth.pretraining_corpus`, and saves
everything as an ordinary Hugging Face directory (``config.json``, ``model.safetensors``,
``generation_config.json``, ``tokenizer.json``, ``tokenizer_config.json``). It then loads with
the same calls as Llama-2::

    AutoTokenizer.from_pretrained(path)
    AutoModelForSequenceClassification.from_pretrained(path, num_labels=4, quantization_config=...)

**One row for the words pre-training never sees.** The corpus uses about 1,200 of the 32,000
ids. A full softmax over 32,000 outputs would cost 20x the old 2,048-token model's pre-training
(~8 s a step on a busy 2-core box instead of ~0.4 s). So the output rows of the ids the corpus
never contains are one shared row during pre-training: their logits are equal, and the softmax
counts that logit ``n_unseen`` times (``+ log n_unseen``). That is the exact full-vocabulary
cross-entropy of a model whose unseen rows are equal, and the saved LM head is that model (every
unseen row set to the shared one), so :func:`pretraining_quality`, scoring with the saved head
over all 32,000 ids, measures what was trained. Their input embeddings keep their random
initialisation, as they would under full training (a token never read gets no gradient).

Nothing is downloaded. Same seed on the same machine gives the same files, bit for bit. Across
CPUs the tokenizer and config are identical, but the weights are not: 700 steps of fp32 AdamW
amplify the last-bit differences of each CPU's vectorised kernels. What a rebuild reproduces on
any CPU is the model's quality, :func:`pretraining_quality`. Measured for this vocabulary: the
committed model (AMD EPYC, AVX-512 kernels) against a rebuild on the same machine forced onto
AVX2 kernels (``ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2``):
weights apart by at most 0.05 % of a tensor's norm, mean next-token loss 0.33930 vs 0.33929
(relative 3e-5, over ~85,000 tokens), answer accuracy 0.825 in both. The 2,048-token model
before it: ~0.3 % of the norm, loss within 1e-4, accuracy within one point, on two real CPU
classes. tests/test_tiny.py turns these into its tolerances.

The pre-training is short on purpose: enough that the model has read text in the task's layout
(so LoRA has something to adapt), not so much that fine-tuning has nothing left to do.
"""

from __future__ import annotations

import base64
import hashlib
import math
import random
import re
import shutil
import struct
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reclor_lab.config import TINY_MODEL_DIR
from reclor_lab.errors import ReclorLabError
from reclor_lab.tools.synth import PRETRAIN_SEED, pretraining_corpus

#: Architecture of the tiny model (all widths multiples of 64, as 4-bit blocks like).
TINY_ARCH = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=512,
)
#: Causal-LM pre-training: corpus size, steps, batch, peak learning rate, sequence cap (above the
#: longest pre-training text under Llama-2's tokenizer, 309 tokens: every text keeps its answer).
PRETRAIN = dict(n_texts=2000, steps=700, batch_size=16, lr=3e-3, max_len=320, answer_weight=20.0)

#: Where Llama-2's vocabulary and merges come from: the npm package, its exact tarball.
LLAMA_TOKENIZER_JS = "llama-tokenizer-js@1.2.2"
LLAMA_TOKENIZER_JS_SHA256 = "ee83014ac8b379b16cf8d81e99ffcdb23dfade8c0d2e751bd06e7dc0b8476e72"
LLAMA2_VOCAB_SIZE = 32000
LLAMA2_MERGES = 61249
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
_BYTE_TOKENS = tuple(f"<0x{i:02X}>" for i in range(256))
#: The files of the tokenizer (and of the license it comes under) that a build copies as they are.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
LICENSE_FILES = ("LICENSE", "NOTICE")


class TokenizerSourceError(ReclorLabError):
    """The npm package that carries Llama-2's vocabulary is missing or not the expected one."""


def fetch_llama_tokenizer_js(folder: Path) -> Path:
    """``npm pack`` :data:`LLAMA_TOKENIZER_JS` into ``folder`` (npm's cache first, then the
    registry) and check its SHA-256. Returns the tarball."""
    folder.mkdir(parents=True, exist_ok=True)
    for extra in (["--offline"], []):
        try:
            out = subprocess.run(["npm", "pack", LLAMA_TOKENIZER_JS, *extra], cwd=folder, capture_output=True,
                                 text=True, timeout=300)
        except FileNotFoundError:
            raise TokenizerSourceError(f"`npm` not found: install Node.js, or pass the tarball of "
                                       f"{LLAMA_TOKENIZER_JS} (from `npm pack {LLAMA_TOKENIZER_JS}`)") from None
        if out.returncode == 0:
            break
    else:
        raise TokenizerSourceError(f"`npm pack {LLAMA_TOKENIZER_JS}` failed: {out.stderr.strip()[-300:]}")
    return folder / out.stdout.strip().splitlines()[-1]


def read_llama_tokenizer_js(package: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """Llama-2's vocabulary (token strings by id) and merges (by rank) from ``llama-tokenizer.js``,
    given the package's tarball (checked against :data:`LLAMA_TOKENIZER_JS_SHA256`) or the file.

    The package stores the vocabulary as the tokens joined by newlines (no Llama-2 token holds
    a newline: that is the byte token ``<0x0A>``), base64-encoded, and each merge as the two
    ids it joins, little-endian uint16 pairs, base64-encoded.
    """
    package = Path(package)
    if package.suffix == ".tgz":
        digest = hashlib.sha256(package.read_bytes()).hexdigest()
        if digest != LLAMA_TOKENIZER_JS_SHA256:
            raise TokenizerSourceError(f"{package}: SHA-256 {digest}, not {LLAMA_TOKENIZER_JS}'s "
                                       f"{LLAMA_TOKENIZER_JS_SHA256}")
        with tarfile.open(package) as tar:
            source = tar.extractfile("package/llama-tokenizer.js").read().decode("utf-8")
    else:
        source = package.read_text(encoding="utf-8")
    found = {name: re.search(rf'const {name} = "([^"]+)"', source)
             for name in ("llama_vocab_base64", "llama_merges_binary")}
    if not all(found.values()):
        raise TokenizerSourceError(f"{package}: no llama_vocab_base64 / llama_merges_binary in it")
    vocab = base64.b64decode(found["llama_vocab_base64"].group(1)).decode("utf-8").split("\n")
    packed = base64.b64decode(found["llama_merges_binary"].group(1))
    ids = struct.unpack(f"<{len(packed) // 2}H", packed)
    merges = [(vocab[ids[i]], vocab[ids[i + 1]]) for i in range(0, len(ids), 2)]
    if (len(vocab), len(set(vocab)), len(merges)) != (LLAMA2_VOCAB_SIZE, LLAMA2_VOCAB_SIZE, LLAMA2_MERGES) \
            or tuple(vocab[:3]) != SPECIAL_TOKENS or tuple(vocab[3:259]) != _BYTE_TOKENS:
        raise TokenizerSourceError(f"{package}: not Llama-2's vocabulary ({len(vocab)} tokens, "
                                   f"{len(merges)} merges, first {vocab[:4]})")
    return vocab, merges


def llama2_tokenizer(package: Path):
    """Llama-2's tokenizer from the npm package (see :func:`read_llama_tokenizer_js`), laid out like
    the hub's ``tokenizer.json`` (SentencePiece's dummy prefix as a normalizer, no pre-tokenizer),
    as a ``transformers.TokenizersBackend``: the class that loads that file as it stands, so every
    text encodes as SentencePiece encodes it."""
    from tokenizers import normalizers
    from transformers import LlamaTokenizer, PreTrainedTokenizerFast

    vocab, merges = read_llama_tokenizer_js(package)
    llama = LlamaTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges, add_bos_token=True,
                           add_eos_token=False, legacy=False)
    backend = llama.backend_tokenizer  # its BPE (byte fallback), decoder and <s> post-processor
    # SentencePiece: "▁" in front of every text (even one that starts with a space), every space a "▁"
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.pre_tokenizer = None
    backend.model.unk_token = "<unk>"
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=TINY_ARCH["max_position_embeddings"],
                                   clean_up_tokenization_spaces=False)


def write_tokenizer(output_dir: Path, package: Path | None = None) -> Path:
    """Write Llama-2's ``tokenizer.json`` and ``tokenizer_config.json`` into ``output_dir`` from
    the npm package (a tarball or ``llama-tokenizer.js``; None: ``npm pack`` it). Other files in
    ``output_dir`` are left alone. Returns ``output_dir``."""
    output_dir = Path(output_dir)
    with tempfile.TemporaryDirectory() as tmp:
        if package is None:
            package = fetch_llama_tokenizer_js(Path(tmp))
        tok = llama2_tokenizer(package)
        saved = Path(tmp) / "saved"
        tok.save_pretrained(saved)
        output_dir.mkdir(parents=True, exist_ok=True)
        for name in TOKENIZER_FILES:
            shutil.copyfile(saved / name, output_dir / name)
            (output_dir / name).chmod(0o644)
    return output_dir


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_tiny_model(output_dir: Path = TINY_MODEL_DIR, seed: int = 0, verbose: bool = True,
                     steps: int = PRETRAIN["steps"], tokenizer_dir: Path = TINY_MODEL_DIR) -> Path:
    """Build, pre-train and save the tiny Llama into ``output_dir``, with the tokenizer (and its
    license files) of ``tokenizer_dir`` copied as they are (see :func:`write_tokenizer`).

    Deterministic (same seed, same machine, same files) and offline; a few minutes on one core.
    ``steps`` shortens the pre-training (tests). An existing ``output_dir`` is replaced (it may
    be ``tokenizer_dir`` itself). Returns ``output_dir``.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # same numbers whatever the core count; faster on a busy 2-core box
    try:
        return _build(Path(output_dir), seed, verbose, steps, Path(tokenizer_dir))
    finally:
        torch.set_num_threads(threads)


def _build(output_dir: Path, seed: int, verbose: bool, steps: int, tokenizer_dir: Path) -> Path:
    t0 = time.perf_counter()
    say = print if verbose else (lambda *a, **k: None)
    kept, tokenizer = _read_tokenizer_source(tokenizer_dir)  # read before output_dir (maybe the same) goes
    texts = pretraining_corpus(PRETRAIN["n_texts"], seed=PRETRAIN_SEED + seed)
    ids = [tokenizer(t, truncation=True, max_length=PRETRAIN["max_len"])["input_ids"] for t in texts]
    say(f"tokenizer: Llama-2's, {len(tokenizer):,} tokens; {len(texts)} pre-training texts, "
        f"{sum(map(len, ids)):,} tokens ({time.perf_counter() - t0:.1f} s)")
    _seed_everything(seed)
    model = _tiny_llama(tokenizer, say)
    rows = _OutputRows.of(model, ids, say)
    _pretrain(model, rows, ids, tokenizer.eos_token_id, seed, steps, say if verbose else None)
    _save(model, output_dir, kept)
    say(f"saved to {output_dir} ({time.perf_counter() - t0:.1f} s)")
    return output_dir


def _read_tokenizer_source(tokenizer_dir: Path):  # -> (file name → bytes, tokenizer)
    """The tokenizer's and license files' bytes (copied into the model as they are) and the tokenizer."""
    from transformers import AutoTokenizer

    missing = [n for n in TOKENIZER_FILES + LICENSE_FILES if not (tokenizer_dir / n).is_file()]
    if missing:
        raise TokenizerSourceError(f"{tokenizer_dir}: no {', '.join(missing)}; write the tokenizer with "
                                   f"`reclor-lab tiny tokenizer --output {tokenizer_dir}`")
    kept = {n: (tokenizer_dir / n).read_bytes() for n in TOKENIZER_FILES + LICENSE_FILES}
    return kept, AutoTokenizer.from_pretrained(tokenizer_dir)


def _tiny_llama(tokenizer, say):  # -> LlamaForCausalLM, freshly initialised from torch's RNG
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        **TINY_ARCH,
        hidden_act="silu",
        rms_norm_eps=1e-5,
        initializer_range=0.02,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=None,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
    )
    model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    say(f"model: Llama, {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
        f"{n_params / 1e6:.2f} M parameters")
    return model


@dataclass
class _OutputRows:
    """The output rows pre-training trains: one per id it predicts, one shared by the rest."""

    seen: Any        # the ids pre-training predicts, sorted
    unseen: Any      # a mask of the vocabulary's other ids
    head: Any        # the trained rows: one per seen id, then the shared one
    log_unseen: Any  # added to the logits: the shared row stands for n_unseen equal ones
    target_of: Any   # vocabulary id -> row of head

    @classmethod
    def of(cls, model, ids: list[list[int]], say) -> "_OutputRows":
        import torch

        vocab_size = model.config.vocab_size
        seen = torch.tensor(sorted({i for seq in ids for i in seq[1:]}))
        unseen = torch.ones(vocab_size, dtype=torch.bool)
        unseen[seen] = False
        n_unseen = int(unseen.sum())
        target_of = torch.full((vocab_size,), len(seen))  # vocabulary id -> row of `head`
        target_of[seen] = torch.arange(len(seen))
        full_head = model.lm_head.weight
        head = torch.nn.Parameter(torch.cat([full_head.detach()[seen],
                                             full_head.detach()[unseen].mean(0, keepdim=True)]))
        log_unseen = torch.zeros(len(seen) + 1)
        log_unseen[-1] = math.log(n_unseen)  # the shared logit stands for n_unseen equal ones
        say(f"  pre-training predicts {len(seen):,} ids; the other {n_unseen:,} share one output row")
        return cls(seen, unseen, head, log_unseen, target_of)

    def write_back(self, model) -> None:
        """The LM head that was trained: the seen rows, and the shared row everywhere else."""
        import torch

        with torch.no_grad():
            model.lm_head.weight[self.seen] = self.head[:-1]
            model.lm_head.weight[self.unseen] = self.head[-1]


def _padded(batch: list[list[int]], pad_id: int):  # -> (ids, attention mask), both (batch, longest)
    import torch

    width = max(map(len, batch))
    x = torch.full((len(batch), width), pad_id)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, seq in enumerate(batch):
        x[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
    return x, mask


def _pretrain(model, rows: _OutputRows, ids: list[list[int]], pad_id: int, seed: int, steps: int, say) -> None:
    """Brief causal-LM pre-training of ``model`` (``say``: None prints nothing)."""
    import torch

    params = [p for n, p in model.named_parameters() if n != "lm_head.weight"] + [rows.head]
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(params, lr=PRETRAIN["lr"], weight_decay=0.01)
    bs = PRETRAIN["batch_size"]
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))))
    model.train()
    order: list[int] = []
    for step in range(steps):
        if len(order) < bs:
            order += torch.randperm(len(ids), generator=g).tolist()
        x, mask = _padded([ids[i] for i in order[:bs]], pad_id)
        del order[:bs]
        loss = _pretraining_loss(model, rows, x, mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if say and (step % 50 == 0 or step == steps - 1):
            say(f"  pre-training step {step + 1:4d}/{steps}  loss {loss.item():.3f}")
    model.eval()
    rows.write_back(model)


def _pretraining_loss(model, rows: _OutputRows, x, mask):
    """Next-token loss on every real token; the answer letter (each text's last token) counts
    ANSWER_WEIGHT times, so the short run learns the task's layout *and* its point."""
    import torch

    bs = x.shape[0]
    hidden = model.model(input_ids=x, attention_mask=mask).last_hidden_state[:, :-1]
    logits = hidden @ rows.head.T + rows.log_unseen
    target, tmask = rows.target_of[x[:, 1:]], mask[:, 1:].float()
    w = tmask.clone()
    lengths = mask.sum(1)
    w[torch.arange(bs), lengths - 2] = PRETRAIN["answer_weight"]
    per_tok = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1),
                                                reduction="none").view_as(w)
    return (per_tok * w).sum() / w.sum()


def _save(model, output_dir: Path, kept: dict[str, bytes]) -> None:
    """Save like a hub checkpoint: the weights, the config, the kept tokenizer and license files."""
    if output_dir.exists():
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True)
    model.save_pretrained(output_dir)
    for name, data in kept.items():
        (output_dir / name).write_bytes(data)
    for f in output_dir.iterdir():  # safetensors writes 0600; make the files world-readable
        f.chmod(0o644)


#: Seed of the fresh pre-training-style texts :func:`pretraining_quality` scores (not the
#: build's own stream, ``PRETRAIN_SEED + seed``).
QUALITY_SEED = PRETRAIN_SEED + 1
QUALITY_TEXTS = 400


def pretraining_quality(model_dir: Path = TINY_MODEL_DIR, n_texts: int = QUALITY_TEXTS) -> dict[str, float]:
    """What pre-training gave the tiny model, on ``n_texts`` fresh texts in its pre-training layout:
    the mean next-token loss over every token, and how often its most likely next token after
    `` Answer:`` is the right letter (the text's last token).

    >>> q = pretraining_quality()                                   # doctest: +SKIP
    >>> round(q["loss"], 2), q["n"]                                  # doctest: +SKIP
    (0.34, 400)
    """
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    texts = pretraining_corpus(n_texts, seed=QUALITY_SEED)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    loss_sum, tokens, correct = 0.0, 0, 0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=PRETRAIN["max_len"])["input_ids"]
            logits, target = model(input_ids=ids).logits[0, :-1], ids[0, 1:]
            loss_sum += torch.nn.functional.cross_entropy(logits, target, reduction="sum").item()
            tokens += len(target)
            correct += int(logits[-1].argmax() == target[-1])
    return {"loss": loss_sum / tokens, "answer_accuracy": correct / len(texts), "n": len(texts)}
