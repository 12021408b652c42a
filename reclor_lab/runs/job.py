"""The kit's main job and what comes after it: train a run, reload it, evaluate, predict.

``train_run`` is what ``reclor-lab train`` does: print the config, set up, fit (manual loop or
the Trainer), then write ``metrics.json`` and the plots. ``load_run`` rebuilds the model of a
finished run from its directory, the way a student reloads the adapter later.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from reclor_lab.config import OPTION_LETTERS, RunConfig
from reclor_lab.data import load_split, run_records, tokenize_records
from reclor_lab.errors import ReclorLabError, RunDirError
from reclor_lab.metrics import format_accuracy
from reclor_lab.plots import plot_confusion, plot_eval, plot_loss
from reclor_lab.runs.rundir import RunDir, atomic_write, read_json, started, write_json
from reclor_lab.train import History, Run, evaluate, fit, setup


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


def finish_run(run_dir: str | Path | RunDir, history: History, run: Run | None = None) -> dict:
    """Write metrics.json (the best epoch's val metrics), history.json and the plots; return the
    metrics.

    Given the ``run`` that trained (its model in memory), the best epoch's val predictions are
    analysed (:func:`reclor_lab.results.analysis.val_analysis`), from the logits of that epoch's
    evaluation when this process ran it, else from its adapter loaded again: accuracy by
    question type, position bias, calibration, the most confident wrong answers go into
    metrics.json, the per-example probabilities into ``val-predictions.json``.
    """
    rd = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    rd.check_still_here()  # moved or deleted while training: one line, nothing re-created
    rd.check_no_links()
    state = rd.read_state()
    best = next(e for e in history.evals if e["epoch"] == state["best_epoch"])
    metrics = {"best_epoch": state["best_epoch"], "last_epoch": state["last_epoch"],
               "baseline_accuracy": history.evals[0]["accuracy"],
               "baseline_accuracy_ci95": history.evals[0].get("accuracy_ci95"), **best}
    if run is not None:
        metrics.update(_analyse_best_epoch(run, rd, state["best_epoch"]))
    write_json(rd.history_path, history.to_dict())
    write_json(rd.metrics_path, metrics)
    save_run_plots(history.to_dict(), best["confusion_matrix"], rd.plot_paths)
    return metrics


def save_run_plots(history: dict, confusion, paths: list[Path]) -> None:
    """Write the loss plot (train and val loss), the eval plot (val accuracy) and the confusion
    matrix to ``paths`` (a run's :attr:`RunDir.plot_paths`), each complete or not at all."""
    for path, draw in zip(paths, (lambda f: plot_loss(history, save=f), lambda f: plot_eval(history, save=f),
                                  lambda f: plot_confusion(confusion, save=f))):
        atomic_write(path, draw)


def _analyse_best_epoch(run: Run, rd: RunDir, best_epoch: int) -> dict:
    from reclor_lab.results.analysis import predict_proba, probabilities, record_types, val_analysis
    from reclor_lab.runs.rundir import load_adapter

    records = run_records(run.cfg, "val")
    if best_epoch in run.val_logits:  # evaluated in this process: the same logits, no second pass
        probs = probabilities(run.val_logits[best_epoch])
    else:  # evaluated before a resume, or by the Trainer: predict again with the best adapter
        load_adapter(run.model, rd.best_dir())
        probs = predict_proba(run.model, run.val_ds, run.tokenizer, run.cfg.eval_batch_size, run.device, run.dtype)
    rows = [{"id_string": r["id_string"], "question_type": t, "label": r["label"], "predicted": int(p.argmax()),
             "probabilities": [round(float(x), 6) for x in p]}
            for r, t, p in zip(records, record_types(records), probs)]
    write_json(rd.val_predictions_path, rows)
    return val_analysis(records, probs)


def train_run(cfg: RunConfig, resume: bool = False, use_trainer: bool = False,
              verbose: bool = True, saved_config: bool = False, epochs: int | None = None) -> dict:
    """The main job: fine-tune per ``cfg`` into ``cfg.output_dir``; returns the final metrics.

    The run is opened here, first (:meth:`RunDir.open`: the lock, then new / resume / refuse,
    before minutes of loading); ``fit`` trains in the run opened. ``saved_config`` (the CLI's
    resume) trains with the run's saved config.json instead of ``cfg``, ``epochs`` extending it.
    Launched as several processes (``--processes N``, ``accelerate launch``), every process
    trains its share; the main one writes the run directory and returns the metrics, the
    others return an empty dict.
    """
    from reclor_lab.runs.distributed import finish, process
    from reclor_lab.tools.plan import resolve_batch

    proc = process()
    verbose = verbose and proc.is_main
    if use_trainer and proc.distributed:
        raise ReclorLabError("--trainer runs in one process; several processes train with the manual loop "
                             "(drop --trainer)")
    with started(cfg.output_dir, resume, None if saved_config else cfg, proc, epochs=epochs) as opened:
        cfg = resolve_batch(opened.cfg, verbose=verbose)  # the saved config records the batch actually used
        if verbose:
            print(cfg.describe())
        run = setup(cfg, verbose=verbose)
        if use_trainer:
            from reclor_lab.runs.trainer import fit_with_trainer

            history = fit_with_trainer(run, opened, resume=resume, verbose=verbose)
        else:
            history = fit(run, opened, resume=resume, verbose=verbose)
        metrics = finish_run(opened.rd, history, run) if proc.is_main else {}
    finish(proc)
    if verbose:
        print(summary_table(history.to_dict()))
        print(f"best epoch {metrics['best_epoch']}: val accuracy "
              f"{format_accuracy(metrics['accuracy'], metrics.get('accuracy_ci95'))} (before training "
              f"{format_accuracy(metrics['baseline_accuracy'], metrics.get('baseline_accuracy_ci95'))}); "
              f"run directory {opened.rd.path}")
    return metrics


def ensure_trained(cfg: RunConfig) -> str:
    """Make sure ``cfg.output_dir`` holds a finished run (notebooks 05 and 06 read notebook 04's):
    if it has no metrics.json, train it now with :func:`train_run`. A run already there (finished
    but without metrics.json, or interrupted) is continued, never deleted; a different run there
    is refused. Returns a line saying which happened."""
    rd = RunDir(cfg.output_dir)
    if rd.metrics_path.exists():
        return f"found {rd.path} (written by notebook 04)"
    resume = rd.config_path.exists()
    if resume:
        saved = rd.load_config().to_dict()
        wanted = cfg.replace(output_dir=str(rd.path)).to_dict()
        differ = sorted(k for k in wanted if k not in ("batch_size", "output_dir") and saved.get(k) != wanted[k])
        if differ:
            raise RunDirError(f"{rd.path} holds another run (its config differs in {', '.join(differ[:5])}); "
                              "move it away or choose another output_dir: it is never deleted")
    train_run(cfg, resume=resume, verbose=False)
    return f"{rd.path} was missing or unfinished: trained it now, as notebook 04 does"


def load_run(run_dir: str | Path, checkpoint: Literal["best", "last"] = "best"):
    """(cfg, tokenizer, model) of a run, with a checkpoint's adapter loaded for inference.

    The base model is loaded and prepared exactly as in training (4-bit, k-bit preparation),
    then the saved adapter and head are loaded (checked to match the model exactly, as
    ``PeftModel.from_pretrained`` would load them). Nothing in the run directory is executed
    (``trust_remote_code=False``).
    """
    from peft import PeftConfig, get_peft_model

    from reclor_lab.lora import prepare_kbit
    from reclor_lab.runs.adapters import without_peft_noise

    from reclor_lab.model import load_model, load_tokenizer
    from reclor_lab.runs.rundir import load_adapter

    rd = RunDir(run_dir)
    if not rd.config_path.exists() or not rd.state_path.exists():
        raise RunDirError(f"{rd.path}: not a run directory (needs config.json and state.json from `reclor-lab train`)")
    cfg = rd.load_config()
    state = rd.verified_state()  # last and best checked, before minutes of loading a model
    rd.config_changes(cfg, state)  # config.json as the run trained, in every field that matters
    folder = rd.checkpoint_dir(state[checkpoint])
    rd.check_tokenizer()
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
    from reclor_lab.model import pick_device, resolve_compute_dtype

    import torch

    cfg, tokenizer, model = load_run(run_dir)
    # the same weighted loss as in training, so eval_loss compares: the weights the run saved
    saved = RunDir(run_dir).class_weights(cfg.class_weighting)
    weights = None if saved is None else torch.tensor(saved, dtype=torch.float32)
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
    npy = Path(output) if output else rd.predictions_path(split)
    if npy.suffix != ".npy":
        raise RunDirError(f"{npy}: the predictions file must end in .npy")
    rd.check_no_links()
    if output is not None:
        _refuse_to_overwrite_inputs(npy, rd)
    cfg, run = _reloaded(rd.path)
    records = load_split(cfg.data_dir, split)
    ds, _ = tokenize_records(records, run.tokenizer, cfg.max_len, cfg.template)
    preds = np.asarray(evaluate(run, ds, desc="predict", progress=verbose)["predictions"], dtype=np.int64)
    npy.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(npy, lambda f: np.save(f, preds))  # complete or not at all, even on a full disk
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
        from reclor_lab.results.analysis import format_test_summary, summarize_test_predictions

        summary = summarize_test_predictions(records, preds)
        write_json(rd.summary_path(npy), summary)
        if verbose:
            print(format_test_summary(summary))
    return npy


def _refuse_to_overwrite_inputs(path: Path, rd: RunDir) -> None:
    """An explicit --output may not land on a file the run or its data folder holds."""
    target = path.resolve()
    cfg = rd.load_config()
    inputs = [Path(cfg.data_dir).resolve(), rd.path.resolve()]
    for folder in inputs:
        ours = folder == inputs[-1] and rd.is_prediction_file(target)
        if target.exists() and target.parent == folder and not ours:
            raise RunDirError(f"{path}: exists in {folder}, which holds the run or its data; refusing to "
                              "overwrite it: choose a new file name for --output")


def saved_metrics(run_dir: str | Path) -> dict:
    """metrics.json, checked: a damaged file is one RunDirError naming it."""
    path = RunDir(run_dir).metrics_path
    metrics = read_json(path, "the run's metrics")
    numbers = ("accuracy", "eval_loss", "baseline_accuracy")
    ok = isinstance(metrics, dict) and all(
        isinstance(metrics.get(k), (int, float)) and not isinstance(metrics.get(k), bool) for k in numbers)
    if not (ok and isinstance(metrics.get("best_epoch"), int) and 0 <= metrics["accuracy"] <= 1):
        raise RunDirError(f"{path}: the run's metrics are damaged (expected an object with best_epoch, accuracy "
                          "in [0, 1], eval_loss and baseline_accuracy); train or evaluate the run again")
    return metrics


def saved_history(run_dir: str | Path) -> dict:
    return RunDir(run_dir).load_history(checked=True)
