"""Data preparation: load, format and tokenize a ReClor-size set (5,638 records), the kit's way
and the reference's way.

- kit: ``reclor_lab.data.tokenize_records``: the texts are formatted in one list comprehension and
  tokenized by the fast (Rust) tokenizer 1,000 at a time inside ``Dataset.map(batched=True)``.
- reference: ``Dataset.from_list(records).map(lambda ex: tokenizer(format(ex), truncation=True,
  max_length=...))``: one Python call, one tokenizer call and one Arrow row write per record.

Both must give identical token ids (checked). Neither is served from the datasets cache: both
datasets live in memory (no cache files, asserted), and the reference's map is also given
``keep_in_memory=True, load_from_cache_file=False``.

    python bench/data_prep.py [--tokenizer PATH] [--max-len 512] [--quick] [--json PATH]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from common import (
    RECLOR_SIZES, Report, check_model_dir, default_tokenizer_path, finish, parser, reclor_size_records,
    timeit, write_splits,
)

#: The kit must be at least this many times faster than the reference.
GOAL_SPEEDUP = 5.0


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--tokenizer", default=default_tokenizer_path(),
                   help="local tokenizer folder (default: the tiny model's; e.g. a local Llama-2)")
    p.add_argument("--max-len", type=int, default=512, help="truncation length (the reference's 512)")
    p.add_argument("--repeat", type=int, default=3, help="timed repetitions per variant (median reported)")
    args = p.parse_args()
    check_model_dir(args.tokenizer)
    warmup, repeat = (0, 1) if args.quick else (1, args.repeat)

    import datasets
    from datasets import Dataset

    from reclor_lab.config import REFERENCE_TEMPLATE
    from reclor_lab.data import format_example, load_split, tokenize_records
    from reclor_lab.modeling import load_tokenizer

    datasets.disable_progress_bars()  # a progress bar per map would be timed too
    tokenizer = load_tokenizer(args.tokenizer)
    max_len, template = args.max_len, REFERENCE_TEMPLATE
    splits, source = reclor_size_records()
    report = Report("data preparation: load + format + tokenize a ReClor-size set")
    report.settings = {"records": sum(len(r) for r in splits.values()), "source": source,
                       "tokenizer": args.tokenizer, "max_len": max_len, "warmup": warmup, "repeat": repeat}
    print(f"{report.settings['records']:,} records ({source}); timing {warmup} warm-up + {repeat} runs each",
          flush=True)

    def kit():
        return {s: tokenize_records(recs, tokenizer, max_len, template)[0] for s, recs in splits.items()}

    def reference():
        out = {}
        for s, recs in splits.items():
            ds = Dataset.from_list(recs)
            out[s] = ds.map(lambda ex: tokenizer(format_example(ex, template), truncation=True, max_length=max_len),
                            keep_in_memory=True, load_from_cache_file=False)
        return out

    # --- identical results, nothing from a cache ---------------------------------------------
    ours, theirs = kit(), reference()
    for s in splits:
        assert not ours[s].cache_files and not theirs[s].cache_files, "a dataset was backed by cache files"
        a, b = ours[s]["input_ids"], theirs[s]["input_ids"]
        bad = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
        assert len(a) == len(b) == len(splits[s]) and not bad, (
            f"{s}: token ids differ between the kit and the reference at records {bad[:5]} "
            f"(id_string {splits[s][bad[0]]['id_string']!r})" if bad else f"{s}: lengths differ")
    lengths = [n for s in splits for n in ours[s]["full_length"]]
    report.add("token ids identical (kit vs reference)", "yes", "", f"all {len(lengths):,} records")
    report.add("tokens per example, mean", sum(lengths) / len(lengths), "tokens")
    report.add("tokens per example, max", max(lengths), "tokens",
               f"{sum(n > max_len for n in lengths)} truncated at {max_len}")

    # --- load: the same for both sides --------------------------------------------------------
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_splits(splits, Path(tmp))
        t_load = timeit(lambda: [load_split(folder, s) for s in RECLOR_SIZES], warmup, repeat)
    report.add("load + validate 3 JSON files", t_load.median * 1e3, "ms", "read_reclor; same for both", show=True)

    t_kit = timeit(kit, warmup, repeat)
    report.add("kit: format + tokenize (batched)", t_kit.median, "s",
               "samples " + ", ".join(f"{x:.2f}" for x in t_kit.samples), show=True)
    t_ref = timeit(reference, warmup, repeat)
    report.add("reference: format + tokenize (per example)", t_ref.median, "s",
               "samples " + ", ".join(f"{x:.2f}" for x in t_ref.samples), show=True)
    speedup = t_ref.median / t_kit.median
    report.add("speed-up, format + tokenize", speedup, "x", "reference time / kit time", show=True)
    total = (t_ref.median + t_load.median) / (t_kit.median + t_load.median)
    report.add("speed-up, load + format + tokenize", total, "x")
    report.add("kit throughput", len(lengths) / t_kit.median, "records/s")
    report.add("reference throughput", len(lengths) / t_ref.median, "records/s")
    report.goal(f"kit at least {GOAL_SPEEDUP:g}x faster than the reference", speedup >= GOAL_SPEEDUP,
                f"{speedup:.1f}x")
    finish(report, args.json)


if __name__ == "__main__":
    main()
