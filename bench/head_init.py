"""Random vs letter-token head initialisation on the tiny preset: val accuracy before training
(the baseline) and after epoch 1, for several seeds; and the zero-shot / k-shot LM baselines.

    python bench/head_init.py [--seeds 0,1,2] [--epochs 1] [--json bench/results/head_init.json]

Each (init, seed) pair is one `setup` + `fit` run of the tiny preset in a temporary directory
(the seed changes the random head, LoRA's initialisation and the batch order). Accuracies carry
Wilson 95 % intervals. An accuracy experiment, not a timing: the figures do not depend on load.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from common import Report, finish, parser


def main() -> None:
    p = parser("head_init random vs letters on the tiny preset, several seeds")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--epochs", type=int, default=1, help="epochs per run (default 1)")
    p.add_argument("--shots", default="0,1,3", help="k of the LM-scoring baselines (default 0,1,3)")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")][: 1 if args.quick else None]

    from reclor_lab.results.baselines import lm_baseline
    from reclor_lab.config import get_preset
    from reclor_lab.model import load_model, load_tokenizer
    from reclor_lab.train import fit, setup

    report = Report("head_init: random vs letters (tiny preset, val)",
                    settings={"seeds": seeds, "epochs": args.epochs})
    cfg = get_preset("tiny")
    tok = load_tokenizer(cfg.model_name_or_path)
    lm = load_model(cfg, tok, task="causal-lm")
    for k in [int(s) for s in args.shots.split(",")]:
        r = lm_baseline(cfg, shots=k, model=lm, tokenizer=tok, verbose=False)
        lo, hi = r["accuracy_ci95"]
        report.add(f"{r['method']} LM scoring", r["accuracy"], "acc",
                   f"[{lo:.3f}, {hi:.3f}]; {r['prompts_with_all_shots']}/{r['n']} prompts with all shots", show=True)
    del lm
    results: dict[str, dict[int, list[float]]] = {}
    for init in ("random", "letters"):
        for seed in seeds:
            with tempfile.TemporaryDirectory() as tmp:
                run_cfg = get_preset("tiny", head_init=init, seed=seed, epochs=args.epochs,
                                     output_dir=str(Path(tmp) / "run"))
                history = fit(setup(run_cfg, verbose=False), run_cfg.output_dir, verbose=False)
            for e in history.evals:
                results.setdefault(init, {}).setdefault(e["epoch"], []).append(e["accuracy"])
                lo, hi = e["accuracy_ci95"]
                report.add(f"{init} seed {seed} epoch {e['epoch']}", e["accuracy"], "acc", f"[{lo:.3f}, {hi:.3f}]",
                           show=True)
    for init, by_epoch in results.items():
        for epoch, accs in by_epoch.items():
            spread = f"min {min(accs):.3f}, max {max(accs):.3f}"
            report.add(f"{init} epoch {epoch} mean over {len(accs)} seeds", statistics.mean(accs), "acc", spread)
    finish(report, args.json)


if __name__ == "__main__":
    main()
