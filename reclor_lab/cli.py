"""The ``reclor-lab`` command line (also ``python -m reclor_lab``).

Every command turns bad input (files, config values, arguments) into one clear message on
stderr and exit status 1 (2 for malformed arguments, as argparse does), never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# The kit never reaches the hub: everything it loads is on disk (see README, "Offline").
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from reclor_lab.config import OPTION_LETTERS, TINY_MODEL_DIR, ConfigError


class UsageError(Exception):
    """A problem with what the user asked for; printed as one line, exit status 1."""


# --- data ----------------------------------------------------------------------------------

def cmd_data_check(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from reclor_lab.data import label_distribution, read_reclor, tokenize_records

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    for path in args.paths:
        records = read_reclor(path)
        labeled = "label" in records[0]
        print(f"{path}: {len(records)} records, {'labeled' if labeled else 'unlabeled'}")
        if labeled:
            dist = label_distribution(records)
            n = len(records)
            print("  labels: " + ", ".join(f"{k} {v} ({100 * v / n:.1f}%)" for k, v in dist.items()))
        _, stats = tokenize_records(records, tokenizer, args.max_len)
        print("  " + stats.line())
    return 0


def cmd_data_show(args: argparse.Namespace) -> int:
    from reclor_lab.config import REFERENCE_TEMPLATE
    from reclor_lab.data import format_example, read_reclor

    records = read_reclor(args.path)
    if not -len(records) <= args.index < len(records):
        raise UsageError(f"--index {args.index} is out of range: {args.path} has {len(records)} records (0-{len(records) - 1})")
    rec = records[args.index]
    print(format_example(rec, args.template or REFERENCE_TEMPLATE))
    if "label" in rec:
        print(f"[label: {rec['label']} = Option {OPTION_LETTERS[rec['label']]}; id_string: {rec['id_string']}]")
    else:
        print(f"[unlabeled; id_string: {rec['id_string']}]")
    return 0


def cmd_data_generate(args: argparse.Namespace) -> int:
    from reclor_lab.synth import write_bundled_data

    out = Path(args.output)
    existing = [p for p in (out / f"{s}.json" for s in ("train", "val", "test")) if p.exists()]
    if existing and not args.force:
        raise UsageError(f"{existing[0]} exists; pass --force to overwrite or choose another --output")
    for split, path in write_bundled_data(out).items():
        print(f"wrote {path}")
    return 0


# --- tiny model ----------------------------------------------------------------------------

def cmd_tiny_build(args: argparse.Namespace) -> int:
    from reclor_lab.tiny import build_tiny_model

    out = Path(args.output)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise UsageError(f"{out} exists and is not empty; pass --force to replace it or choose another --output")
    path = build_tiny_model(out, seed=args.seed)
    print(f"tiny model written to {path}")
    return 0


# --- parser --------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reclor-lab", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="check, show or generate ReClor-format files")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    check = dsub.add_parser("check", help="validate ReClor files and print their statistics")
    check.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    check.add_argument("--model", default=str(TINY_MODEL_DIR), help="tokenizer to measure lengths with (default: the tiny model's)")
    check.add_argument("--max-len", type=_positive_int, default=512, help="truncation length to count against (default 512)")
    check.set_defaults(func=cmd_data_check)
    show = dsub.add_parser("show", help="print one record formatted exactly as the model sees it")
    show.add_argument("path", type=Path)
    show.add_argument("--index", type=int, default=0)
    show.add_argument("--template", default=None, help="input layout (default: the reference layout)")
    show.set_defaults(func=cmd_data_show)
    gen = dsub.add_parser("generate", help="regenerate the bundled ReClor-format data set")
    gen.add_argument("--output", default="data", help="folder for train/val/test.json (default: data)")
    gen.add_argument("--force", action="store_true", help="overwrite existing files")
    gen.set_defaults(func=cmd_data_generate)

    tiny = sub.add_parser("tiny", help="the tiny offline Llama used on CPUs")
    tsub = tiny.add_subparsers(dest="tiny_command", required=True, metavar="SUBCOMMAND")
    build = tsub.add_parser("build", help="build (pre-train) the tiny model and its tokenizer")
    build.add_argument("--output", default=str(TINY_MODEL_DIR))
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--force", action="store_true", help="replace an existing model directory")
    build.set_defaults(func=cmd_tiny_build)
    return p


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    from reclor_lab.data import DataError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DataError, ConfigError, UsageError) as e:
        print(f"reclor-lab: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("reclor-lab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
