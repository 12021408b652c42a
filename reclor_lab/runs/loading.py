"""What loading a model needs around it: machinery of :mod:`reclor_lab.model`, not QLoRA.

One clear error for what cannot load (a ``--model`` that cannot be a model, a folder without
safetensors weights or tokenizer files, a tokenizer that cannot pad or of another model,
transformers' loading errors, a platform where bitsandbytes cannot quantize to 4-bit),
transformers' load report without the part every classifier load expects (the new head MISSING,
``lm_head`` UNEXPECTED), and transformers 5's Llama tokenizer put back on SentencePiece's ids.
:func:`reclor_lab.model.load_model` and :func:`reclor_lab.model.load_tokenizer` call these.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import pickle
import re
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError

from reclor_lab.errors import ModelError, ReclorLabError
from reclor_lab.shapes import NF4_BLOCKSIZE


class QuantizationUnavailable(ReclorLabError, RuntimeError):
    """bitsandbytes cannot quantize to 4-bit on this platform/device."""


@functools.lru_cache(maxsize=None)
def _check_4bit_support(device: str) -> None:
    """Quantize and dequantize one tiny tensor on ``device``; raise one clear error if that fails."""
    fix = 'set quantization="none" in the run config (plain weights, ~4x more memory)'
    try:
        import bitsandbytes.functional as bnbf
    except Exception as e:  # ImportError, or a broken native library
        raise QuantizationUnavailable(
            f"bitsandbytes cannot be imported on this platform ({type(e).__name__}: {e}); {fix}"
        ) from e
    try:
        probe = torch.linspace(-1, 1, NF4_BLOCKSIZE, device=device)
        packed, state = bnbf.quantize_4bit(probe, blocksize=NF4_BLOCKSIZE, quant_type="nf4")
        bnbf.dequantize_4bit(packed, state, quant_type="nf4")
    except Exception as e:
        raise QuantizationUnavailable(
            f"bitsandbytes cannot quantize to 4-bit on device {device!r} "
            f"({type(e).__name__}: {e}); {fix}"
        ) from e


def check_model_source(path: str) -> None:
    """Refuse, in one line, a ``--model`` that cannot be a model: a file, a directory without a
    ``config.json``, or a path that does not exist (not mistaken for a hub id)."""
    p = Path(path).expanduser()
    if p.is_file():
        raise ModelError(f"{path}: is a file; --model takes a model directory (with config.json) or a hub id")
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ModelError(f"{path}: not a model directory (no config.json); point --model at the folder "
                             "that save_pretrained wrote")
        return
    hub_id = re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", path) and not path.startswith((".", "~"))
    if not hub_id or len(Path(path).parts) > 2:
        raise ModelError(f"{path}: no such model directory")


def check_model_folder(path: str) -> None:
    """:func:`check_model_source`, and refuse a folder whose weights are pickle files only."""
    check_model_source(path)
    folder = Path(path).expanduser()
    if folder.is_dir() and not any(folder.glob("*.safetensors*")) and any(folder.glob("*.bin")):
        raise ModelError(f"{path}: holds only pickle weights (*.bin); the kit loads safetensors "
                         "only, since unpickling can run code: convert them (save_pretrained writes safetensors)")


# --- the tokenizer ----------------------------------------------------------------------------------

#: The files a model folder's tokenizer comes from (a fast tokenizer, SentencePiece, or BPE).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def check_tokenizer_folder(path: str) -> None:
    """:func:`check_model_source`, and refuse a folder without any tokenizer file: transformers
    would build a tokenizer of 3 special tokens that turns every text into nothing."""
    check_model_source(path)
    folder = Path(path).expanduser()
    if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelError(f"{path}: no tokenizer files ({' or '.join(TOKENIZER_FILES)}); copy the model's "
                         "tokenizer into the folder (tokenizer.save_pretrained) or point at the folder that has it")


def check_tokenizer(tokenizer, path: str) -> None:
    """Refuse a loaded tokenizer that turns text into no tokens, or has no eos to pad with."""
    if not tokenizer("The answer is A.", add_special_tokens=False)["input_ids"]:
        raise ModelError(f"{path}: the tokenizer ({len(tokenizer)} tokens) turns text into no tokens at all; its "
                         "files are damaged or incomplete: copy the model's tokenizer files into the folder")
    if tokenizer.eos_token is None:
        raise ModelError(
            f"tokenizer at {path!r} has no eos_token, so it cannot double as the pad token; "
            "set tokenizer.eos_token (and save it) before training"
        )


def check_vocabulary(tokenizer, model, where: str) -> None:
    """Refuse a tokenizer without a pad token (one not loaded by ``load_tokenizer``), or whose ids
    go past the model's embedding rows (a tokenizer of another model): the first such id would
    fail deep inside the embedding lookup."""
    if tokenizer.pad_token_id is None:
        raise ValueError("tokenizer has no pad token; load it with reclor_lab.model.load_tokenizer")
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ModelError(f"{where}: the tokenizer has {len(tokenizer):,} tokens but the model's embedding has "
                         f"{rows:,} rows: they are not a pair: use the tokenizer saved with the model")


def sentencepiece_spaces(tokenizer) -> bool:
    """Put a Llama tokenizer that transformers 5 rebuilt (``LlamaTokenizer``: a ``Metaspace``
    pre-tokenizer, no normalizer) back on SentencePiece's layout, the one the hub's Llama-2
    ``tokenizer.json`` states: ``Prepend("▁")`` + ``Replace(" ", "▁")``, no pre-tokenizer.

    The two differ only on a text that starts with whitespace: SentencePiece puts its "▁" in
    front anyway (``" Option A:"`` → ``[1, 29871, 10831, 319, 29901]``), ``Metaspace`` does not
    (``[1, 10831, 319, 29901]``). Llama-2 was trained on SentencePiece's ids, and the tiny model's
    tokenizer gives them, so ``llama2-7b`` must too. Any other tokenizer is left alone. Returns
    whether it changed the tokenizer.
    """
    from tokenizers import normalizers, pre_tokenizers

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if (type(tokenizer).__name__ != "LlamaTokenizer" or backend is None or backend.normalizer is not None
            or not isinstance(backend.pre_tokenizer, pre_tokenizers.Metaspace)
            or backend.pre_tokenizer.prepend_scheme == "never"):
        return False
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.pre_tokenizer = None
    return True


# --- transformers' errors and load report -----------------------------------------------------------

@contextlib.contextmanager
def _load_errors(path: str, what: str):
    """transformers' loading errors (missing files, offline hub, bad JSON) as one ModelError."""
    try:
        yield
    except ReclorLabError:
        raise
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        if Path(path).is_dir():  # a local folder: its files are at fault, not the network
            raise ModelError(f"{path}: cannot load the {what} ({first}); its files are damaged or not a "
                             "model the kit loads (config.json + safetensors weights)") from None
        raise ModelError(f"{path}: cannot load the {what} ({first}); the kit runs offline: use a local "
                         "directory or a model already in the Hugging Face cache") from None
    except (RuntimeError, RecursionError, pickle.UnpicklingError, SafetensorError) as e:
        # damaged or truncated weights, a config nested too deeply, impossible sizes (a negative
        # hidden_size), a pickle file that safe loading refuses
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ModelError(f"{path}: cannot load the {what} ({type(e).__name__}: {first}); its files are "
                         "damaged or not a model the kit loads (config.json + safetensors weights)") from None


#: What transformers' load report always lists when a classifier is loaded from a causal-LM
#: checkpoint: the new head ``score`` MISSING (initialised at random), ``lm_head`` UNEXPECTED
#: (a classifier has none), and the reverse for the causal LM of a classifier's checkpoint.
EXPECTED_LOAD_REPORT_KEYS = frozenset({"score.weight", "lm_head.weight"})


class _ExpectedLoadReport(logging.Filter):
    """Drops transformers' load report when it lists only :data:`EXPECTED_LOAD_REPORT_KEYS`;
    a report naming any other weight still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "LOAD REPORT" not in message:
            return True
        keys = {line.split("|")[0].strip() for line in message.splitlines() if "|" in line} - {"Key", ""}
        return not keys <= EXPECTED_LOAD_REPORT_KEYS


@contextlib.contextmanager
def _load_report(show: bool) -> Iterator[None]:
    """transformers' load report during ``from_pretrained``: as it is when ``show``, else
    without the expected-only one (:class:`_ExpectedLoadReport`)."""
    loggers = [logging.getLogger(name) for name in ("transformers.modeling_utils",
                                                     "transformers.utils.loading_report")]
    quiet = None if show else _ExpectedLoadReport()
    for lg in loggers if quiet else ():
        lg.addFilter(quiet)
    try:
        yield
    finally:
        for lg in loggers if quiet else ():
            lg.removeFilter(quiet)


# --- the metric scripts, and the Hugging Face cache evaluate copies them into ------------------------

#: The metric scripts shipped with the package, one folder per metric (``<name>/<name>.py``).
METRIC_MODULES_DIR = Path(__file__).resolve().parent.parent / "metric_modules"
METRIC_NAMES = ("accuracy", "multiclass")


@functools.lru_cache(maxsize=None)
def load_metric(name: str):  # -> evaluate.EvaluationModule
    """A shipped metric module, loaded once per process (loading takes seconds: it imports
    ``evaluate`` and ``datasets`` and copies the script into evaluate's cache).

    >>> load_metric("accuracy").compute(predictions=[1, 0], references=[1, 1])
    {'accuracy': 0.5}
    """
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown metric {name!r}; the kit ships {', '.join(METRIC_NAMES)}")
    import evaluate

    path = METRIC_MODULES_DIR / name
    if not (path / f"{name}.py").is_file():
        raise FileNotFoundError(
            f"metric script {path / (name + '.py')} is missing; reinstall reclor-lab "
            "(pip install -e .) so the package data is in place"
        )
    try:
        return evaluate.load(str(path))
    except OSError as e:  # a read-only or missing cache: evaluate copies the script there first
        raise hf_cache_error(e) from None


def _modules_cache() -> tuple[Path, str]:
    """Where evaluate keeps its module cache, and the variable that placed it (evaluate's rule)."""
    home = os.path.expanduser(os.environ.get("XDG_CACHE_HOME") or "~/.cache")
    hf_home = os.path.expanduser(os.environ.get("HF_HOME") or os.path.join(home, "huggingface"))
    folder = Path(os.environ.get("HF_MODULES_CACHE") or os.path.join(hf_home, "modules"))
    source = next((v for v in ("HF_MODULES_CACHE", "HF_HOME", "XDG_CACHE_HOME") if os.environ.get(v)), "HOME")
    return folder, source


def hf_cache_error(e: OSError) -> ReclorLabError:
    folder, source = _modules_cache()
    return ReclorLabError(
        f"{folder}: the Hugging Face cache cannot be written ({e.strerror or e}); evaluate copies the kit's "
        f"metric scripts there before loading them. Its place comes from ${source}: set HF_HOME to a writable "
        "folder (e.g. HF_HOME=/tmp/hf), then run the command again")


def check_hf_cache() -> None:
    """Before a command that computes metrics: refuse, in one line naming the variable to set, a
    Hugging Face module cache that cannot be created or written (a read-only $HOME, say)."""
    folder, _ = _modules_cache()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise hf_cache_error(e) from None
