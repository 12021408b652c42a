"""The kit's main job and what comes after it: train a run, reload it, evaluate, predict.

``train_run`` is what ``reclor-lab train`` does: print the config, set up, fit (manual loop or
the Trainer), then write ``metrics.json`` and the plots. ``load_run`` rebuilds the model of a
finished run from its directory, the way a student reloads the adapter later.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np

from reclor_lab.config import OPTION_LETTERS, RunConfig
from reclor_lab.data import class_weights, load_split, tokenize_records
from reclor_lab.metrics import format_accuracy
from reclor_lab.plots import save_run_plots
from reclor_lab.train import (
    HISTORY_FILE, History, RunDirError, _write_json, best_adapter_dir, evaluate, fit, read_state, setup,
)

METRICS_FILE = "metrics.json"
#: Per validation example of the best epoch: id, question type, label, prediction, probabilities.
VAL_PREDICTIONS_FILE = "val-predictions.json"


def summary_table(history: dict) -> str:
    """One row per evaluation: epoch, eval loss, accuracy and macro P/R/F1."""
    lines = ["epoch  eval_loss  accuracy  95 % interval   precision  recall  f1",
             "-----  ---------  --------  --------------  ---------  ------  -----"]
    for e in history["evals"]:
        ci = e.get("accuracy_ci95")
        interval = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "-"
        lines.append(f"{e['epoch']:>5}  {e['eval_loss']:>9.4f}  {e['accuracy']:>8.3f}  {interval:<14}  "
                     f"{e['precision_macro']:>9.3f}  {e['recall_macro']:>6.3f}  {e['f1_macro']:>5.3f}")
    return "\n".join(lines)


def finish_run(run_dir: Path, history: History, run=None) -> dict:
    """Write metrics.json (the best epoch's val metrics) and the plots; return the metrics.

    Given the ``run`` that trained (its model in memory), the best epoch's adapter is loaded into
    it and its val predictions analysed (:func:`reclor_lab.analysis.val_analysis`): accuracy by
    question type, position bias, calibration, the most confident wrong answers go into
    metrics.json, the per-example probabilities into ``val-predictions.json``.
    """
    state = read_state(run_dir)
    best = next(e for e in history.evals if e["epoch"] == state["best_epoch"])
    metrics = {"best_epoch": state["best_epoch"], "last_epoch": state["last_epoch"],
               "baseline_accuracy": history.evals[0]["accuracy"],
               "baseline_accuracy_ci95": history.evals[0].get("accuracy_ci95"), **best}
    if run is not None:
        metrics.update(_analyse_best_epoch(run, run_dir))
    _write_json(run_dir / METRICS_FILE, metrics)
    save_run_plots(history.to_dict(), best["confusion_matrix"], run_dir)
    return metrics


def _analyse_best_epoch(run, run_dir: Path) -> dict:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from reclor_lab.analysis import predict_proba, record_types, val_analysis

    set_peft_model_state_dict(run.model, load_file(best_adapter_dir(run_dir) / "adapter_model.safetensors"))
    records = load_split(run.cfg.data_dir, "val")[: run.cfg.eval_limit]
    probs = predict_proba(run.model, run.val_ds, run.tokenizer, run.cfg.eval_batch_size, run.device, run.dtype)
    rows = [{"id_string": r["id_string"], "question_type": t, "label": r["label"], "predicted": int(p.argmax()),
             "probabilities": [round(float(x), 6) for x in p]}
            for r, t, p in zip(records, record_types(records), probs)]
    _write_json(run_dir / VAL_PREDICTIONS_FILE, rows)
    return val_analysis(records, probs)


def train_run(cfg: RunConfig, resume: bool = False, use_trainer: bool = False,
              verbose: bool = True) -> dict:
    """The main job: fine-tune per ``cfg`` into ``cfg.output_dir``; returns the final metrics."""
    run_dir = Path(cfg.output_dir)
    if verbose:
        print(cfg.describe())
    if use_trainer:
        from reclor_lab.trainer import fit_with_trainer

        run = setup(cfg, verbose=verbose)
        history = fit_with_trainer(run, run_dir, resume=resume, verbose=verbose)
    else:
        from reclor_lab.train import check_run_dir

        check_run_dir(run_dir, resume)  # before minutes of loading, not after
        run = setup(cfg, verbose=verbose)
        history = fit(run, run_dir, resume=resume, verbose=verbose)
    metrics = finish_run(run_dir, history, run)
    if verbose:
        print(summary_table(history.to_dict()))
        print(f"best epoch {metrics['best_epoch']}: val accuracy "
              f"{format_accuracy(metrics['accuracy'], metrics.get('accuracy_ci95'))} (before training "
              f"{format_accuracy(metrics['baseline_accuracy'], metrics.get('baseline_accuracy_ci95'))}); "
              f"run directory {run_dir}")
    return metrics


def load_run(run_dir: str | Path, checkpoint: Literal["best", "last"] = "best"):
    """(cfg, tokenizer, model) of a finished run, with its adapter loaded for inference.

    The base model is loaded and prepared exactly as in training (4-bit, k-bit preparation),
    then ``PeftModel.from_pretrained`` reads the saved adapter and head.
    """
    from peft import PeftModel, prepare_model_for_kbit_training

    from reclor_lab.modeling import load_model, load_tokenizer

    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists() or not (run_dir / "state.json").exists():
        raise RunDirError(f"{run_dir}: not a run directory (needs config.json and state.json from `reclor-lab train`)")
    cfg = RunConfig.load(run_dir / "config.json")
    tokenizer = load_tokenizer(str(run_dir))
    base = load_model(cfg, tokenizer)
    if cfg.quantization != "none":
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    state = read_state(run_dir)
    folder = best_adapter_dir(run_dir) if checkpoint == "best" else (
        run_dir / "checkpoints" / f"epoch-{state['last_epoch']:03d}")
    model = PeftModel.from_pretrained(base, folder)
    model.eval()
    return cfg, tokenizer, model


def evaluate_run(run_dir: str | Path, split: Literal["train", "val"] = "val", verbose: bool = True) -> dict:
    """Reload the best adapter and evaluate it on a labeled split of the run's data folder."""
    from reclor_lab.modeling import pick_device, resolve_compute_dtype

    cfg, tokenizer, model = load_run(run_dir)
    records = load_split(cfg.data_dir, split)
    if split == "val":
        records = records[: cfg.eval_limit]
    elif split == "train":
        records = records[: cfg.train_limit]
    ds, _ = tokenize_records(records, tokenizer, cfg.max_len, cfg.template)
    weights = None
    if cfg.class_weighting:  # the same weighted loss as in training, so eval_loss compares
        weights = class_weights([r["label"] for r in load_split(cfg.data_dir, "train")[: cfg.train_limit]])
    result = evaluate(model, ds, tokenizer, cfg.eval_batch_size, pick_device(), resolve_compute_dtype(cfg),
                      weights)
    result.pop("predictions")
    if verbose:
        print(f"{split}: {result['n']} examples, eval loss {result['eval_loss']:.4f}, "
              f"accuracy {format_accuracy(result['accuracy'], result['accuracy_ci95'])}, "
              f"macro F1 {result['f1_macro']:.3f}")
    return result


def predict_run(run_dir: str | Path, split: Literal["train", "val", "test"] = "test",
                output: str | Path | None = None, verbose: bool = True) -> Path:
    """Predicted answer indices for every record of ``split``.

    Writes ``predictions-<split>.npy`` (an int array, one index 0-3 per record in file order:
    the form the ReClor leaderboard takes) and ``predictions-<split>.json`` (id_string → letter)
    into the run directory, or next to ``output`` when given. Returns the .npy path.
    """
    from reclor_lab.modeling import pick_device, resolve_compute_dtype

    run_dir = Path(run_dir)
    cfg, tokenizer, model = load_run(run_dir)
    records = load_split(cfg.data_dir, split)
    ds, _ = tokenize_records(records, tokenizer, cfg.max_len, cfg.template)
    result = evaluate(model, ds, tokenizer, cfg.eval_batch_size, pick_device(), resolve_compute_dtype(cfg),
                      desc="predict")
    preds = np.asarray(result["predictions"], dtype=np.int64)
    npy = Path(output) if output else run_dir / f"predictions-{split}.npy"
    if npy.suffix != ".npy":
        raise RunDirError(f"{npy}: the predictions file must end in .npy")
    npy.parent.mkdir(parents=True, exist_ok=True)
    np.save(npy, preds)
    readable = {r["id_string"]: OPTION_LETTERS[p] for r, p in zip(records, preds.tolist())}
    npy.with_suffix(".json").write_text(json.dumps(readable, indent=2) + "\n", encoding="utf-8")
    if verbose:
        counts = np.bincount(preds, minlength=len(OPTION_LETTERS))
        print(f"{len(preds)} predictions for {split} → {npy} (and {npy.with_suffix('.json').name}); "
              "per option: " + ", ".join(f"{l} {c}" for l, c in zip(OPTION_LETTERS, counts)))
    if split == "test":  # no labels: only distributions, per question type and EASY / HARD part
        from reclor_lab.analysis import format_test_summary, summarize_test_predictions

        summary = summarize_test_predictions(records, preds)
        _write_json(npy.with_name(npy.stem + "-summary.json"), summary)
        if verbose:
            print(format_test_summary(summary))
    return npy


def saved_metrics(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / METRICS_FILE).read_text())


def saved_history(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / HISTORY_FILE).read_text())
