"""Data preparation: load, format and tokenize a ReClor-size set (6,138 records), the kit's way
and the reference's way.

- kit, first run: ``reclor_lab.data.tokenize_records(..., cache=False)``: the texts are formatted
  in one list comprehension and tokenized in one call by the fast tokenizer's Rust backend
  (``encode_batch_fast``: all cores, no offsets), then put into Arrow in one ``from_dict``.
- kit, repeat run: ``tokenize_records`` with its token cache (``reclor_lab.runs.cache``) already holding
  the splits, as on every run after the first with the same files, tokenizer and ``max_len``.
  Also timed: the first run with the cache on (tokenize + write the entries).
- reference: ``Dataset.from_list(records).map(lambda ex: tokenizer(format(ex), truncation=True,
  max_length=...))``: one Python call, one tokenizer call and one Arrow row write per record.

All give identical token ids (checked). The datasets library's own cache serves none of them:
every dataset lives in memory (no cache files, asserted), and the reference's map is given
``keep_in_memory=True, load_from_cache_file=False``. The kit's token cache lives in a temporary
folder that is deleted at the end.

    python bench/data_prep.py [--tokenizer PATH] [--max-len 512] [--quick] [--json PATH]
"""

from __future__ import annotations

import shutil
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
    from reclor_lab.data import column, format_example, load_split, tokenize_records
    from reclor_lab.runs.cache import encode_texts
    from reclor_lab.model import load_tokenizer

    datasets.disable_progress_bars()  # a progress bar per map would be timed too
    tokenizer = load_tokenizer(args.tokenizer)
    max_len, template = args.max_len, REFERENCE_TEMPLATE
    splits, source = reclor_size_records()
    report = Report("data preparation: load + format + tokenize a ReClor-size set")
    report.settings = {"records": sum(len(r) for r in splits.values()), "source": source,
                       "tokenizer": args.tokenizer, "max_len": max_len, "warmup": warmup, "repeat": repeat}
    print(f"{report.settings['records']:,} records ({source}); timing {warmup} warm-up + {repeat} runs each",
          flush=True)

    cache_dir = Path(tempfile.mkdtemp(prefix="reclor-lab-bench-cache-"))

    def kit(cache=False):
        return {s: tokenize_records(recs, tokenizer, max_len, template, cache=cache)[0] for s, recs in splits.items()}

    def kit_first_run_with_cache():
        shutil.rmtree(cache_dir, ignore_errors=True)
        return kit(cache_dir)

    def reference():
        out = {}
        for s, recs in splits.items():
            ds = Dataset.from_list(recs)
            out[s] = ds.map(lambda ex: tokenizer(format_example(ex, template), truncation=True, max_length=max_len),
                            keep_in_memory=True, load_from_cache_file=False)
        return out

    # --- identical results, nothing from a cache ---------------------------------------------
    ours, theirs = kit(), reference()
    kit_first_run_with_cache()
    cached = kit(cache_dir)
    # a record longer than max_len differs by design: the kit shortens its passage, the
    # reference cuts its end; every other record must have the same ids on every path
    for s in splits:
        fits = [n <= max_len for n in column(ours[s], "full_length")]
        for name, ds in (("kit", ours[s]), ("kit, cached", cached[s]), ("reference", theirs[s])):
            assert not ds.cache_files, f"{name}: the {s} dataset was backed by datasets cache files"
            a, b = ds["input_ids"], theirs[s]["input_ids"]
            bad = [i for i, (x, y, ok) in enumerate(zip(a, b, fits)) if ok and x != y]
            assert len(a) == len(b) == len(splits[s]) and not bad, (
                f"{s}: token ids differ between {name} and the reference at records {bad[:5]} "
                f"(id_string {splits[s][bad[0]]['id_string']!r})" if bad else f"{s}: lengths differ")
    lengths = [n for s in splits for n in column(ours[s], "full_length")]
    longer = sum(n > max_len for n in lengths)
    report.add("token ids identical (kit, kit cached, reference)", "yes", "",
               f"all {len(lengths) - longer:,} records within max_len; the {longer} longer ones are shortened "
               "in the passage by the kit, cut at the end by the reference")
    report.add("tokens per example, mean", sum(lengths) / len(lengths), "tokens")
    report.add("tokens per example, max", max(lengths), "tokens",
               f"{sum(n > max_len for n in lengths)} truncated at {max_len}")

    # --- load: the same for both sides --------------------------------------------------------
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_splits(splits, Path(tmp))
        t_load = timeit(lambda: [load_split(folder, s) for s in RECLOR_SIZES], warmup, repeat)
    report.add("load + validate 3 JSON files", t_load.median * 1e3, "ms", "read_reclor; same for both", show=True)

    def samples(t):
        return "samples " + ", ".join(f"{x:.3f}" for x in t.samples)

    t_kit = timeit(kit, warmup, repeat)
    report.add("kit, first run: format + tokenize", t_kit.median, "s", samples(t_kit), show=True)
    t_write = timeit(kit_first_run_with_cache, warmup, repeat)
    report.add("kit, first run with the cache on (+ write)", t_write.median, "s", samples(t_write), show=True)
    t_cached = timeit(lambda: kit(cache_dir), warmup, repeat)
    report.add("kit, repeat run: from the token cache", t_cached.median, "s",
               samples(t_cached) + "; hashing the inputs included", show=True)
    t_ref = timeit(reference, warmup, repeat)
    report.add("reference: format + tokenize (per example)", t_ref.median, "s", samples(t_ref), show=True)
    texts = [format_example(r, template) for recs in splits.values() for r in recs]
    t_floor = timeit(lambda: encode_texts(texts, tokenizer), warmup, repeat)
    report.add("the tokenizer alone (one encode_batch_fast call)", t_floor.median, "s",
               f"{samples(t_floor)}; no first run can beat this on {report.machine['cores']} cores", show=True)
    shutil.rmtree(cache_dir, ignore_errors=True)

    speedup = t_ref.median / t_kit.median
    speedup_cached = t_ref.median / t_cached.median
    report.add("speed-up, first run", speedup, "x", "reference time / kit time", show=True)
    report.add("speed-up, repeat run (cached)", speedup_cached, "x", "reference time / kit cached time", show=True)
    total = (t_ref.median + t_load.median) / (t_kit.median + t_load.median)
    report.add("speed-up, first run, load + format + tokenize", total, "x")
    report.add("speed-up bound, first run", t_ref.median / t_floor.median, "x", "reference time / tokenizer-alone time")
    report.add("kit throughput, first run", len(lengths) / t_kit.median, "records/s")
    report.add("reference throughput", len(lengths) / t_ref.median, "records/s")
    report.goal(f"kit at least {GOAL_SPEEDUP:g}x faster than the reference, first run (nothing cached)",
                speedup >= GOAL_SPEEDUP, f"{speedup:.1f}x")
    report.goal(f"kit at least {GOAL_SPEEDUP:g}x faster than the reference, repeat run (token cache)",
                speedup_cached >= GOAL_SPEEDUP, f"{speedup_cached:.1f}x")
    finish(report, args.json)


if __name__ == "__main__":
    main()
