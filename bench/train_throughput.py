"""Training throughput on the tiny preset (CPU): real (non-padding) tokens per second and peak
memory of the kit's training loops over the same model, data and examples, and the time of
``make demo``'s whole job.

- kit loop: ``reclor_lab.train.fit`` (length-grouped batches of the preset's size, weighted loss,
  one host sync per epoch). Its per-epoch ``tokens_per_second`` times the training loop only.
- kit Trainer: ``reclor_lab.runs.trainer.fit_with_trainer`` (the Hugging Face Trainer with the same
  loss, batch order, optimizer and schedule). Its epoch time runs from the epoch's start to the
  end of the epoch's evaluation, so the validation set is cut to a few examples here
  (``--eval-examples``) to keep that evaluation negligible.
- reference-style loop: batch size 1 in shuffled order, the loss read with ``.item()`` and the
  cache cleared after every step. The reference calls ``torch.cuda.empty_cache()``; on a CPU there
  is no CUDA cache, so its CPU equivalent here is ``gc.collect()`` per step.
- demo (only when named in ``--variants``): ``make demo``'s job, ``python -m reclor_lab train
  --preset tiny --model M`` with the preset's own data and sizes (every training example, the full
  validation set evaluated before training and after every epoch, checkpoints), timed from start
  to exit, imports and setup included; ``--examples``/``--eval-examples``/``--epochs`` do not
  apply to it.

Every loop variant trains ``--epochs`` epochs over the same ``--examples`` training examples; the
median of the per-epoch figures is reported (epoch 1 includes the warm-up). Each variant runs in
its own subprocess, because the peak RSS (the CPU's peak memory) is a per-process high-water mark.

Side by side, alternating which goes first, ``--rounds`` times (a load that comes and goes on a
shared machine falls on both), with each side's median and the ratio:

- ``--baseline-model DIR``: two models on this checkout's code (e.g. the tiny model before and
  after a tokenizer change: its tokens per example change, so compare times, not tokens/s);
- ``--baseline-checkout DIR``: another checkout of the kit (e.g. ``git worktree add /tmp/old
  <commit>``), its own code and its own tiny model unless ``--baseline-model`` names one: release
  against release, demo variant only.

    python bench/train_throughput.py [--model PATH] [--examples 64] [--epochs 3] [--quick] [--json PATH]
    python bench/train_throughput.py --baseline-model /tmp/old-tiny --variants kit,demo --examples 1000 --rounds 6
    python bench/train_throughput.py --baseline-checkout /tmp/old --variants demo --rounds 6
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (
    REPO_ROOT, Report, check_model_dir, default_tokenizer_path, finish, parser, reference_cleanup,
)

VARIANTS = {
    "kit": "kit loop (reclor_lab.train.fit)",
    "trainer": "kit Trainer (reclor_lab.runs.trainer.fit_with_trainer)",
    "reference": "reference-style loop (batch 1, gc.collect() per step)",
    "demo": "make demo's job (reclor-lab train --preset tiny, start to exit)",
}
DEFAULT_VARIANTS = ("kit", "trainer", "reference")


def rss_mb() -> float:
    """The process's resident memory now (MB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- one variant, in a child process ------------------------------------------------------------

def child(variant: str, model: str, data_dir: str, examples: int, eval_examples: int, epochs: int,
          out: str) -> None:
    import torch

    from reclor_lab.config import get_preset
    from reclor_lab.runs.session import peak_memory_mb
    from reclor_lab.train import setup

    with tempfile.TemporaryDirectory() as tmp:
        cfg = get_preset("tiny", model_name_or_path=model, data_dir=data_dir, train_limit=examples,
                         eval_limit=eval_examples, epochs=epochs, output_dir=str(Path(tmp) / "run"))
        if variant == "reference":
            cfg = cfg.replace(batch_size=1, group_by_length=False)
        run = setup(cfg, verbose=False)
        rss_before = rss_mb()
        if variant == "kit":
            from reclor_lab.train import fit

            rows = fit(run, cfg.output_dir, verbose=False).epochs
        elif variant == "trainer":
            from reclor_lab.runs.trainer import fit_with_trainer

            rows = fit_with_trainer(run, cfg.output_dir, verbose=False).epochs
        else:
            rows = reference_loop(run)
        result = {
            "tokens_per_second": [r["tokens_per_second"] for r in rows],
            "seconds": [r["seconds"] for r in rows],
            "tokens": rows[0]["tokens"],
            "batch_size": cfg.batch_size,
            "steps_per_epoch": -(-len(run.train_ds) // cfg.batch_size),
            "peak_rss_mb": peak_memory_mb(torch.device("cpu")),
            "rss_before_training_mb": rss_before,
            "device": str(run.device),
            "dtype": str(run.dtype).removeprefix("torch."),
        }
    Path(out).write_text(json.dumps(result))


def run_demo(model: str, checkout: Path, tmp: Path, label: str) -> dict:
    """``make demo``'s job, ``python -m reclor_lab train --preset tiny --model MODEL``, run with
    ``checkout``'s own package (its folder first on ``PYTHONPATH``), timed from start to exit."""
    run_dir = tmp / f"demo-{label}"
    shutil.rmtree(run_dir, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=str(checkout), HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    cmd = [sys.executable, "-m", "reclor_lab", "train", "--preset", "tiny", "--model", model,
           "--output-dir", str(run_dir)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"the demo on {model} ({checkout}) failed (exit {proc.returncode}); its output is above")
    history = json.loads((run_dir / "history.json").read_text())
    epochs = history["epochs"]
    tokens = sum(e["tokens"] for e in epochs)
    return {"tokens_per_second": [tokens / seconds], "seconds": [seconds], "tokens": tokens,
            "batch_size": 8, "steps_per_epoch": len(history["steps"]) // len(epochs),
            "peak_rss_mb": max(e["peak_memory_mb"] for e in epochs), "rss_before_training_mb": 0.0,
            "device": "cpu", "dtype": "float32", "wall": seconds,
            "epoch_seconds": [e["seconds"] for e in epochs],
            "accuracy": max(e["accuracy"] for e in history["evals"])}


def reference_loop(run) -> list[dict]:
    """The reference solution's loop: one example per step, ``.item()`` and a cache clear per step."""
    import random

    import torch

    from reclor_lab.data import model_inputs
    from reclor_lab.loss import weighted_cross_entropy
    from reclor_lab.model import autocast_for

    cfg, model, device, dtype = run.cfg, run.model, run.device, run.dtype
    model.to(device).train()
    data = model_inputs(run.train_ds)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    rows = []
    for epoch in range(1, cfg.epochs + 1):
        order = list(range(len(data)))
        random.Random(cfg.seed + epoch).shuffle(order)
        t0, tokens, total_loss = time.perf_counter(), 0, 0.0
        for i in order:
            ex = data[i]
            labels = ex["labels"].view(1).to(device)
            ids = ex["input_ids"].unsqueeze(0).to(device)
            mask = ex["attention_mask"].unsqueeze(0).to(device)
            tokens += int(mask.sum())
            with autocast_for(device, dtype):
                logits = model(input_ids=ids, attention_mask=mask).logits
            loss = weighted_cross_entropy(logits, labels, run.weights)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad()
            total_loss += loss.item()  # a host sync every step (free on a CPU, not on a GPU)
            reference_cleanup(device)
        seconds = time.perf_counter() - t0
        rows.append({"epoch": epoch, "seconds": seconds, "tokens": tokens, "tokens_per_second": tokens / seconds})
    return rows


# --- the parent: one subprocess per variant -----------------------------------------------------

def ensure_data(data_dir: str, examples: int, eval_examples: int, tmp: Path) -> tuple[str, str]:
    """The preset's data folder when it holds train/val, else generated records of the bundled kind."""
    if (Path(data_dir) / "train.json").exists() and (Path(data_dir) / "val.json").exists():
        return data_dir, f"{data_dir}"
    from common import write_splits
    from reclor_lab.tools.synth import generate_split

    folder = write_splits({"train": generate_split("train", examples), "val": generate_split("val", eval_examples)},
                          tmp / "data")
    return str(folder), "generated by reclor_lab.tools.synth (no train.json / val.json in the preset's data_dir)"


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--model", default=default_tokenizer_path(), help="local model folder (default: the tiny model)")
    p.add_argument("--data-dir", default=None, help="ReClor-format folder (default: the tiny preset's)")
    p.add_argument("--examples", type=int, default=64, help="training examples per epoch (cfg.train_limit)")
    p.add_argument("--eval-examples", type=int, default=8, help="validation examples (kept tiny: see above)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per variant; the median epoch is reported")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help="comma-separated: " + ", ".join(VARIANTS))
    p.add_argument("--baseline-model", default=None, help="a second model folder to run side by side (see above)")
    p.add_argument("--baseline-checkout", default=None, help="another checkout of the kit to run side by side")
    p.add_argument("--rounds", type=int, default=2, help="with a baseline: rounds of both sides, alternating")
    p.add_argument("--child", choices=[v for v in VARIANTS if v != "demo"], help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.child, args.model, args.data_dir, args.examples, args.eval_examples, args.epochs, args.out)

    check_model_dir(args.model, "--model")
    if args.quick:
        args.examples, args.epochs = 32, 2
    from reclor_lab.config import get_preset

    variants = [v.strip() for v in args.variants.split(",")]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    sides = {"model": (args.model, REPO_ROOT)}  # label -> (model folder, checkout whose code runs it)
    if args.baseline_checkout:
        checkout = Path(args.baseline_checkout).resolve()
        if not (checkout / "reclor_lab" / "__init__.py").is_file():
            raise SystemExit(f"--baseline-checkout {checkout}: not a checkout of the kit (no reclor_lab/ package)")
        if variants != ["demo"]:
            raise SystemExit("--baseline-checkout runs another checkout's code: only --variants demo applies")
        sides["baseline"] = (args.baseline_model or str(checkout / "models" / "tiny-llama"), checkout)
    elif args.baseline_model:
        sides["baseline"] = (args.baseline_model, REPO_ROOT)
    for model, _ in sides.values():
        check_model_dir(model, "--model / --baseline-model")
    title = "training throughput on the tiny preset"
    report = Report(title + (", side by side" if len(sides) > 1 else ""))
    runs: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir, source = ensure_data(args.data_dir or get_preset("tiny").data_dir, args.examples,
                                       args.eval_examples, Path(tmp))
        report.settings = {"model": args.model, "data": source, "examples": args.examples,
                           "eval_examples": args.eval_examples, "epochs": args.epochs}
        if len(sides) > 1:
            report.settings.update(baseline_model=sides["baseline"][0], baseline_code=str(sides["baseline"][1]),
                                   rounds=args.rounds)
        rounds = args.rounds if len(sides) > 1 else 1
        print(f"variants {', '.join(variants)}, each in its own process"
              + (f"; {len(sides)} sides alternating, {rounds} rounds" if len(sides) > 1 else ""), flush=True)
        for r in range(rounds):
            for label in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
                model, checkout = sides[label]
                for v in variants:
                    res = (run_demo(model, checkout, Path(tmp), label) if v == "demo"
                           else run_child(v, model, data_dir, args, Path(tmp) / f"{label}-{v}-{r}.json"))
                    runs.setdefault((label, v), []).append(res)
                    what = (f"{res['seconds'][0]:.1f} s start to exit, val accuracy {res['accuracy']:.3f}"
                            if v == "demo" else "epochs " + ", ".join(f"{x:.1f} s" for x in res["seconds"]))
                    print(f"  round {r + 1} {label} {v}: {what}, {res['tokens']:,} tokens", flush=True)
    for (label, v), rs in runs.items():
        add_figures(report, v if len(sides) == 1 else f"{label} {v}", v, rs)
    if len(sides) > 1:
        for v in variants:
            new, old = (statistics.median(x for res in runs[k, v] for x in res["seconds"]) for k in sides)
            unit = "job time" if v == "demo" else "epoch time"
            report.add(f"{v}: {unit}, model / baseline", new / old, "x",
                       f"{new:.1f} s vs {old:.1f} s; tokens {runs['model', v][0]['tokens']:,} vs "
                       f"{runs['baseline', v][0]['tokens']:,}", show=True)
            walls = [m["wall"] / b["wall"] for m, b in zip(runs["model", v], runs["baseline", v])]
            report.add(f"{v}: process wall time, model / baseline", statistics.median(walls), "x",
                       "per round: " + ", ".join(f"{w:.2f}" for w in walls))
    first = runs["model", variants[0]][0]
    report.settings.update(device=first["device"], dtype=first["dtype"])
    if len(sides) == 1:
        tps = {v: statistics.median(runs["model", v][0]["tokens_per_second"]) for v in variants}
        if "kit" in tps and "trainer" in tps:
            report.add("kit loop / kit Trainer", tps["kit"] / tps["trainer"], "x")
            report.goal("kit loop at least as fast as the Trainer", tps["kit"] >= tps["trainer"],
                        f"{tps['kit'] / tps['trainer']:.2f}x")
        if "kit" in tps and "reference" in tps:
            report.add("kit loop / reference-style loop", tps["kit"] / tps["reference"], "x")
    finish(report, args.json)


def run_child(variant: str, model: str, data_dir: str, args: argparse.Namespace, out: Path) -> dict:
    """One loop variant in its own process (:func:`child`); its figures and its wall time."""
    cmd = [sys.executable, __file__, "--child", variant, "--model", model, "--data-dir", data_dir,
           "--examples", str(args.examples), "--eval-examples", str(args.eval_examples),
           "--epochs", str(args.epochs), "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"variant {variant!r} on {model} failed (exit {proc.returncode}); its output is above")
    res = json.loads(out.read_text())
    res["wall"] = time.perf_counter() - t0
    return res


def add_figures(report: Report, name: str, variant: str, rs: list[dict]) -> None:
    """One side's figures of one variant, medians over its rounds."""
    r = rs[0]
    tps = statistics.median(x for res in rs for x in res["tokens_per_second"])
    if variant == "demo":
        report.add(f"{name}: job time", statistics.median(res["seconds"][0] for res in rs), "s",
                   f"{VARIANTS[variant]}; per round: " + ", ".join(f"{res['seconds'][0]:.1f}" for res in rs),
                   show=True)
        report.add(f"{name}: training epoch time", statistics.median(x for res in rs for x in res["epoch_seconds"]),
                   "s", f"{r['tokens'] // len(r['epoch_seconds']):,} real tokens per epoch")
        report.add(f"{name}: val accuracy", r["accuracy"], "", "best epoch")
        return
    report.add(f"{name}: tokens/s", tps, "tokens/s",
               f"{VARIANTS[variant]}; batch {r['batch_size']}, {r['steps_per_epoch']} steps/epoch; epochs: "
               + ", ".join(f"{x:,.0f}" for res in rs for x in res["tokens_per_second"]), show=True)
    report.add(f"{name}: epoch time", statistics.median(x for res in rs for x in res["seconds"]), "s",
               f"{r['tokens']:,} real tokens per epoch")
    report.add(f"{name}: peak RSS", max(res["peak_rss_mb"] for res in rs), "MB",
               f"{r['peak_rss_mb'] - r['rss_before_training_mb']:,.0f} MB above the RSS before training", show=True)
    report.add(f"{name}: process wall time", statistics.median(res["wall"] for res in rs), "s",
               "imports + setup + training")


if __name__ == "__main__":
    main()
