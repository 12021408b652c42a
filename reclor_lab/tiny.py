"""The kit's tiny offline Llama: built from scratch, saved like ``meta-llama/Llama-2-7b-hf``.

:func:`build_tiny_model` trains a small Llama-2-style tokenizer (BPE with byte fallback, ``<s>``
prepended, ``</s>`` and ``<unk>``, no pad token) on a pre-training corpus made by
:func:`reclor_lab.synth.pretraining_corpus`, creates a Llama-architecture causal LM of a few
hundred thousand parameters, pre-trains it briefly as a causal LM on the same corpus, and saves
everything as an ordinary Hugging Face directory (``config.json``, ``model.safetensors``,
``generation_config.json``, ``tokenizer.json``, ``tokenizer_config.json``). It then loads with the
same calls as Llama-2::

    AutoTokenizer.from_pretrained(path)
    AutoModelForSequenceClassification.from_pretrained(path, num_labels=4, quantization_config=...)

Nothing is downloaded. Same seed on the same machine gives the same files, bit for bit. Across
CPUs the tokenizer and config are identical, but the weights are not: 700 steps of fp32 AdamW
amplify the last-bit differences of each CPU's vectorised kernels (AVX2 vs AVX-512 builds
differed by ~0.3 % of each tensor's norm). What a rebuild reproduces on any CPU is the model's
quality, :func:`pretraining_quality`: in three builds on two instruction sets the mean next-token
loss agreed to 1e-4 and the answer-letter accuracy within one point.

The pre-training is short on purpose: enough that the model has read text in the task's layout
(so LoRA has something to adapt), not so much that fine-tuning has nothing left to do.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from pathlib import Path

from .config import TINY_MODEL_DIR
from .synth import PRETRAIN_SEED, pretraining_corpus

#: Architecture of the tiny model (all widths multiples of 64, as 4-bit blocks like).
TINY_ARCH = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=512,
)
#: Tokenizer vocabulary size, including 3 special tokens and 256 byte-fallback tokens.
VOCAB_SIZE = 2048
#: Causal-LM pre-training: corpus size, steps, batch, peak learning rate, sequence cap.
PRETRAIN = dict(n_texts=2000, steps=700, batch_size=16, lr=3e-3, max_len=256, answer_weight=20.0)

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
_BYTE_TOKENS = tuple(f"<0x{i:02X}>" for i in range(256))


def _train_tokenizer(texts: list[str], vocab_size: int):
    """A Llama-2-style BPE tokenizer (as a ``transformers.LlamaTokenizer``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaTokenizer

    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    # Split on spaces while training so that no merge crosses a word boundary (like Llama's
    # SentencePiece model); the saved tokenizer uses Llama's own non-splitting Metaspace.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    n_learned = vocab_size - len(SPECIAL_TOKENS) - len(_BYTE_TOKENS)
    trainer = trainers.BpeTrainer(vocab_size=n_learned, special_tokens=[], show_progress=False,
                                  min_frequency=2)
    tok.train_from_iterator(texts, trainer)
    learned = json.loads(tok.to_str())["model"]
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + _BYTE_TOKENS)}
    for t, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        if t not in vocab:
            vocab[t] = len(vocab)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    return LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False,
                          model_max_length=TINY_ARCH["max_position_embeddings"])


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_tiny_model(output_dir: Path = TINY_MODEL_DIR, seed: int = 0, verbose: bool = True,
                     steps: int = PRETRAIN["steps"]) -> Path:
    """Build, pre-train and save the tiny Llama and its tokenizer into ``output_dir``.

    Deterministic (same seed, same machine, same files) and offline; a few minutes on one core.
    ``steps`` shortens the pre-training (tests). An existing ``output_dir`` is replaced. Returns
    ``output_dir``.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # same numbers whatever the core count; faster on a busy 2-core box
    try:
        return _build(Path(output_dir), seed, verbose, steps)
    finally:
        torch.set_num_threads(threads)


def _build(output_dir: Path, seed: int, verbose: bool, steps: int) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    t0 = time.perf_counter()
    say = print if verbose else (lambda *a, **k: None)
    output_dir = Path(output_dir)

    texts = pretraining_corpus(PRETRAIN["n_texts"], seed=PRETRAIN_SEED + seed)
    tokenizer = _train_tokenizer(texts, VOCAB_SIZE)
    say(f"tokenizer: {len(tokenizer)} tokens, trained on {len(texts)} texts "
        f"({time.perf_counter() - t0:.1f} s)")

    _seed_everything(seed)
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

    # --- brief causal-LM pre-training ----------------------------------------------------
    ids = [tokenizer(t, truncation=True, max_length=PRETRAIN["max_len"])["input_ids"] for t in texts]
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=PRETRAIN["lr"], weight_decay=0.01)
    bs = PRETRAIN["batch_size"]
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))))
    model.train()
    order: list[int] = []
    for step in range(steps):
        if len(order) < bs:
            order += torch.randperm(len(ids), generator=g).tolist()
        batch = [ids[i] for i in order[:bs]]
        del order[:bs]
        width = max(map(len, batch))
        x = torch.full((bs, width), tokenizer.eos_token_id)
        mask = torch.zeros((bs, width), dtype=torch.long)
        for i, seq in enumerate(batch):
            x[i, : len(seq)] = torch.tensor(seq)
            mask[i, : len(seq)] = 1
        # next-token loss on every real token; the answer letter (each text's last token)
        # counts ANSWER_WEIGHT times, so the short run learns the task's layout *and* its point.
        logits = model(input_ids=x, attention_mask=mask).logits[:, :-1]
        target, tmask = x[:, 1:], mask[:, 1:].float()
        w = tmask.clone()
        lengths = mask.sum(1)
        w[torch.arange(bs), lengths - 2] = PRETRAIN["answer_weight"]
        per_tok = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1),
                                                    reduction="none").view_as(w)
        loss = (per_tok * w).sum() / w.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if verbose and (step % 50 == 0 or step == steps - 1):
            say(f"  pre-training step {step + 1:4d}/{steps}  loss {loss.item():.3f}")
    model.eval()

    # --- save like a hub checkpoint -------------------------------------------------------
    if output_dir.exists():
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    for f in output_dir.iterdir():  # safetensors writes 0600; make the files world-readable
        f.chmod(0o644)
    say(f"saved to {output_dir} ({time.perf_counter() - t0:.1f} s)")
    return output_dir


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
    (0.42, 400)
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
