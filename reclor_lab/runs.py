"""The kit's main job and what comes after it: train a run, reload it, evaluate, predict.

``train_run`` is what ``reclor-lab train`` does: print the config, set up, fit (manual loop or
the Trainer), then write ``metrics.json`` and the plots. ``load_run`` rebuilds the model of a
finished run from its directory, the way a student reloads the adapter later.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Literal

import numpy as np

from reclor_lab.config import OPTION_LETTERS, RunConfig
from reclor_lab.data import class_weights, load_split, run_records, tokenize_records
from reclor_lab.errors import ReclorLabError, RunDirError
from reclor_lab.metrics import format_accuracy
from reclor_lab.plots import save_run_plots
from reclor_lab.rundir import RunDir, write_json
from reclor_lab.train import History, Run, evaluate, fit, setup

#: Per validation example of the best epoch: id, question type, label, prediction, probabilities.
VAL_PREDICTIONS_FILE = "val-predictions.json"


def summary_table(history: dict) -> str:
    """One row per evaluation: epoch, eval loss, accuracy with its 95 % interval, macro P/R/F1."""
    lines = ["epoch  eval_loss  accuracy  95 % interval   precision  recall  f1",
             "-----  ---------  --------  --------------  ---------  ------  -----"]
    for e in history["evals"]:
        ci = e.get("accuracy_ci95")
        interval = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "-"
        lines.append(f"{e['epoch']:>5}  {e['eval_loss']:>9.4f}  {e['accuracy']:>8.3f}  {interval:<14}  "
                     f"{e['precision_macro']:>9.3f}  {e['recall_macro']:>6.3f}  {e['f1_macro']:>5.3f}")
    return "\n".join(lines)


def finish_run(run_dir: str | Path, history: History, run: Run | None = None) -> dict:
    """Write metrics.json (the best epoch's val metrics), history.json and the plots; return the
    metrics.

    Given the ``run`` that trained (its model in memory), the best epoch's val predictions are
    analysed (:func:`reclor_lab.analysis.val_analysis`), from the logits of that epoch's
    evaluation when this process ran it, else from its adapter loaded again: accuracy by
    question type, position bias, calibration, the most confident wrong answers go into
    metrics.json, the per-example probabilities into ``val-predictions.json``.
    """
    rd = RunDir(run_dir)
    state = rd.read_state()
    best = next(e for e in history.evals if e["epoch"] == state["best_epoch"])
    metrics = {"best_epoch": state["best_epoch"], "last_epoch": state["last_epoch"],
               "baseline_accuracy": history.evals[0]["accuracy"],
               "baseline_accuracy_ci95": history.evals[0].get("accuracy_ci95"), **best}
    if run is not None:
        metrics.update(_analyse_best_epoch(run, rd, state["best_epoch"]))
    write_json(rd.history_path, history.to_dict())
    write_json(rd.metrics_path, metrics)
    save_run_plots(history.to_dict(), best["confusion_matrix"], rd.path)
    return metrics


def _analyse_best_epoch(run: Run, rd: RunDir, best_epoch: int) -> dict:
    from reclor_lab.analysis import predict_proba, probabilities, record_types, val_analysis
    from reclor_lab.rundir import load_adapter

    records = run_records(run.cfg, "val")
    if best_epoch in run.val_logits:  # evaluated in this process: the same logits, no second pass
        probs = probabilities(run.val_logits[best_epoch])
    else:  # evaluated before a resume, or by the Trainer: predict again with the best adapter
        load_adapter(run.model, rd.best_dir())
        probs = predict_proba(run.model, run.val_ds, run.tokenizer, run.cfg.eval_batch_size, run.device, run.dtype)
    rows = [{"id_string": r["id_string"], "question_type": t, "label": r["label"], "predicted": int(p.argmax()),
             "probabilities": [round(float(x), 6) for x in p]}
            for r, t, p in zip(records, record_types(records), probs)]
    write_json(rd.path / VAL_PREDICTIONS_FILE, rows)
    return val_analysis(records, probs)


def train_run(cfg: RunConfig, resume: bool = False, use_trainer: bool = False,
              verbose: bool = True) -> dict:
    """The main job: fine-tune per ``cfg`` into ``cfg.output_dir``; returns the final metrics.

    Launched as several processes (``--processes N``, ``accelerate launch``), every process
    trains its share; the main one writes the run directory and returns the metrics, the others
    return an empty dict.
    """
    from reclor_lab.distributed import finish, on_main, process
    from reclor_lab.plan import resolve_batch

    rd, proc = RunDir(cfg.output_dir), process()
    verbose = verbose and proc.is_main
    cfg = resolve_batch(cfg, verbose=verbose)  # the saved config records the batch actually used
    if use_trainer and proc.distributed:
        raise ReclorLabError("--trainer runs in one process; several processes train with the manual loop "
                         "(drop --trainer)")

    def check() -> None:  # refuse, or check the directory can be written, before minutes of loading
        if rd.decide(resume) == "resume":
            rd.check_resume_config(cfg)

    on_main(proc, check)
    if verbose:
        print(cfg.describe())
    run = setup(cfg, verbose=verbose)
    if use_trainer:
        from reclor_lab.trainer import fit_with_trainer

        history = fit_with_trainer(run, rd.path, resume=resume, verbose=verbose)
    else:
        history = fit(run, rd.path, resume=resume, verbose=verbose)
    if not proc.is_main:
        finish(proc)
        return {}
    metrics = finish_run(rd.path, history, run)
    finish(proc)
    if verbose:
        print(summary_table(history.to_dict()))
        print(f"best epoch {metrics['best_epoch']}: val accuracy "
              f"{format_accuracy(metrics['accuracy'], metrics.get('accuracy_ci95'))} (before training "
              f"{format_accuracy(metrics['baseline_accuracy'], metrics.get('baseline_accuracy_ci95'))}); "
              f"run directory {rd.path}")
    return metrics


def ensure_trained(cfg: RunConfig) -> str:
    """Make sure ``cfg.output_dir`` holds a finished run (notebooks 05 and 06 read notebook 04's):
    if it has no metrics.json, train it now with :func:`train_run` (an unfinished run is started
    over). Returns a line saying which happened."""
    run_dir = Path(cfg.output_dir)
    if RunDir(run_dir).metrics_path.exists():
        return f"found {run_dir} (written by notebook 04)"
    shutil.rmtree(run_dir, ignore_errors=True)  # an unfinished run cannot be reused: start it over
    train_run(cfg, verbose=False)
    return f"{run_dir} was missing or unfinished: trained it now, as notebook 04 does"


def load_run(run_dir: str | Path, checkpoint: Literal["best", "last"] = "best"):
    """(cfg, tokenizer, model) of a run, with a checkpoint's adapter loaded for inference.

    The base model is loaded and prepared exactly as in training (4-bit, k-bit preparation),
    then the saved adapter and head are loaded (checked to match the model exactly, as
    ``PeftModel.from_pretrained`` would load them). Nothing in the run directory is executed
    (``trust_remote_code=False``).
    """
    from peft import PeftConfig, get_peft_model

    from reclor_lab.lora import prepare_kbit, without_peft_noise

    from reclor_lab.modeling import load_model, load_tokenizer
    from reclor_lab.rundir import load_adapter

    rd = RunDir(run_dir)
    if not rd.config_path.exists() or not rd.state_path.exists():
        raise RunDirError(f"{rd.path}: not a run directory (needs config.json and state.json from `reclor-lab train`)")
    cfg = rd.load_config()
    folder = rd.best_dir() if checkpoint == "best" else rd.last_dir()
    tokenizer = load_tokenizer(str(rd.path))
    base = load_model(cfg, tokenizer)
    if cfg.quantization != "none":
        with without_peft_noise():
            base = prepare_kbit(base, cfg.kbit_upcast, checkpointing=False)
    try:
        adapter_config = PeftConfig.from_pretrained(str(folder))
    except Exception as e:  # missing or bad adapter_config.json
        raise RunDirError(f"{folder}: the checkpoint's adapter config cannot be read ({e})") from None
    adapter_config.inference_mode = True
    with without_peft_noise():
        model = get_peft_model(base, adapter_config)
    load_adapter(model, folder)  # refuses a partial, damaged or foreign adapter instead of random weights
    model.eval()
    return cfg, tokenizer, model


def _reloaded(run_dir: str | Path) -> tuple[RunConfig, Run]:
    """A Run of a finished run's best adapter, ready for :func:`reclor_lab.train.evaluate`."""
    from reclor_lab.modeling import pick_device, resolve_compute_dtype

    cfg, tokenizer, model = load_run(run_dir)
    weights = None
    if cfg.class_weighting:  # the same weighted loss as in training, so eval_loss compares
        weights = class_weights([r["label"] for r in run_records(cfg, "train")])
    return cfg, Run(cfg, tokenizer, model, pick_device(), resolve_compute_dtype(cfg), weights=weights)


def evaluate_run(run_dir: str | Path, split: Literal["train", "val"] = "val", verbose: bool = True) -> dict:
    """Reload the best adapter and evaluate it on a labeled split of the run's data folder."""
    cfg, run = _reloaded(run_dir)
    records = run_records(cfg, split)
    ds, _ = tokenize_records(records, run.tokenizer, cfg.max_len, cfg.template)
    result = evaluate(run, ds, progress=verbose)
    result.pop("predictions")
    if verbose:
        print(f"{split}: {result['n']} examples, eval loss {result['eval_loss']:.4f}, "
              f"accuracy {format_accuracy(result['accuracy'], result['accuracy_ci95'])}, "
              f"macro F1 {result['f1_macro']:.3f}")
    return result


def predict_run(run_dir: str | Path, split: Literal["train", "val", "test"] = "test",
                output: str | Path | None = None, verbose: bool = True) -> Path:
    """Predicted answer indices for every record of ``split``.

    By default writes ``predictions-<split>.npy`` (an int array, one index 0-3 per record in
    file order: the form the ReClor leaderboard takes) and ``predictions-<split>.json``
    (id_string → letter) into the run directory. With ``output`` it writes that one ``.npy``
    file and nothing else, and never over a file of the run or of its data. Returns the .npy path.
    """
    rd = RunDir(run_dir)
    npy = Path(output) if output else rd.path / f"predictions-{split}.npy"
    if npy.suffix != ".npy":
        raise RunDirError(f"{npy}: the predictions file must end in .npy")
    if output is not None:
        _refuse_to_overwrite_inputs(npy, rd)
    cfg, run = _reloaded(rd.path)
    records = load_split(cfg.data_dir, split)
    ds, _ = tokenize_records(records, run.tokenizer, cfg.max_len, cfg.template)
    preds = np.asarray(evaluate(run, ds, desc="predict", progress=verbose)["predictions"], dtype=np.int64)
    npy.parent.mkdir(parents=True, exist_ok=True)
    np.save(npy, preds)
    written = [npy]
    if output is None:
        readable = {r["id_string"]: OPTION_LETTERS[p] for r, p in zip(records, preds.tolist())}
        write_json(npy.with_suffix(".json"), readable)
        written.append(npy.with_suffix(".json"))
    if verbose:
        counts = np.bincount(preds, minlength=len(OPTION_LETTERS))
        print(f"{len(preds)} predictions for {split} → " + " and ".join(map(str, written)) + "; per option: "
              + ", ".join(f"{l} {c}" for l, c in zip(OPTION_LETTERS, counts)))
    if split == "test" and output is None:  # no labels: distributions per question type and EASY / HARD
        from reclor_lab.analysis import format_test_summary, summarize_test_predictions

        summary = summarize_test_predictions(records, preds)
        write_json(npy.with_name(npy.stem + "-summary.json"), summary)
        if verbose:
            print(format_test_summary(summary))
    return npy


def _refuse_to_overwrite_inputs(path: Path, rd: RunDir) -> None:
    """An explicit --output may not land on a file the run or its data folder holds."""
    target = path.resolve()
    cfg = rd.load_config()
    inputs = [Path(cfg.data_dir).resolve(), rd.path.resolve()]
    for folder in inputs:
        ours = folder == inputs[-1] and target.name.startswith("predictions-")
        if target.exists() and target.parent == folder and not ours:
            raise RunDirError(f"{path}: exists in {folder}, which holds the run or its data; refusing to "
                              "overwrite it: choose a new file name for --output")


def saved_metrics(run_dir: str | Path) -> dict:
    return json.loads(RunDir(run_dir).metrics_path.read_text())


def saved_history(run_dir: str | Path) -> dict:
    return RunDir(run_dir).load_history()
