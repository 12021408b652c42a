"""The four answer letters as tokens, and the classifier head made of them.

LM scoring (:mod:`reclor_lab.results.baselines`) reads a causal LM's next-token logits of the four letter
tokens after the answer cue; the letter tokens are found through the tokenizer
(:func:`letter_token_ids`). The letter head (``head_init="letters"`` in the run config) starts
the classifier's 4-row ``score`` head as the LM head's rows of those tokens
(:func:`letter_head_weights`), so before training the classifier *is* the zero-shot scorer.
Model loading (:func:`reclor_lab.model.load_model`) applies it, so it sits below both: results
machinery (notebook 06's experiment), which the QLoRA core reaches through that one call.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from reclor_lab.config import OPTION_LETTERS, RunConfig
from reclor_lab.errors import BaselineError

#: The answer cue the tiny model was pre-trained with (``TINY_TEMPLATE`` ends with it); LM
#: scoring appends it to a template that does not end with it.
ANSWER_CUE = " Answer:"
#: The checkpoint tensor whose rows are the LM's next-token scores (Llama, Mistral, Qwen, …).
LM_HEAD_TENSOR = "lm_head.weight"


# --- letter tokens --------------------------------------------------------------------------------

def letter_token_ids(tokenizer, cue: str = ANSWER_CUE, letters: str = OPTION_LETTERS) -> list[int]:
    """The token id of each answer letter as it follows ``cue``, found through the tokenizer.

    Encodes ``cue`` and ``cue + " " + letter`` (no special tokens) and takes the one token the
    letter adds. A SentencePiece tokenizer gives "▁A", GPT-2's byte-level BPE "ĠA", a
    whitespace-splitting one "A": the ids come from the tokenizer, never from a table.
    Raises :class:`BaselineError` when a letter is not exactly one new token, or when two
    letters share one.

    >>> letter_token_ids(load_tokenizer("models/tiny-llama"))   # doctest: +SKIP
    [376, 394, 407, 408]
    """
    base = tokenizer(cue, add_special_tokens=False)["input_ids"]
    ids = []
    for letter in letters:
        full = tokenizer(f"{cue} {letter}", add_special_tokens=False)["input_ids"]
        extra = full[len(base):]
        if full[: len(base)] != base or len(extra) != 1:
            pieces = tokenizer.convert_ids_to_tokens(full)
            raise BaselineError(
                f"the tokenizer does not encode {cue + ' ' + letter!r} as {cue!r} plus one letter token "
                f"(it gives {pieces}); LM scoring and head_init='letters' need one token per letter")
        ids.append(extra[0])
    if len(set(ids)) != len(ids):
        raise BaselineError(f"two answer letters share a token id ({dict(zip(letters, ids))})")
    return ids


# --- the letter head --------------------------------------------------------------------------------

def letter_head_weights(model, cfg: RunConfig, tokenizer) -> torch.Tensor:
    """The LM head's rows of the four letter tokens, ``(4, hidden)``: the weights with which a
    ``score`` head computes exactly the zero-shot letter logits.

    A sequence classifier loaded from a causal-LM checkpoint drops ``lm_head.weight``, so the rows
    are read from the checkpoint file itself (only those four rows: a few KB even for Llama-2);
    with tied embeddings they are the input embedding's rows.
    """
    ids = letter_token_ids(tokenizer)
    if getattr(model.config, "tie_word_embeddings", False):
        return model.get_input_embeddings().weight[ids].detach().clone()
    return _checkpoint_rows(cfg.model_name_or_path, LM_HEAD_TENSOR, ids)


def _checkpoint_rows(name_or_path: str, tensor: str, rows: Sequence[int]) -> torch.Tensor:
    from safetensors import safe_open
    from transformers.utils import cached_file

    quiet = dict(_raise_exceptions_for_missing_entries=False, _raise_exceptions_for_connection_errors=False)
    index = cached_file(name_or_path, "model.safetensors.index.json", **quiet)
    if index is not None:
        shard = json.loads(Path(index).read_text()).get("weight_map", {}).get(tensor)
        file = cached_file(name_or_path, shard, **quiet) if shard else None
    else:
        file = cached_file(name_or_path, "model.safetensors", **quiet)
    if file is None:
        raise BaselineError(
            f"head_init='letters' reads {tensor!r} from the model's safetensors weights, and "
            f"{name_or_path!r} has none on disk holding it; use head_init='random' or a safetensors checkpoint")
    with safe_open(file, framework="pt") as f:
        if tensor not in f.keys():
            raise BaselineError(f"{file}: no tensor {tensor!r}; head_init='letters' needs the LM head's weights")
        piece = f.get_slice(tensor)
        return torch.cat([piece[i:i + 1] for i in rows]).float()


def init_letter_head(model, cfg: RunConfig, tokenizer) -> None:
    """Set the classifier's ``score`` weights to :func:`letter_head_weights` (in place)."""
    score = model.score
    weights = letter_head_weights(model, cfg, tokenizer)
    if tuple(weights.shape) != tuple(score.weight.shape):
        raise BaselineError(f"letter rows of shape {tuple(weights.shape)} do not fit the head "
                            f"{tuple(score.weight.shape)}")
    with torch.no_grad():
        score.weight.copy_(weights.to(score.weight.dtype))
        if getattr(score, "bias", None) is not None:
            score.bias.zero_()
