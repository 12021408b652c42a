"""The ``reclor-lab`` command line (also ``python -m reclor_lab``).

Every command turns bad input (files, config values, arguments) into one clear message on
stderr and exit status 1 (2 for malformed arguments, as argparse does), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

# The kit never reaches the hub: everything it loads is on disk (see README, "Offline").
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

# Only these two at the top: each command imports what it uses inside itself, so it loads only
# that. Measured with python -X importtime on a loaded 2-core machine: `reclor-lab plan` imports
# 16 s of modules (torch), every kit module together 57 s (transformers' Trainer, peft, datasets).
from reclor_lab.config import OPTION_LETTERS, REPO_ROOT, TINY_MODEL_DIR
from reclor_lab.errors import ReclorLabError, TrainingInterrupted


class UsageError(ReclorLabError):
    """A problem with what the user asked for; printed as one line, exit status 1."""


# --- a terminal that cannot show every character ------------------------------------------------

#: What the kit prints in place of a character the terminal's encoding lacks (``PYTHONIOENCODING=
#: ascii``, a C locale, a latin-1 console); any other such character is written as ``\uXXXX``.
ASCII_FALLBACKS = {"→": "->", "←": "<-", "↔": "<->", "⇒": "=>", "↑": "^", "↓": "v", "×": "x", "–": "-",
                   "—": "--", "…": "...", "±": "+/-", "≤": "<=", "≥": ">=", "≈": "~", "≠": "!=", "·": ".",
                   "“": '"', "”": '"', "‘": "'", "’": "'", "█": "#", "▏": "|", "µ": "u", "°": " deg"}
_FALLBACK_ERRORS = "reclor-lab-fallback"


def _fallback(err: UnicodeError) -> tuple[str, int]:
    if not isinstance(err, UnicodeEncodeError):
        raise err
    text = err.object[err.start:err.end]
    return "".join(ASCII_FALLBACKS.get(ch) or ch.encode("ascii", "backslashreplace").decode() for ch in text), err.end


def plain_text_fallback(streams=None) -> None:
    """Let stdout and stderr write what their encoding cannot show with :data:`ASCII_FALLBACKS`
    instead of raising UnicodeEncodeError (only on a stream whose encoding lacks "→")."""
    import codecs

    try:
        codecs.lookup_error(_FALLBACK_ERRORS)
    except LookupError:
        codecs.register_error(_FALLBACK_ERRORS, _fallback)
    for stream in streams or (sys.stdout, sys.stderr):
        encoding = getattr(stream, "encoding", None)
        try:
            "→…×".encode(encoding or "utf-8")
        except (UnicodeEncodeError, LookupError):
            reconfigure = getattr(stream, "reconfigure", None)
            if reconfigure is not None:
                reconfigure(errors=_FALLBACK_ERRORS)


# --- data ----------------------------------------------------------------------------------

#: What ``data check`` says of its default tokenizer (the tiny model's: see reclor_lab/tools/tiny.py).
LLAMA2_NOTE = ": Llama-2's, the same ids as meta-llama/Llama-2-7b-hf"


def cmd_data_check(args: argparse.Namespace) -> int:
    from reclor_lab.data import label_distribution, measure_records, read_reclor

    from reclor_lab.model import load_tokenizer

    tokenizer = load_tokenizer(args.model)
    print(f"token counts: the tokenizer of {args.model} ({type(tokenizer).__name__}, {len(tokenizer):,} tokens"
          f"{LLAMA2_NOTE if args.model == str(TINY_MODEL_DIR) else ''}), max_len {args.max_len}")
    for path in args.paths:
        records = read_reclor(path)
        labeled = "label" in records[0]
        print(f"{path}: {len(records)} records, {'labeled' if labeled else 'unlabeled'}")
        if labeled:
            dist = label_distribution(records)
            n = len(records)
            print("  labels: " + ", ".join(f"{k} {v} ({100 * v / n:.1f}%)" for k, v in dist.items()))
        # chunk by chunk, no tokens kept, no cache entry written: a check of a large file
        # needs little more memory than its records
        print("  " + measure_records(records, tokenizer, args.max_len, source=path).line())
        del records
    return 0


def cmd_data_show(args: argparse.Namespace) -> int:
    from reclor_lab.config import REFERENCE_TEMPLATE
    from reclor_lab.data import format_example, read_reclor

    from reclor_lab.runs.config_checks import template_problems

    if args.template is not None and (problems := template_problems(args.template)):
        raise UsageError(f"--template {args.template!r}: " + "; ".join(problems))
    records = read_reclor(args.path)
    if not -len(records) <= args.index < len(records):
        raise UsageError(f"--index {args.index} is out of range: {args.path} has {len(records)} records "
                         f"(0-{len(records) - 1})")
    rec = records[args.index]
    print(format_example(rec, args.template or REFERENCE_TEMPLATE))
    if "label" in rec:
        print(f"[label: {rec['label']} = Option {OPTION_LETTERS[rec['label']]}; id_string: {rec['id_string']}]")
    else:
        print(f"[unlabeled; id_string: {rec['id_string']}]")
    return 0


def cmd_data_types(args: argparse.Namespace) -> int:
    from reclor_lab.data import DataError, read_reclor
    from reclor_lab.results.qtypes import QUESTION_TYPES, agreement, classify_question, official_type

    report = []
    for path in args.paths:
        records = read_reclor(path)
        rows = []
        for i, r in enumerate(records):
            try:
                official = official_type(r)
            except ValueError as e:
                raise DataError(f"{path}: record {i}: {e}") from None
            inferred = classify_question(r["question"])
            rows.append({"id_string": r["id_string"], "inferred": inferred, "inferred_name": QUESTION_TYPES[inferred],
                         "official": official,
                         "official_name": None if official is None else QUESTION_TYPES[official]})
        agree = agreement(records)
        report.append({"path": str(path), "records": rows, "agreement": None if agree is None else {
            "per_type": {QUESTION_TYPES[t]: {"agree": a, "records": n} for t, (a, n) in agree.per_type.items()},
            "agreeing": agree.agreeing, "total": agree.total, "overall": agree.rate}})
        if args.json:
            continue
        print(f"{path}: {len(records)} records")
        print(f"  {'id_string':<20} {'inferred type':<26} official type")
        for row in rows:
            official = "-" if row["official"] is None else f"{row['official']:>2} {row['official_name']}"
            print(f"  {row['id_string']:<20} {row['inferred']:>2} {row['inferred_name']:<23} {official}")
        if agree is None:
            print("  no official question_type in this file: nothing to compare the inferred types with")
        else:
            print("  agreement of the inferred type with the official one:")
            print("\n".join("  " + line for line in agree.table().splitlines()))
    if args.json:
        print(json.dumps({"files": report}, indent=2))
    return 0


def cmd_data_generate(args: argparse.Namespace) -> int:
    from reclor_lab.tools.synth import write_bundled_data

    out = Path(args.output)
    existing = [p for p in (out / f"{s}.json" for s in ("train", "val", "test")) if p.exists()]
    if existing and not args.force:
        raise UsageError(f"{existing[0]} exists; pass --force to overwrite or choose another --output")
    for split, path in write_bundled_data(out).items():
        print(f"wrote {path}")
    return 0


# --- tiny model ----------------------------------------------------------------------------

def cmd_tiny_build(args: argparse.Namespace) -> int:
    from reclor_lab.tools.tiny import build_tiny_model

    out = Path(args.output)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise UsageError(f"{out} exists and is not empty; pass --force to replace it or choose another --output")
    path = build_tiny_model(out, seed=args.seed)
    print(f"tiny model written to {path}")
    return 0


def cmd_tiny_tokenizer(args: argparse.Namespace) -> int:
    from reclor_lab.tools.tiny import LLAMA_TOKENIZER_JS, TOKENIZER_FILES, write_tokenizer

    out = Path(args.output)
    if args.package is not None and not args.package.is_file():
        raise UsageError(f"--package {args.package}: no such file (make it with `npm pack {LLAMA_TOKENIZER_JS}`)")
    path = write_tokenizer(out, args.package)
    print(f"Llama-2's tokenizer ({LLAMA_TOKENIZER_JS}) written to " + ", ".join(str(path / n) for n in TOKENIZER_FILES))
    return 0


# --- model ---------------------------------------------------------------------------------

def _config_from_args(args: argparse.Namespace):
    from reclor_lab.config import get_preset

    overrides = {}
    for arg, name in (("model", "model_name_or_path"), ("data_dir", "data_dir"), ("output_dir", "output_dir"),
                      ("epochs", "epochs"), ("quantization", "quantization"), ("seed", "seed")):
        value = getattr(args, arg, None)
        if value is not None:
            overrides[name] = str(value) if isinstance(value, Path) else value
    for item in getattr(args, "set", None) or []:
        name, value = _parse_setting(item)
        overrides[name] = value
    return get_preset(args.preset, **overrides)


def _parse_setting(item: str) -> tuple[str, Any]:
    """``FIELD=VALUE`` from ``--set``: the value is read as JSON (``8``, ``1e-4``, ``false``,
    ``null``, ``["q_proj"]``), else taken as a plain string. The config validates it."""
    name, sep, text = item.partition("=")
    if not sep or not name.strip():
        raise UsageError(f"--set {item!r}: expected FIELD=VALUE, e.g. --set batch_size=8")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    except ValueError as e:  # an integer of more than 4,300 digits
        raise UsageError(f"--set {name.strip()}=...: {str(e)[:120]}") from None
    except RecursionError:
        raise UsageError(f"--set {name.strip()}=...: the value is nested too deeply") from None
    return name.strip(), value


def cmd_model_info(args: argparse.Namespace) -> int:
    from reclor_lab.lora import find_lora_targets, inject_lora, predicted_lora_params, trainable_report
    from reclor_lab.model import bnb_config, load_model, load_tokenizer, memory_report

    cfg = _config_from_args(args)
    q = bnb_config(cfg)
    print(f"model: {cfg.model_name_or_path}")
    if q is None:
        print("quantization: none")
    else:
        print(f"quantization: 4-bit {q.bnb_4bit_quant_type}, double quant {q.bnb_4bit_use_double_quant}, "
              f"compute dtype {str(q.bnb_4bit_compute_dtype).removeprefix('torch.')}")
    tokenizer = load_tokenizer(cfg.model_name_or_path)
    model = load_model(cfg, tokenizer)
    print(memory_report(model).table())
    targets = find_lora_targets(model)
    print(f"LoRA targets (every {'4-bit ' if q else ''}linear layer except the head): {', '.join(targets)}")
    predicted = predicted_lora_params(model, targets, cfg.lora_r)
    model = inject_lora(model, cfg)
    print(trainable_report(model).line())
    print(f"predicted from r={cfg.lora_r} and the layer shapes: {predicted:,} trainable")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from reclor_lab.tools.plan import (
        DEFAULT_BATCHES, GIB, Planner, PlanSettings, choose_batch, gpu_compute_bytes, model_shape, parse_memory,
        plan_table,
    )

    cfg = _config_from_args(args)
    budget = parse_memory(args.gpu_memory) if args.gpu_memory is not None else (
        parse_memory(cfg.gpu_memory) if cfg.gpu_memory is not None else None)
    shape, source = model_shape(cfg.model_name_or_path)
    compute_bytes = gpu_compute_bytes(cfg)
    planner = Planner(shape, PlanSettings.from_config(cfg, compute_bytes))
    s = planner.settings
    print(f"model shape ({source}): hidden {shape.hidden}, intermediate {shape.intermediate}, "
          f"{shape.layers} layers, {shape.heads} heads ({shape.kv_heads} key/value), vocab {shape.vocab}")
    scaling = " (fp16 with loss scaling)" if cfg.compute_dtype == "float16" else ""
    print(f"settings: NF4{' + double quant' if s.double_quant else ''}, compute {compute_bytes * 8}-bit{scaling}, "
          f"LoRA r={s.lora_r} on all 7 projections, dropout {'on' if s.dropout else 'off'}, "
          f"upcast `{s.upcast}` (residual stream {s.stream_bytes * 8}-bit)")
    lengths = args.max_len or sorted({256, cfg.max_len, 640})
    print(plan_table(planner, budget, args.batch_sizes or DEFAULT_BATCHES, lengths))
    if budget is not None:
        choice = choose_batch(planner, cfg, budget)
        print(f"batch_size auto ({cfg.auto_batch}) at max_len {cfg.max_len} for {budget / GIB:.2f} GiB: "
              f"{choice.reason}")
        if args.breakdown and choice.estimate is not None:
            print(choice.estimate.breakdown())
    return 0


# --- training and what follows ---------------------------------------------------------------

def cmd_train(args: argparse.Namespace) -> int:
    from reclor_lab.runs.distributed import launched
    from reclor_lab.runs.job import train_run

    if args.processes > 1 and args.trainer:
        raise UsageError("--trainer runs in one process; several processes train with the manual loop "
                         "(drop --trainer or --processes)")
    cfg = _config_from_args(args)
    if args.processes > 1 and not launched():
        return _launch(args.processes, args.argv, cfg.output_dir)
    if args.resume and args.set:
        raise UsageError("--set cannot change a resumed run (it keeps its saved config.json; "
                         "only --epochs may extend it): drop --set, or start a new run")
    # A resumed run keeps its own saved config; only --epochs may extend it. The directory named
    # on the command line is the run, whatever output_dir its config.json recorded.
    train_run(cfg, resume=args.resume, use_trainer=args.trainer, saved_config=args.resume, epochs=args.epochs)
    return 0


#: A log line of torch's launcher (``W1203 08:30:01.123000 1234 torch/distributed/run.py:793] …``).
_LAUNCHER_LOG = re.compile(r"[IWE]\d{4} [\d:.]+ \d+ \S*torch/distributed/")
#: The exceptions with which the launcher reports a process that failed or a signal it received.
_LAUNCHER_FAILURES = ("ChildFailedError", "SignalException")


def launcher_stderr(lines, out) -> bool:
    """Copy the processes' stderr to ``out``, less the launcher's own report of a failure (its
    log lines, its traceback ending in ChildFailedError or SignalException, and the table after
    it): each process has said what happened in one line already. True when the launcher
    reported a failure."""
    held: list[str] | None = None
    for line in lines:
        if held is not None:  # inside a traceback: keep it unless it is the launcher's own
            held.append(line)
            if not line.startswith((" ", "\t", "Traceback")):
                if any(name in line for name in _LAUNCHER_FAILURES):
                    return True  # the launcher's last words: the report, then it exits
                out.writelines(held)
                held = None
            continue
        if line.startswith("Traceback (most recent call last):"):
            held = [line]
        elif not _LAUNCHER_LOG.match(line):
            out.write(line)
    if held:
        out.writelines(held)
    return False


def _launch(processes: int, argv: list[str], output_dir: str) -> int:
    """``reclor-lab train --processes N …``: the same command in N processes on this machine,
    started by torch's launcher (what ``accelerate launch`` runs too), one per GPU or N on a CPU.
    Returns the launcher's exit status; a process that failed or was killed is one line."""
    import signal
    import subprocess

    import torch

    if torch.cuda.is_available() and processes > torch.cuda.device_count():
        raise UsageError(f"--processes {processes}: this machine has {torch.cuda.device_count()} GPU(s); "
                         "one process per GPU")
    rest, skip = [], False
    for a in argv:  # the same arguments, less --processes
        if skip:
            skip = False
        elif a == "--processes":
            skip = True
        elif not a.startswith("--processes="):
            rest.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
           "-m", "reclor_lab", *rest]
    print(f"launching {processes} processes: {' '.join(cmd[1:])}", flush=True)
    launcher = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, errors="replace")
    # SIGTERM (a scheduler preempting the job) goes on to the launcher, which passes it to every
    # process; they checkpoint at the same step and exit. Ctrl-C reaches them all through the
    # terminal's process group already (passing it on would be a second signal: stop at once),
    # so here it only waits.
    stopped: list[int] = []

    def forward(signum, frame):
        stopped.append(signum)
        launcher.send_signal(signum)

    old = {signal.SIGTERM: signal.signal(signal.SIGTERM, forward),
           signal.SIGINT: signal.signal(signal.SIGINT, lambda signum, frame: stopped.append(signum))}
    try:
        failed = launcher_stderr(launcher.stderr, sys.stderr)
        code = launcher.wait()
        # the launcher itself reports a signal as a failure (1); the processes checkpointed
        if stopped and code:
            return 128 + stopped[0]
        if code and failed:
            print(f"reclor-lab: error: a training process failed or was killed (the launcher exited {code}); "
                  f"the last checkpoint is intact: resume with: reclor-lab train --resume --output-dir "
                  f"{output_dir} --processes {processes}", file=sys.stderr)
        return code
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from reclor_lab.runs.rundir import RunDir
    from reclor_lab.runs.job import evaluate_run, saved_metrics

    if args.zero_shot:
        return _lm_baseline(args)
    if args.shots is not None:
        raise UsageError("--shots goes with --zero-shot (LM scoring with K examples in front)")
    if args.run_dir is None:
        raise UsageError("give a RUN_DIR to evaluate, or --zero-shot --preset P for the untrained LM baseline")
    if args.preset or args.model or args.set:
        raise UsageError("--preset, --model and --set go with --zero-shot; a run is evaluated with its own config.json")

    check = args.split == "val" and RunDir(args.run_dir).metrics_path.exists()
    saved = saved_metrics(args.run_dir) if check else None  # a damaged file is reported before a model loads
    result = evaluate_run(args.run_dir, split=args.split)
    if saved is not None:
        same = abs(saved["accuracy"] - result["accuracy"]) < 1e-9
        print(f"saved val accuracy {saved['accuracy']:.3f} (epoch {saved['best_epoch']}): "
              f"{'reproduced' if same else 'NOT reproduced'}")
        if not same:
            return 1
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


def _lm_baseline(args: argparse.Namespace) -> int:
    import json

    from reclor_lab.results.baselines import lm_baseline, results_table, trivial_baselines, write_baseline
    from reclor_lab.config import RunConfig
    from reclor_lab.data import load_split, run_records
    from reclor_lab.runs.rundir import RunDir

    shots = args.shots or 0
    if args.run_dir is not None:
        if args.preset or args.model or args.set:
            raise UsageError("with a RUN_DIR the run's config.json is used: drop --preset, --model and --set")
        saved = RunDir(args.run_dir).config_path
        if not saved.is_file():
            raise UsageError(f"{args.run_dir}: not a run directory (no {saved.name}); or give --preset instead")
        cfg = RunConfig.load(saved)
    else:
        args.preset = args.preset or "tiny"
        cfg = _config_from_args(args)
    result = lm_baseline(cfg, shots=shots, split=args.split)
    records = run_records(cfg, args.split)
    rows = trivial_baselines([r["label"] for r in load_split(cfg.data_dir, "train")], [r["label"] for r in records])
    print(results_table(rows + [result]))
    if args.run_dir is not None:
        print(f"wrote {write_baseline(result, args.run_dir)}")
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k not in ("predictions", "probabilities")}, indent=2))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from reclor_lab.runs.job import predict_run

    predict_run(args.run_dir, split=args.split, output=args.output)
    return 0


# --- course mode -----------------------------------------------------------------------------

def cmd_course_build(args: argparse.Namespace) -> int:
    from reclor_lab.course import build as course

    if args.check:
        stale = course.check_up_to_date(args.source, args.output)
        if stale:
            raise UsageError("student notebooks are out of date: " + ", ".join(map(str, stale))
                             + "; run `reclor-lab course build`")
        print(f"{args.output}: up to date with {args.source}")
        return 0
    for path in course.build_student_notebooks(args.source, args.output):
        print(f"wrote {path}")
    return 0


def cmd_course_grade(args: argparse.Namespace) -> int:
    from reclor_lab.course import grade

    points = grade.parse_points(args.points)
    if args.csv is not None and not args.overwrite:
        _check_gradebook_free(args.csv)
    class_roster = _class_view_before(args)
    if args.csv is not None:
        grade.check_gradebook_path(args.csv)  # before grading: a bad path wastes no class's time
    results = grade.grade(args.submissions, jobs=args.jobs, seed=args.seed,
                          cpu_seconds=args.cpu_limit or grade.CPU_SECONDS,
                          memory_bytes=int(args.memory_limit * 2**30) if args.memory_limit else grade.MEMORY_BYTES,
                          wall_seconds=args.timeout or grade.WALL_SECONDS, sandboxed=not args.no_sandbox)
    class_rows, results = _class_view_rows(results, class_roster)
    print()
    print(grade.table(results))
    if args.csv is not None:
        written = grade.write_gradebook(results, args.csv, points)
        print(f"wrote {written[0]}, {written[1]} and {len(written) - 2} feedback file(s) in {written[-1].parent}")
    _class_view_after(args, class_rows, points)
    failed = [grade.printable(f"{r.student}/{Path(nb.path).name}") for r in results for nb in r.notebooks if nb.failed]
    if failed:
        print(f"reclor-lab: error: {len(failed)} notebook(s) could not be read or graded: {', '.join(failed[:10])}"
              + (" …" if len(failed) > 10 else "") + " (their rows say why)", file=sys.stderr)
    return 1 if failed else 0


def _check_gradebook_free(csv: Path) -> None:
    """Refuse (without --overwrite) a gradebook, its details file or a non-empty feedback folder
    that exists already."""
    taken = [p for p in (csv, csv.with_name(csv.stem + "_details.csv")) if p.exists()]
    feedback = csv.with_name(csv.stem + "_feedback")
    if feedback.is_dir() and any(feedback.iterdir()):
        taken.append(feedback)
    if taken:
        raise UsageError(f"{', '.join(map(str, taken))} exists; choose another --csv file or pass --overwrite")


# --- course grade: the instructor's view (roster, LMS exports, class report, feedback; issue 31) ----------

def _class_view_before(args: argparse.Namespace):
    """Check the roster and the class-view outputs before grading starts (minutes of work are not
    spent on a run whose files could not be written); return the roster (or ``None``)."""
    from reclor_lab.course import export, outfiles, roster

    entries = roster.read_roster(args.roster) if args.roster else None
    formats = [f for f in dict.fromkeys(args.export or []) if f != "kit"]
    if formats and args.csv is None:
        raise UsageError(f"--export {formats[0]} writes next to the gradebook: give --csv FILE too")
    if {"canvas", "moodle"} & set(formats) and entries is None:
        raise UsageError(f"--export {sorted({'canvas', 'moodle'} & set(formats))[0]} needs --roster: the LMS matches "
                         "a grade on a student id or e-mail, which only the roster has")
    targets = [export.export_path(args.csv, f) for f in formats] + ([args.report] if args.report else [])
    for path in targets:
        outfiles.check_free(path, args.overwrite)
    if args.feedback is not None:
        _check_feedback_folder(args.feedback, args.overwrite)
    return entries


def _check_feedback_folder(folder: Path, overwrite: bool) -> None:
    """Refuse a --feedback that is a link, or (without --overwrite) a folder with files in it."""
    if folder.is_symlink():
        raise UsageError(f"--feedback {folder} is a symbolic link; choose a real folder")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise UsageError(f"--feedback {folder} is not empty; choose another folder or pass --overwrite")


def _class_view_rows(results, entries) -> tuple[list, list]:
    """The class's rows (:func:`reclor_lab.course.roster.join`) and their results: with a roster,
    every roster student has one (every exercise ``missing`` when nothing was handed in)."""
    from reclor_lab.course import roster

    rows = roster.join(results, entries)
    return rows, [row.result for row in rows]


def _class_view_after(args: argparse.Namespace, rows, points) -> None:
    from reclor_lab.course import export, feedback, report, similar

    if any(row.rostered for row in rows):
        _roster_line(rows)
        if args.csv is not None:
            export.add_identity(args.csv, rows)
    for fmt in [f for f in dict.fromkeys(args.export or []) if f != "kit"]:
        path = export.export_path(args.csv, fmt)
        left_out = export.write_export(fmt, rows, points, path, overwrite=args.overwrite,
                                       canvas_columns=args.canvas_columns)
        print(f"wrote {path} ({fmt})" + (f"; left out, not in the roster: {', '.join(left_out)}" if left_out else ""))
    if args.report is not None:
        pairs = similar.similar_pairs([row.result for row in rows if row.submitted])
        report.write_report(args.report, rows, points, pairs, overwrite=args.overwrite)
        print(f"wrote {args.report}: {len(pairs.pairs)} similar pair(s) on exercise(s) "
              f"{', '.join(map(str, pairs.compared)) or 'none'}")
    if args.feedback is not None:
        written = feedback.write_feedback(rows, points, args.feedback, overwrite=args.overwrite)
        print(f"wrote {len(written)} feedback file(s) in {args.feedback}")


def _roster_line(rows) -> None:
    """How the submissions met the roster: who handed in nothing, which submissions it lacks."""
    entries = [row.entry for row in rows if row.entry is not None]
    missing = [row.submission for row in rows if not row.submitted]
    extra = [row.submission for row in rows if row.entry is None]
    print(f"roster: {len(entries)} student(s); {len(missing)} with no submission"
          + (f" ({', '.join(missing)})" if missing else "") + f"; {len(extra)} submission(s) not in the roster"
          + (f" ({', '.join(extra)})" if extra else ""))


def _positive_gib(text: str) -> float:
    """An argparse type: a finite number of GiB above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of GiB above 0 (e.g. 2 or 0.5), got {text!r}") from None
    if not (0 < value < 2**20):  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"expected a number of GiB above 0 (e.g. 2 or 0.5), got {text!r}")
    return value


# --- parser --------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reclor-lab",
                                description="Fine-tune a decoder LLM with 4-bit quantization + LoRA on ReClor.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="check, show or generate ReClor-format files")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    check = dsub.add_parser("check", help="validate ReClor files and print their statistics")
    check.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    check.add_argument("--model", default=str(TINY_MODEL_DIR),
                       help="tokenizer to measure lengths with (default: the tiny model's, which is Llama-2's)")
    check.add_argument("--max-len", type=_positive_int, default=512,
                       help="truncation length to count against (default 512)")
    check.set_defaults(func=cmd_data_check)
    show = dsub.add_parser("show", help="print one record formatted exactly as the model sees it")
    show.add_argument("path", type=Path)
    show.add_argument("--index", type=int, default=0)
    show.add_argument("--template", default=None, help="input layout (default: the reference layout)")
    show.set_defaults(func=cmd_data_show)
    types = dsub.add_parser("types", help="question type of each record: inferred from the stem, and the official one")
    types.add_argument("paths", nargs="+", type=Path, metavar="FILE")
    types.add_argument("--json", action="store_true", help="print everything as JSON instead of tables")
    types.set_defaults(func=cmd_data_types)
    gen = dsub.add_parser("generate", help="regenerate the bundled ReClor-format data set")
    gen.add_argument("--output", default="data", help="folder for train/val/test.json (default: data)")
    gen.add_argument("--force", action="store_true", help="overwrite existing files")
    gen.set_defaults(func=cmd_data_generate)

    tiny = sub.add_parser("tiny", help="the tiny offline Llama used on CPUs")
    tsub = tiny.add_subparsers(dest="tiny_command", required=True, metavar="SUBCOMMAND")
    build = tsub.add_parser("build", help="build (pre-train) the tiny model around the tokenizer in its folder")
    build.add_argument("--output", default=str(TINY_MODEL_DIR))
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--force", action="store_true", help="replace an existing model directory")
    build.set_defaults(func=cmd_tiny_build)
    tkn = tsub.add_parser("tokenizer", help="write Llama-2's tokenizer files from the npm package llama-tokenizer-js")
    tkn.add_argument("--output", default=str(TINY_MODEL_DIR),
                     help="folder for tokenizer.json and tokenizer_config.json "
                     "(other files are left alone; default: the tiny model's)")
    tkn.add_argument("--package", type=Path, default=None,
                     help="the package's tarball (default: `npm pack` it, from npm's cache or the registry)")
    tkn.set_defaults(func=cmd_tiny_tokenizer)

    model = sub.add_parser("model", help="inspect a model as the kit loads it")
    msub = model.add_subparsers(dest="model_command", required=True, metavar="SUBCOMMAND")
    info = msub.add_parser("info", help="quantization, memory table, LoRA targets, trainable parameters")
    _add_config_args(info)
    info.set_defaults(func=cmd_model_info)

    plan = sub.add_parser("plan", help="predict peak GPU memory per batch size, length and checkpointing")
    _add_config_args(plan)
    plan.add_argument("--gpu-memory", metavar="SIZE",
                      help="memory budget, e.g. 24GiB, 80GB, 16384MiB: marks what fits and what auto picks")
    plan.add_argument("--batch-sizes", type=_int_list, help="comma-separated micro-batch sizes (default 1,2,4,8,16)")
    plan.add_argument("--max-len", type=_int_list, help="comma-separated lengths (default 256, the preset's, 640)")
    plan.add_argument("--breakdown", action="store_true", help="with --gpu-memory: every component of auto's pick")
    plan.set_defaults(func=cmd_plan)

    train = sub.add_parser("train", help="fine-tune with 4-bit + LoRA (the kit's main job)")
    _add_config_args(train)
    train.add_argument("--data-dir", type=Path, help="folder with train.json / val.json (default: the preset's)")
    train.add_argument("--output-dir", type=Path, help="run directory (default: the preset's, e.g. runs/tiny)")
    train.add_argument("--epochs", type=_positive_int, help="number of epochs (default: the preset's)")
    train.add_argument("--seed", type=int, help="random seed (default: the preset's)")
    train.add_argument("--resume", action="store_true", help="continue the run in --output-dir after its last epoch")
    train.add_argument("--trainer", action="store_true",
                       help="train with the Hugging Face Trainer instead of the manual loop")
    train.add_argument("--processes", type=_positive_int, default=1, metavar="N",
                       help="data parallel over N processes on this machine (one per GPU; on a CPU, "
                            "N processes with the gloo backend); batch_size is per process")
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("evaluate", help="reload a run's best adapter and evaluate it; or the zero-shot LM baseline")
    ev.add_argument("run_dir", type=Path, nargs="?", metavar="RUN_DIR",
                    help="a run directory (with --zero-shot: its config is used and the result JSON written there)")
    ev.add_argument("--split", choices=["val", "train"], default="val")
    ev.add_argument("--json", action="store_true", help="also print every metric as JSON")
    ev.add_argument("--zero-shot", action="store_true",
                    help="score the untrained model as a causal LM: next-token logits of the letters after ' Answer:'")
    ev.add_argument("--shots", type=_non_negative_int, metavar="K",
                    help="with --zero-shot: K labelled training examples in front of each question (k-shot)")
    from reclor_lab.config import PRESETS

    ev.add_argument("--preset", choices=list(PRESETS),
                    help="with --zero-shot and no RUN_DIR: the configuration (default: tiny)")
    ev.add_argument("--model", help="with --zero-shot: model id or local directory (default: the preset's)")
    ev.add_argument("--set", action="append", metavar="FIELD=VALUE", help="with --zero-shot: override a config field")
    ev.set_defaults(func=cmd_evaluate)

    pr = sub.add_parser("predict", help="predict answers for a split (e.g. the unlabeled test split)")
    pr.add_argument("run_dir", type=Path)
    pr.add_argument("--split", choices=["test", "val", "train"], default="test")
    pr.add_argument("--output", type=Path, help="where to write the .npy (default: RUN_DIR/predictions-SPLIT.npy)")
    pr.set_defaults(func=cmd_predict)

    course_p = sub.add_parser("course", help="course mode: student notebooks from the reference ones")
    csub = course_p.add_subparsers(dest="course_command", required=True, metavar="SUBCOMMAND")
    cb = csub.add_parser("build", help="generate notebooks/student/ (solutions replaced by stubs)")
    cb.add_argument("--source", type=Path, default=REPO_ROOT / "notebooks",
                    help="reference notebooks (default: the repository's notebooks/)")
    cb.add_argument("--output", type=Path, default=REPO_ROOT / "notebooks" / "student",
                    help="where the student set goes (default: notebooks/student/)")
    cb.add_argument("--check", action="store_true", help="only check that the student set is up to date")
    cb.set_defaults(func=cmd_course_build)
    cg = csub.add_parser("grade", help="judge a class's notebooks (without running them) into a gradebook")
    cg.add_argument("submissions", nargs="+", type=Path, metavar="SUBMISSIONS",
                    help="a class folder (one sub-folder per student, or STUDENT__NN_name.ipynb files), "
                         "or .ipynb files")
    cg.add_argument("--jobs", type=_positive_int, default=1, help="students' sandboxes run at once (default: 1)")
    cg.add_argument("--csv", type=Path, help="write the gradebook here, with FILE_details.csv and FILE_feedback/")
    cg.add_argument("--overwrite", action="store_true", help="let --csv replace an existing gradebook")
    cg.add_argument("--points", help="points per exercise, e.g. 8=2,10=2 (default: 1 each)")
    cg.add_argument("--seed", type=int, help="seed of the hidden cases (default: drawn afresh)")
    cg.add_argument("--timeout", type=_positive_int,
                    help="wall-clock seconds per exercise before it is stopped (default: grade.WALL_SECONDS, 180)")
    cg.add_argument("--cpu-limit", type=_positive_int, help="CPU seconds per exercise (default: grade.CPU_SECONDS, 60)")
    cg.add_argument("--memory-limit", type=_positive_gib,
                    help="GiB an exercise may add to what its sandbox's runner holds (default: 2)")
    cg.add_argument("--no-sandbox", action="store_true",
                    help="run the submissions WITHOUT the OS sandbox (trusted ones only: every row says so)")
    # the instructor's view of the class (issue 31): roster, LMS exports, class report, feedback
    cg.add_argument("--roster", type=Path, help="CSV with columns submission,id,name,email: maps folder or file "
                                                 "names to students; roster students with no submission get 0")
    cg.add_argument("--export", action="append", choices=["kit", "otter", "canvas", "moodle"],
                    help="also write the gradebook for otter-grader, Canvas or Moodle next to --csv "
                         "(FILE_otter.csv …; repeatable; canvas and moodle need --roster; default: the kit's only)")
    cg.add_argument("--canvas-columns", choices=["notebook", "course"], default="notebook",
                    help="Canvas export: one assignment column per notebook, or one for the course (default: notebook)")
    cg.add_argument("--report", type=Path, help="write the class report here (one HTML file: figures, frequent "
                                                 "mistakes, flagged rows, similar pairs)")
    cg.add_argument("--feedback", type=Path, metavar="DIR", help="write each student's feedback as DIR/STUDENT.md")
    cg.set_defaults(func=cmd_course_grade)
    return p


def _add_config_args(p: argparse.ArgumentParser) -> None:
    from reclor_lab.config import PRESETS

    p.add_argument("--preset", choices=list(PRESETS), default="tiny", help="starting configuration (default: tiny)")
    p.add_argument("--model", help="model id or local directory (default: the preset's)")
    p.add_argument("--quantization", choices=["nf4", "none"], help="4-bit NF4 or plain weights (default: nf4)")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override any config field, repeatable (e.g. --set batch_size=8 "
                        "--set gradient_checkpointing=false); values are read as JSON")


def _int_at_least(minimum: int, what: str):
    """An argparse type: an integer >= ``minimum``, else one line saying what was expected."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value
    return parse


_non_negative_int = _int_at_least(0, "an integer >= 0")
_positive_int = _int_at_least(1, "a positive integer")


def _int_list(text: str) -> list[int]:
    """An argparse type: comma-separated positive integers, e.g. ``1,2,8``."""
    return [_positive_int(part.strip()) for part in text.split(",")]


#: The least address space (``ulimit -v``, ``prlimit --as``) the kit starts with. Below about this,
#: importing torch and its libraries fails wherever it happens to be, some of it in native code
#: that aborts the process: with the tiny preset on Linux x86-64, 1.2 GB failed while importing
#: and 1.5 GB in the first forward pass (both caught), 3 GB trained.
MIN_ADDRESS_SPACE = 2 * 2**30
#: What torch, numpy and the dynamic loader say when memory runs out (besides MemoryError).
OUT_OF_MEMORY = ("can't allocate memory", "cannot allocate memory", "out of memory", "failed to map segment")


def check_address_space() -> None:
    """Refuse, in one line, an address-space limit too small to import the kit's libraries."""
    try:
        import resource
    except ImportError:  # Windows
        return
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY and soft < MIN_ADDRESS_SPACE:
        raise UsageError(f"the address-space limit (ulimit -v / prlimit --as) is {soft / 2**30:.2f} GiB; the kit "
                         f"needs at least {MIN_ADDRESS_SPACE / 2**30:.0f} GiB to load torch and its libraries: raise "
                         "it (ulimit -v unlimited)")


def main(argv: list[str] | None = None) -> int:
    plain_text_fallback()
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    say = True
    try:
        check_address_space()
        from reclor_lab.runs.distributed import is_main_process

        say = is_main_process()  # of several processes, the main one speaks for all
        if args.func in (cmd_train, cmd_evaluate, cmd_predict):  # they compute metrics
            from reclor_lab.runs.loading import check_hf_cache

            check_hf_cache()  # before minutes of loading, and before matplotlib warns about the same folder
        return args.func(args)
    except TrainingInterrupted as e:  # SIGTERM / SIGINT: a checkpoint was written
        if say:
            print(f"reclor-lab: {e}", file=sys.stderr)
        return e.exit_code
    except (ReclorLabError, OSError) as e:  # every expected problem: one line, no traceback
        if say:
            print(f"reclor-lab: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # MemoryError; torch's RuntimeError; the tokenizers library's plain Exception
        status = _expected_failure(e)
        if status is None:  # a bug of the kit: its traceback shows
            raise
        return status
    except KeyboardInterrupt:
        print("reclor-lab: interrupted", file=sys.stderr)
        return 130


def _expected_failure(e: Exception) -> int | None:
    """The exit status of an exception that is not the kit's bug (out of memory, with its one
    line; another process of the run died), or None."""
    if isinstance(e, MemoryError) or any(m in str(e).lower() for m in OUT_OF_MEMORY):
        # where Python sees it; a native library's failed allocation aborts instead (see README)
        print("reclor-lab: error: out of memory (the machine's, or a limit set with ulimit -v / prlimit --as: "
              f"{str(e).strip().splitlines()[0][:120] if str(e).strip() else 'MemoryError'}); lower "
              "batch_size, eval_batch_size or max_len, or raise the limit", file=sys.stderr)
        return 1
    if not isinstance(e, RuntimeError):
        return None
    from reclor_lab.runs.distributed import launched

    if launched() and ("gloo" in str(e).lower() or "connection closed by peer" in str(e).lower()):
        return 1  # another process of the run died: the launcher reports it in one line
    return None


if __name__ == "__main__":
    sys.exit(main())
