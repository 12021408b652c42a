"""Training throughput on the tiny preset (CPU): real (non-padding) tokens per second and peak
memory of three training loops over the same model, data and examples.

- kit loop: ``reclor_lab.train.fit`` (length-grouped batches of the preset's size, weighted loss,
  one host sync per epoch). Its per-epoch ``tokens_per_second`` times the training loop only.
- kit Trainer: ``reclor_lab.trainer.fit_with_trainer`` (the Hugging Face Trainer with the same
  loss, batch order, optimizer and schedule). Its epoch time runs from the epoch's start to the
  end of the epoch's evaluation, so the validation set is cut to a few examples here
  (``--eval-examples``) to keep that evaluation negligible.
- reference-style loop: batch size 1 in shuffled order, the loss read with ``.item()`` and the
  cache cleared after every step. The reference calls ``torch.cuda.empty_cache()``; on a CPU there
  is no CUDA cache, so its CPU equivalent here is ``gc.collect()`` per step.

Every variant trains ``--epochs`` epochs over the same ``--examples`` training examples; the
median of the per-epoch figures is reported (epoch 1 includes the warm-up). Each variant runs in
its own subprocess, because the peak RSS (the CPU's peak memory) is a per-process high-water mark.

``--baseline-model DIR`` compares two models on the same job: every variant runs on ``--model``
and on the baseline, alternating which goes first, ``--rounds`` times, so that a load that comes
and goes on a shared machine falls on both; the report gives each model's median epoch time and
the ratio (e.g. the tiny model before and after a tokenizer change: its tokens per example
change, so the epoch time is the figure to compare, not tokens/s).

    python bench/train_throughput.py [--model PATH] [--examples 64] [--epochs 3] [--quick] [--json PATH]
    python bench/train_throughput.py --baseline-model /tmp/old-tiny --variants kit --examples 1000 --rounds 2
"""

from __future__ import annotations

import argparse
import json
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
    "trainer": "kit Trainer (reclor_lab.trainer.fit_with_trainer)",
    "reference": "reference-style loop (batch 1, gc.collect() per step)",
}


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
    from reclor_lab.train import peak_memory_mb, setup

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
            from reclor_lab.trainer import fit_with_trainer

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


def reference_loop(run) -> list[dict]:
    """The reference solution's loop: one example per step, ``.item()`` and a cache clear per step."""
    import random

    import torch

    from reclor_lab.data import model_inputs
    from reclor_lab.loss import weighted_cross_entropy
    from reclor_lab.modeling import autocast_for

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
    from reclor_lab.synth import generate_split

    folder = write_splits({"train": generate_split("train", examples), "val": generate_split("val", eval_examples)},
                          tmp / "data")
    return str(folder), "generated by reclor_lab.synth (no train.json / val.json in the preset's data_dir)"


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--model", default=default_tokenizer_path(), help="local model folder (default: the tiny model)")
    p.add_argument("--data-dir", default=None, help="ReClor-format folder (default: the tiny preset's)")
    p.add_argument("--examples", type=int, default=64, help="training examples per epoch (cfg.train_limit)")
    p.add_argument("--eval-examples", type=int, default=8, help="validation examples (kept tiny: see above)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per variant; the median epoch is reported")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated: " + ", ".join(VARIANTS))
    p.add_argument("--baseline-model", default=None, help="a second model folder to run side by side (see above)")
    p.add_argument("--rounds", type=int, default=2, help="with --baseline-model: rounds of both models, alternating")
    p.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.child, args.model, args.data_dir, args.examples, args.eval_examples, args.epochs, args.out)

    check_model_dir(args.model, "--model")
    if args.quick:
        args.examples, args.epochs = 32, 2
    from reclor_lab.config import get_preset

    variants = [v.strip() for v in args.variants.split(",")]
    models = {"model": args.model}
    if args.baseline_model:
        check_model_dir(args.baseline_model, "--baseline-model")
        models["baseline"] = args.baseline_model
    title = "training throughput on the tiny preset: kit loop vs kit Trainer vs reference-style loop"
    report = Report(title + (", two models side by side" if len(models) > 1 else ""))
    results, runs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir, source = ensure_data(args.data_dir or get_preset("tiny").data_dir, args.examples,
                                       args.eval_examples, Path(tmp))
        report.settings = {"model": args.model, "data": source, "examples": args.examples,
                           "eval_examples": args.eval_examples, "epochs": args.epochs}
        if len(models) > 1:
            report.settings.update(baseline_model=args.baseline_model, rounds=args.rounds)
        rounds = args.rounds if len(models) > 1 else 1
        print(f"{args.examples} examples x {args.epochs} epochs per variant, each in its own process"
              + (f"; {len(models)} models alternating, {rounds} rounds" if len(models) > 1 else ""), flush=True)
        for r in range(rounds):
            labels = list(models) if r % 2 == 0 else list(models)[::-1]
            for label in labels:
                for v in variants:
                    out = Path(tmp) / f"{label}-{v}-{r}.json"
                    cmd = [sys.executable, __file__, "--child", v, "--model", models[label], "--data-dir", data_dir,
                           "--examples", str(args.examples), "--eval-examples", str(args.eval_examples),
                           "--epochs", str(args.epochs), "--out", str(out)]
                    t0 = time.perf_counter()
                    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
                    if proc.returncode != 0:
                        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
                        raise SystemExit(f"variant {v!r} on {models[label]} failed (exit {proc.returncode}); "
                                         "its output is above")
                    res = json.loads(out.read_text())
                    res["wall"] = time.perf_counter() - t0
                    runs.setdefault((label, v), []).append(res)
                    print(f"  round {r + 1} {label} {v}: epochs " + ", ".join(f"{x:.1f} s" for x in res["seconds"])
                          + f", {res['tokens']:,} tokens/epoch", flush=True)
        for (label, v), rs in runs.items():
            name = v if len(models) == 1 else f"{label} {v}"
            r = results[label, v] = rs[0]
            tps = statistics.median(x for res in rs for x in res["tokens_per_second"])
            report.add(f"{name}: tokens/s", tps, "tokens/s",
                       f"{VARIANTS[v]}; batch {r['batch_size']}, {r['steps_per_epoch']} steps/epoch; epochs: "
                       + ", ".join(f"{x:,.0f}" for res in rs for x in res["tokens_per_second"]), show=True)
            report.add(f"{name}: epoch time", statistics.median(x for res in rs for x in res["seconds"]), "s",
                       f"{r['tokens']:,} real tokens per epoch")
            report.add(f"{name}: peak RSS", max(res["peak_rss_mb"] for res in rs), "MB",
                       f"{r['peak_rss_mb'] - r['rss_before_training_mb']:,.0f} MB above the RSS before training",
                       show=True)
            report.add(f"{name}: process wall time", statistics.median(res["wall"] for res in rs), "s",
                       "imports + setup + training")
    if len(models) > 1:
        for v in variants:
            new, old = (statistics.median(x for res in runs[k, v] for x in res["seconds"])
                        for k in ("model", "baseline"))
            report.add(f"{v}: epoch time, model / baseline", new / old, "x",
                       f"{new:.1f} s vs {old:.1f} s; tokens per epoch {runs['model', v][0]['tokens']:,} vs "
                       f"{runs['baseline', v][0]['tokens']:,}", show=True)
            walls = [m["wall"] / b["wall"] for m, b in zip(runs["model", v], runs["baseline", v])]
            report.add(f"{v}: process wall time, model / baseline", statistics.median(walls), "x",
                       "per round: " + ", ".join(f"{w:.2f}" for w in walls))
        results = {v: results["model", v] for v in variants}
        report.settings.update(device=results[variants[0]]["device"], dtype=results[variants[0]]["dtype"])
        return finish(report, args.json)
    results = {v: results["model", v] for v in variants}
    device = next(iter(results.values()))
    report.settings.update(device=device["device"], dtype=device["dtype"])
    tps = {v: statistics.median(r["tokens_per_second"]) for v, r in results.items()}
    if "kit" in tps and "trainer" in tps:
        report.add("kit loop / kit Trainer", tps["kit"] / tps["trainer"], "x")
        report.goal("kit loop at least as fast as the Trainer", tps["kit"] >= tps["trainer"],
                    f"{tps['kit'] / tps['trainer']:.2f}x")
    if "kit" in tps and "reference" in tps:
        report.add("kit loop / reference-style loop", tps["kit"] / tps["reference"], "x")
    finish(report, args.json)


if __name__ == "__main__":
    main()
