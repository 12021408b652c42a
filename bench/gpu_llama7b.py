"""The instructor's run, side by side on one GPU: QLoRA on a Llama-2-7B-shaped model at ReClor
lengths, three ways, one table.

- **reference Trainer**: the reference solution's setup: ``transformers.Trainer`` at batch 2 with
  gradient checkpointing, peft's ``prepare_model_for_kbit_training`` (fp32 embeddings and norms),
  its own random sampler, bf16 autocast.
- **kit default (auto)**: what ``--preset llama2-7b`` does: ``batch_size="auto"`` picks the micro-
  batch and checkpointing from the memory planner for ``--gpu-memory`` (default 24 GiB: the
  default must fit a 24 GiB card), accumulation keeps 2 examples per optimizer step; the kit's
  loop over length-grouped batches, the narrow k-bit upcast.
- **kit at the reference's shape**: the kit's loop and model preparation at batch 2 with
  checkpointing: what the loop alone changes.
- optional (``--variants``): **kit auto sqrt-lr**: ``auto_batch="sqrt-lr"``, the largest
  micro-batch that fits, one per optimizer step (a different optimisation: see README); and
  ``kit-B-on`` / ``kit-B-off``: the kit at micro-batch B with checkpointing on / off, rows that
  check the planner's prediction against the measured peak; **kit default in fp16**
  (``kit-fp16``): the default's shape computed in fp16 with dynamic loss scaling, the path a T4
  takes, with the steps the scaler skipped.

Columns: real (non-padding) tokens/s over the timed steps, median step time, GPU busy (summed
kernel time / wall time of one profiled step, torch profiler; CUDA only), peak memory
(``torch.cuda.max_memory_allocated``, the model included), and the planner's prediction of that
peak for the variant's shape (its longest padded batch).

The model has Llama-2-7B's shape with random weights (nothing is downloaded): built in bf16 on the
GPU, every decoder linear swapped for a bitsandbytes NF4 ``Linear4bit`` (double quantization) in
place; rebuilt for each variant, since their preparations differ. The data are random token ids
with ReClor-like lengths (log-normal, mean ~235 tokens, capped at ``--max-len``) and random labels.

``--dry-run`` runs every variant on the CPU with a tiny model of the same architecture in seconds
(a code-path check; its numbers mean nothing). Without CUDA and without ``--dry-run`` it says so
and exits 0.

    python bench/gpu_llama7b.py [--steps 15] [--gpu-memory 24GiB] [--json PATH]
"""

from __future__ import annotations

import dataclasses
import gc
import math
import re
import sys
import tempfile
import time

from common import Report, finish, parser

GOAL_SPEEDUP = 2.0          # kit default / reference Trainer, real tokens/s
GOAL_TOKENS_PER_SECOND = 5000  # kit default on an H100/H200-class GPU
PLANNER_TOLERANCE = 0.15    # |prediction / measured peak - 1|
#: The tiny architecture of ``--dry-run`` (the shape of models/tiny-llama).
DRY_RUN_SHAPE = dict(layers=2, hidden=64, intermediate=128, heads=4, vocab=2048)
#: Pad token id of the random data (random ids are drawn above it, so no real token is a pad).
PAD_ID = 0
NUM_EXAMPLES = 4638  # ReClor's training split: the pool the batches are drawn from
LENGTH_MEDIAN, LENGTH_SIGMA, LENGTH_MIN = 220, 0.35, 48  # log-normal: mean ~235 tokens


def log(msg: str) -> None:
    print(msg, flush=True)


def build_model(args, device, dtype):
    """A Llama-2-7B-shaped LlamaForSequenceClassification(num_labels=4) with NF4 4-bit linears."""
    import bitsandbytes as bnb
    import torch
    from torch import nn
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from reclor_lab.config import NUM_LABELS
    from reclor_lab.model import HEAD_NAMES

    config = LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.heads,
        max_position_embeddings=4096, rms_norm_eps=1e-5, num_labels=NUM_LABELS, pad_token_id=PAD_ID,
        bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )
    t0 = time.perf_counter()
    # Built straight on the device in the compute dtype (bf16 on a GPU; what load_model gives the
    # unquantized weights): no fp32 copy, no host round trip.
    with torch.device(device):
        model = LlamaForSequenceClassification._from_config(config, dtype=dtype, attn_implementation="sdpa")
    sync(device)
    params = sum(p.numel() for p in model.parameters())
    log(f"built {str(dtype).removeprefix('torch.')} model on {device.type}: {params / 1e9:.2f} B params "
        f"({time.perf_counter() - t0:.1f} s)")

    t0 = time.perf_counter()
    n = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear or name in HEAD_NAMES:
                continue
            q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                  compute_dtype=dtype, compress_statistics=True, quant_type="nf4",
                                  device="meta")
            weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, compress_statistics=True,
                                       quant_type="nf4", module=q)
            q.weight = weight.to(device)  # .to() on an unquantized Params4bit quantizes it there
            if child.bias is not None:
                q.bias = nn.Parameter(child.bias.data, requires_grad=False)
            setattr(parent, name, q)  # the bf16 weight is freed here
            n += 1
    # What transformers' bitsandbytes quantizer sets on a model it loads in 4-bit: peft and the
    # Trainer read these (k-bit preparation; no .to() on a bnb model).
    model.is_loaded_in_4bit = True
    model.quantization_method = "bitsandbytes"
    sync(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # once: return the freed bf16 weights before anything is measured
    log(f"quantized {n} linear layers to NF4 (double quant, {str(dtype).removeprefix('torch.')} compute) "
        f"({time.perf_counter() - t0:.1f} s)")
    return model


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_lengths(n: int, max_len: int, seed: int) -> list[int]:
    rng = __import__("random").Random(seed)
    return [min(max_len, max(LENGTH_MIN, round(rng.lognormvariate(math.log(LENGTH_MEDIAN), LENGTH_SIGMA))))
            for _ in range(n)]


def make_dataset(lengths: list[int], vocab: int, seed: int) -> list[dict]:
    """Random token ids of the given lengths and random labels, as a list of examples (a map-style
    dataset for both DataLoaders; no ``datasets`` needed on the GPU machine)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (len(lengths),), generator=g).tolist()
    return [{"input_ids": torch.randint(3, vocab, (n,), generator=g), "labels": y} for n, y in zip(lengths, labels)]


def collate(features: list[dict]) -> dict:
    """Right-pad to the batch's longest example, like the kit's collator (which needs a tokenizer)."""
    import torch

    width = max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        ids[i, :n] = f["input_ids"]
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask,
            "labels": torch.tensor([int(f["labels"]) for f in features])}


def fresh_memory(model, device) -> float:
    """Drop what the previous variant left, reset the peak; returns the memory now allocated (GiB)."""
    import torch

    model.zero_grad(set_to_none=True)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()  # between variants, not steps: each starts from the same memory
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**30
    return 0.0


def peak_gib(device) -> float:
    import torch

    from reclor_lab.runs.session import peak_memory_mb

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return peak_memory_mb(device) / 1024  # process RSS high-water mark on a CPU


def summarize(start: float, step_ends: list[float], step_tokens: list[int], warmup: int) -> dict:
    """tokens/s over the steps after the first ``warmup``, and the median per-step figures."""
    ends = [start] + step_ends
    times = [b - a for a, b in zip(ends, ends[1:])][warmup:]
    tokens = step_tokens[warmup:]
    per_step = sorted(n / t for n, t in zip(tokens, times))
    return {"tokens_per_second": sum(tokens) / sum(times), "seconds": sum(times), "tokens": sum(tokens),
            "steps": len(tokens), "median_step_tokens_per_second": per_step[len(per_step) // 2],
            "median_step_seconds": sorted(times)[len(times) // 2]}


def run_loop(model, ds, lengths, bs, accum, args, device, dtype, cfg, profile_at: int | None) -> dict:
    """The kit's loop: length-grouped micro-batches of ``bs``, ``accum`` of them per optimizer
    step, the kit's optimizer. The micro-batch at index ``profile_at`` runs under the profiler."""
    from torch.utils.data import DataLoader

    from reclor_lab.data import BatchListSampler, epoch_batches
    from reclor_lab.model import loss_scaler
    from reclor_lab.train import make_optimizer, optimizer_step, train_step

    scaler = loss_scaler(device, dtype)  # fp16: dynamic loss scaling; otherwise it passes through
    skipped = 0
    n_micro = (args.warmup + args.steps) * accum
    batches = epoch_batches(lengths, bs, args.seed, 1, group_by_length=True)[:n_micro]
    loader = DataLoader(ds, batch_sampler=BatchListSampler(batches), collate_fn=collate)
    optimizer = make_optimizer(model, cfg, device)
    model.train()
    step_ends, step_tokens, busy, tokens = [], [], None, 0
    sync(device)
    t_start = time.perf_counter()
    for i, batch in enumerate(loader):
        tokens += int(batch["attention_mask"].sum())  # counted on the host: no GPU sync
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with profiled(device, enabled=i == profile_at) as prof:
            train_step(model, batch, None, dtype, accum, scaler=scaler)
            if (i + 1) % accum == 0:
                skipped += optimizer_step(model, optimizer, cfg.learning_rate, args.max_grad_norm, scaler)
            sync(device)
        if prof.result is not None:
            busy = prof.result
        if (i + 1) % accum == 0:
            step_ends.append(time.perf_counter())
            step_tokens.append(tokens)
            tokens = 0
    del optimizer
    out = summarize(t_start, step_ends, step_tokens, args.warmup)
    out["gpu_busy"] = busy
    out["longest_batch"] = max(max(lengths[j] for j in b) for b in batches)
    if scaler.is_enabled():
        out["skipped_steps"], out["loss_scale"] = skipped, scaler.get_scale()
    return out


class profiled:
    """``with profiled(device, enabled) as p``: on CUDA, ``p.result`` is the fraction of the
    block's wall time the GPU spent in kernels (summed kernel time / wall time)."""

    def __init__(self, device, enabled: bool):
        self.on = enabled and device.type == "cuda"
        self.result = None

    def __enter__(self):
        if self.on:
            from torch.profiler import ProfilerActivity, profile

            self.prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
            self.prof.__enter__()
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.on:
            import torch

            wall = time.perf_counter() - self.t0
            self.prof.__exit__(*exc)
            kernels = [e for e in self.prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
            self.result = sum(e.time_range.elapsed_us() for e in kernels) / 1e6 / wall
        return False


def run_trainer(model, ds, bs, args, device, dtype, cfg) -> dict:
    """The stock Trainer at batch ``bs``; a subclass only counts each batch's real tokens, a
    callback times the steps and profiles one."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class CountingTrainer(Trainer):
        counts: list

        def training_step(self, model, inputs, num_items_in_batch=None):
            self.counts.append(inputs["attention_mask"].sum())  # kept on the device: no sync
            return super().training_step(model, inputs, num_items_in_batch)

    class StepClock(TrainerCallback):
        def __init__(self):
            self.ends: list[float] = []
            self.prof = None
            self.busy = None

        def on_train_begin(self, a, state, control, **kw):
            sync(device)
            self.start = time.perf_counter()

        def on_step_begin(self, a, state, control, **kw):
            if state.global_step == args.warmup:
                self.prof = profiled(device, True).__enter__()

        def on_step_end(self, a, state, control, **kw):
            sync(device)
            if self.prof is not None:
                self.prof.__exit__(None, None, None)
                self.busy, self.prof = self.prof.result, None
            self.ends.append(time.perf_counter())

    clock = StepClock()
    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=bs, max_steps=args.warmup + args.steps,
            learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay, max_grad_norm=args.max_grad_norm,
            bf16=dtype == torch.bfloat16, report_to="none", save_strategy="no", eval_strategy="no",
            logging_steps=10**6, remove_unused_columns=False, dataloader_num_workers=0, seed=args.seed,
            disable_tqdm=True, use_cpu=device.type == "cpu",
        )
        trainer = CountingTrainer(model=model, args=targs, train_dataset=ds, data_collator=collate,
                                  callbacks=[clock])
        trainer.counts = []
        model.train()
        trainer.train()
        counts = [int(c) for c in trainer.counts]
        del trainer
    out = summarize(clock.start, clock.ends, counts, args.warmup)
    out["gpu_busy"] = clock.busy
    return out


@dataclasses.dataclass
class Variant:
    """One row of the table: who trains, at which shape, with which preparation."""

    name: str
    cfg: object            # the RunConfig the model is prepared with (and the kit loop uses)
    batch: int
    accum: int
    trainer: bool = False
    note: str = ""


def variants(args, budget: float, shape) -> list[Variant]:
    from reclor_lab.config import get_preset
    from reclor_lab.tools.plan import Planner, PlanSettings, choose_batch

    base = get_preset("llama2-7b", seed=args.seed, max_len=args.max_len, max_grad_norm=args.max_grad_norm)
    ref = base.replace(batch_size=2, gradient_checkpointing=True)
    out = {
        "trainer": Variant("reference Trainer", ref.replace(kbit_upcast="peft"), 2, 1, trainer=True,
                           note="bs 2, checkpointing, peft's upcast, random order"),
        "kit-ref": Variant("kit at the reference's shape", ref, 2, 1, note="bs 2, checkpointing, kit loop"),
    }
    for key, mode in (("kit-auto", "accumulate"), ("kit-sqrt", "sqrt-lr")):
        cfg = base.replace(auto_batch=mode)
        c = choose_batch(Planner(shape, PlanSettings.from_config(cfg)), cfg, budget)
        cfg = cfg.replace(batch_size=c.batch_size, grad_accum_steps=c.grad_accum_steps,
                          gradient_checkpointing=c.gradient_checkpointing, learning_rate=c.learning_rate)
        label = "kit default (auto)" if mode == "accumulate" else "kit auto sqrt-lr"
        out[key] = Variant(label, cfg, c.batch_size, c.grad_accum_steps, note=c.reason)
    auto = out["kit-auto"]  # fp16 takes as many bytes as bf16: the same shape, computed in fp16
    out["kit-fp16"] = Variant("kit default in fp16", auto.cfg.replace(compute_dtype="float16"), auto.batch,
                              auto.accum, note="as kit default, fp16 compute + loss scaling (what a T4 runs)")
    rows = []
    for key in args.variants:
        m = re.fullmatch(r"kit-(\d+)-(on|off)", key)
        if m:  # a shape of one's own, e.g. for checking the planner: kit-8-off
            b, ck = int(m.group(1)), m.group(2) == "on"
            rows.append(Variant(f"kit {b}x1, ckpt {m.group(2)}", base.replace(batch_size=b, gradient_checkpointing=ck),
                                b, 1, note="a planner check"))
        elif key in out:
            rows.append(out[key])
        else:
            raise SystemExit(f"--variants: unknown {key!r}; choose from {', '.join(out)} or kit-B-on / kit-B-off")
    return rows


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=32, help="decoder layers (32 = Llama-2-7B)")
    p.add_argument("--hidden", type=int, default=4096, help="hidden size (4096 = Llama-2-7B)")
    p.add_argument("--intermediate", type=int, default=None, help="MLP size (default: 11008 x hidden/4096)")
    p.add_argument("--heads", type=int, default=None, help="attention heads (default: hidden/128)")
    p.add_argument("--vocab", type=int, default=32000, help="vocabulary size")
    p.add_argument("--variants", default="trainer,kit-auto,kit-ref",
                   help="comma-separated rows: trainer, kit-auto, kit-ref, kit-sqrt, kit-fp16, "
                        "and kit-B-on / kit-B-off "
                        "(the kit at micro-batch B with checkpointing on / off, e.g. to check the planner)")
    p.add_argument("--gpu-memory", default="24GiB", help="the budget auto plans for (default 24GiB)")
    p.add_argument("--steps", type=int, default=15, help="timed optimizer steps per variant")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before them (one is profiled after)")
    p.add_argument("--max-len", type=int, default=512, help="longest sequence (the preset's max_len)")
    p.add_argument("--max-grad-norm", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--dry-run", action="store_true",
                   help="every variant on the CPU with a tiny model of the same architecture, 2 steps each")
    args = p.parse_args()
    if args.dry_run:
        for k, v in DRY_RUN_SHAPE.items():
            setattr(args, k, v)
        args.steps, args.warmup, args.max_len = 2, 1, 128
    if args.quick:
        args.steps, args.warmup = 3, 1
    args.intermediate = args.intermediate or round(11008 * args.hidden / 4096)
    args.heads = args.heads or max(1, args.hidden // 128)
    args.warmup = max(1, args.warmup)
    args.variants = [v.strip() for v in args.variants.split(",")]
    t_script = time.perf_counter()

    import torch

    from reclor_lab.shapes import ModelShape
    from reclor_lab.tools.plan import GIB, Planner, PlanSettings, parse_memory

    report = Report("QLoRA on a Llama-2-7B-shaped model: reference Trainer vs the kit's default")
    report.settings = {"layers": args.layers, "hidden": args.hidden, "steps": args.steps, "warmup": args.warmup,
                       "max_len": args.max_len, "gpu_memory": args.gpu_memory, "lora_r": 16}
    if not torch.cuda.is_available() and not args.dry_run:
        log("no CUDA device: the GPU benchmark is skipped (--dry-run checks the code path on the CPU)")
        report.goal(f"kit default >= {GOAL_SPEEDUP:g}x the reference Trainer's tokens/s", None, "no GPU")
        report.goal(f"kit default >= {GOAL_TOKENS_PER_SECOND:,} tokens/s", None, "no GPU")
        finish(report, args.json)
        return

    from reclor_lab.lora import inject_lora
    from reclor_lab.model import pick_device, resolve_compute_dtype

    shape = ModelShape(hidden=args.hidden, intermediate=args.intermediate, layers=args.layers, heads=args.heads,
                       kv_heads=args.heads, vocab=args.vocab)
    budget = parse_memory(args.gpu_memory)
    rows = variants(args, budget, shape)
    device = pick_device()
    log(f"device {device} ({report.machine['gpu'] or report.machine['cpu']}), compute dtype "
        f"{str(resolve_compute_dtype(rows[0].cfg)).removeprefix('torch.')}; {args.warmup} + {args.steps} "
        f"steps per variant")
    lengths = make_lengths(NUM_EXAMPLES, args.max_len, args.seed)
    ds = make_dataset(lengths, args.vocab, args.seed)
    results = {}
    for v in rows:
        log(f"-- {v.name}: {v.note}")
        torch.manual_seed(args.seed)
        dtype = resolve_compute_dtype(v.cfg)
        model = inject_lora(build_model(args, device, dtype), v.cfg)
        n = (args.warmup + args.steps) * v.batch * v.accum
        pool, pool_lengths = ds[:n], lengths[:n]
        fresh_memory(model, device)
        try:
            if v.trainer:
                r = run_trainer(model, pool, v.batch, args, device, dtype, v.cfg)
                r["longest_batch"] = max(pool_lengths)  # random order: the longest example is in some batch
            else:
                r = run_loop(model, pool, pool_lengths, v.batch, v.accum, args, device, dtype, v.cfg,
                             profile_at=args.warmup * v.accum)
        except torch.OutOfMemoryError as e:
            log(f"{v.name}: out of memory ({str(e).splitlines()[0]})")
            results[v.name] = None
            continue
        finally:
            del model
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        settings = PlanSettings.from_config(v.cfg, compute_bytes=2 if dtype != torch.float32 else 4,
                                            base_saves_input=device.type == "cpu")
        predicted = Planner(shape, settings).estimate(v.batch, r["longest_batch"], v.cfg.gradient_checkpointing)
        r["peak_gib"], r["predicted_gib"] = peak_gib(device), predicted.allocated / GIB
        results[v.name] = r
        log(f"   {r['tokens_per_second']:,.0f} tokens/s, step {r['median_step_seconds'] * 1e3:.0f} ms, "
            f"peak {r['peak_gib']:.2f} GiB (planner {r['predicted_gib']:.2f} GiB), "
            f"{args.warmup + args.steps} steps of {v.batch}x{v.accum}"
            + (f", {r['skipped_steps']} skipped by the loss scaler (scale now {r['loss_scale']:g})"
               if "skipped_steps" in r else ""))
        for key, unit in (("tokens_per_second", "tokens/s"), ("median_step_seconds", "s"), ("peak_gib", "GiB"),
                          ("predicted_gib", "GiB"), ("gpu_busy", "fraction"), ("skipped_steps", "steps")):
            if r.get(key) is not None:
                report.add(f"{v.name}: {key}", r[key], unit, v.note if key == "tokens_per_second" else "")

    print()
    print(side_by_side(rows, results, device))
    ref, auto = results.get("reference Trainer"), results.get("kit default (auto)")
    if device.type != "cuda":
        report.goal("every variant ran", all(results.values()) and len(results) == len(rows), "CPU dry run")
        report.settings["note"] = "CPU dry run: the numbers mean nothing"
        finish(report, args.json)
        return
    if ref and auto:
        ratio = auto["tokens_per_second"] / ref["tokens_per_second"]
        report.add("kit default / reference Trainer", ratio, "x", show=True)
        report.goal(f"kit default >= {GOAL_SPEEDUP:g}x the reference Trainer's tokens/s", ratio >= GOAL_SPEEDUP,
                    f"{ratio:.2f}x")
    if auto:
        report.goal(f"kit default >= {GOAL_TOKENS_PER_SECOND:,} tokens/s",
                    auto["tokens_per_second"] >= GOAL_TOKENS_PER_SECOND, f"{auto['tokens_per_second']:,.0f}")
        report.goal(f"kit default peak memory fits {args.gpu_memory}", auto["peak_gib"] * 2**30 <= budget,
                    f"{auto['peak_gib']:.2f} GiB")
    for name, r in results.items():
        if r and device.type == "cuda":
            err = r["predicted_gib"] / r["peak_gib"] - 1
            report.goal(f"planner within {PLANNER_TOLERANCE:.0%} of {name}'s peak", abs(err) <= PLANNER_TOLERANCE,
                        f"{err:+.1%}")
    report.add("whole script", time.perf_counter() - t_script, "s")
    finish(report, args.json)


def side_by_side(rows: list[Variant], results: dict, device) -> str:
    """The run's one table: a row per variant."""
    head = (f"{'variant':<30} {'shape':<22} {'tokens/s':>9} {'step ms':>8} {'GPU busy':>8} "
            f"{'peak GiB':>8} {'planner GiB':>11}")
    lines = [head, "-" * len(head)]
    for v in rows:
        r = results.get(v.name)
        shape = f"{v.batch}x{v.accum}, ckpt {'on' if v.cfg.gradient_checkpointing else 'off'}"
        if r is None:
            lines.append(f"{v.name:<30} {shape:<22} {'OOM':>9}")
            continue
        busy = f"{100 * r['gpu_busy']:.0f} %" if r.get("gpu_busy") is not None else "-"
        lines.append(f"{v.name:<30} {shape:<22} {r['tokens_per_second']:>9,.0f} "
                     f"{r['median_step_seconds'] * 1e3:>8.0f} {busy:>8} {r['peak_gib']:>8.2f} "
                     f"{r['predicted_gib']:>11.2f}")
    lines.append("(shape: micro-batch x accumulation; tokens/s counts real tokens; peak: max_memory_allocated"
                 + ("" if device.type == "cuda" else "; CPU: process RSS, not comparable with the planner") + ")")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
