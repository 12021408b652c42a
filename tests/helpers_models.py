"""A tiny random Llama (causal LM + tokenizer) written to disk, for the modeling and LoRA tests,
and the switch that makes bitsandbytes take either CPU class's 4-bit path.

Built in seconds, offline, with the same architecture as Llama-2 (7 projections per layer,
RMSNorm, no biases) so the 4-bit + LoRA code path is the reference's, only smaller.
"""

from __future__ import annotations

from pathlib import Path

import torch

#: Shapes: small enough to load in well under a second, big enough for 64-weight NF4 blocks.
TINY_LLAMA = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=128,
)
LLAMA_PROJECTIONS = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]
_CORPUS = [
    "Context: the committee argues that every proposal must be reviewed Question: which",
    "Option A: the argument assumes Option B: the conclusion follows Option C: it weakens",
    "Option D: none of the above strengthens the reasoning flaw in the passage",
]


def make_tiny_llama(path: Path, seed: int = 0) -> Path:
    """Save a random ``LlamaForCausalLM`` and a word-level fast tokenizer under ``path``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    config = LlamaConfig(**TINY_LLAMA, bos_token_id=1, eos_token_id=2, pad_token_id=None)
    LlamaForCausalLM(config).save_pretrained(path)

    backend = Tokenizer(models.WordLevel(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(vocab_size=TINY_LLAMA["vocab_size"], special_tokens=SPECIAL_TOKENS)
    backend.train_from_iterator(_CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    tokenizer.save_pretrained(path)
    return path


def force_cpu_class(monkeypatch, has_avx512_bf16: bool) -> None:
    """Make bitsandbytes believe this CPU has (or lacks) ``avx512_bf16``.

    Its 4-bit layers read the flag when they are built (``Linear4bit.support_avx512bf16_for_cpu``)
    and choose their CPU kernel from it, so a model loaded under this patch takes the path of the
    other CPU class. Only the native bf16 *kernel* itself cannot be forced where the CPU lacks it.
    """
    import bitsandbytes.functional as bnbf
    import bitsandbytes.nn.modules as bnb_modules

    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: has_avx512_bf16)
    monkeypatch.setattr(bnbf, "has_avx512bf16", lambda: has_avx512_bf16)
