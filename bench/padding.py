"""Padding: the fraction of the tokens in padded batches that are padding, per epoch, with and
without length-grouped batching, at the reference's batch size (2) and at 8.

Each batch is padded to its own longest example (the kit's collator), so padding only comes from
length differences inside a batch. Length grouping (``reclor_lab.data.length_grouped_batches``)
sorts windows of 50 batches by length before cutting them into batches, then shuffles the batches.
Lengths are the token counts of the ReClor-size set's training split (see ``common.py``).

    python bench/padding.py [--tokenizer PATH] [--max-len 512] [--epochs 3] [--json PATH]
"""

from __future__ import annotations

import statistics

from common import Report, check_model_dir, default_tokenizer_path, finish, parser, reclor_size_records

#: Padding allowed with length grouping.
GOAL_PADDING = 0.05
BATCH_SIZES = (2, 8)


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--tokenizer", default=default_tokenizer_path(), help="local tokenizer folder")
    p.add_argument("--max-len", type=int, default=512, help="truncation length (the reference's 512)")
    p.add_argument("--epochs", type=int, default=3, help="epochs (batch orders) averaged per setting")
    p.add_argument("--seed", type=int, default=42, help="seed of the batch order (the presets' seed)")
    args = p.parse_args()
    check_model_dir(args.tokenizer)
    epochs = 1 if args.quick else args.epochs

    import datasets

    from reclor_lab.data import column, epoch_batches, padding_fraction, tokenize_records
    from reclor_lab.model import load_tokenizer

    datasets.disable_progress_bars()
    splits, source = reclor_size_records()
    ds, stats = tokenize_records(splits["train"], load_tokenizer(args.tokenizer), args.max_len, cache=False)
    lengths = column(ds, "length")
    report = Report("padding per epoch, with and without length grouping")
    report.settings = {"examples": len(lengths), "source": source, "tokenizer": args.tokenizer,
                       "max_len": args.max_len, "epochs": epochs, "seed": args.seed}
    report.add("train tokens per example, mean", stats.mean, "tokens")
    report.add("train tokens per example, p95 / max", f"{stats.p95:.0f} / {stats.max}", "tokens",
               f"{stats.truncated} truncated at {args.max_len}")

    results = {}
    for bs in BATCH_SIZES:
        for grouped in (False, True):
            fracs = [padding_fraction(lengths, epoch_batches(lengths, bs, args.seed, e, grouped))
                     for e in range(1, epochs + 1)]
            results[bs, grouped] = statistics.mean(fracs)
            report.add(f"batch {bs}, {'length-grouped' if grouped else 'shuffled (reference)'}",
                       100 * results[bs, grouped], "% padding",
                       f"mean of {epochs} epochs; worst {100 * max(fracs):.2f} %")
        saved = 1 - (1 - results[bs, False]) / (1 - results[bs, True])
        report.add(f"batch {bs}: padded tokens computed, grouping saves", 100 * saved, "%",
                   "of the tokens a shuffled epoch pushes through the model")
    for bs in BATCH_SIZES:
        report.goal(f"padding <= {GOAL_PADDING:.0%} with grouping at batch {bs}",
                    results[bs, True] <= GOAL_PADDING, f"{100 * results[bs, True]:.2f} %")
    finish(report, args.json)


if __name__ == "__main__":
    main()
