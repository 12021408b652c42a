"""QLoRA training throughput and peak GPU memory on a Llama-2-7B-shaped model: the kit's loop
against the Hugging Face Trainer, at batch sizes 1, 2 and 8, with gradient checkpointing.

The model has Llama-2-7B's shape (32 layers, hidden 4096, intermediate 11008, 32 heads, vocab
32000) with random weights: nothing is downloaded. It is built in bf16 directly on the GPU (a few
seconds; ~13.5 GB for a moment), then every decoder linear layer is swapped for a bitsandbytes
``Linear4bit`` and quantized to NF4 with double quantization in place, layer by layer (the bf16
copy is freed as it goes). The result is what ``from_pretrained(..., quantization_config=NF4)``
gives, without writing or reading a 13 GB checkpoint. LoRA r=16 goes on every linear layer except
the head, through the kit's ``inject_lora`` (peft's k-bit preparation, gradient checkpointing).

The data are random token ids with ReClor-like lengths (log-normal, mean ~235 tokens, capped at
640) and random labels: speed and memory depend on the lengths, not on the words.

- kit: ``reclor_lab.train.train_step`` / ``optimizer_step`` over ``epoch_batches(...,
  group_by_length=True)`` (each batch padded to its own longest example).
- Trainer: ``transformers.Trainer`` with its own sampler (random order, no grouping), bf16
  autocast like the kit, the same AdamW learning rate / weight decay / clipping. A subclass only
  *counts* the real tokens of each batch; nothing else is changed.
- reference (at the reference's batch size, 2): the reference solution's habits: shuffled
  batches, the default (foreach) AdamW, ``loss.item()`` and ``torch.cuda.empty_cache()`` every step.

``--profile`` adds a diagnosis of one kit step at batch 1 and at the largest batch: the operator
calls dispatched on the host (counted), the GPU kernels launched and their summed time (torch
profiler), against the step's wall time. A step whose kernels cover a small part of its wall time
is bound by the host issuing work, not by the GPU.

Both run ``--warmup`` untimed steps, then ``--steps`` timed steps; tokens/s counts real
(non-padding) tokens. Peak memory is ``torch.cuda.max_memory_allocated`` after a reset before each
variant (the 4-bit model itself included). Every figure is printed as soon as it is known.

On a machine without CUDA the script says so and exits 0. ``--allow-cpu --layers 1 --hidden 256``
runs the same code path on a tiny model on the CPU (bitsandbytes quantizes on the CPU too) to
check that it works; its numbers mean nothing.

    python bench/gpu_llama7b.py [--steps 10] [--batch-sizes 1,2,8] [--json PATH]
"""

from __future__ import annotations

import gc
import math
import sys
import tempfile
import time

from common import Report, finish, parser, reference_cleanup

GOAL_SPEEDUP = 1.5
GOAL_PEAK_GIB = 12.0
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
    from reclor_lab.modeling import HEAD_NAMES

    config = LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.heads,
        max_position_embeddings=4096, rms_norm_eps=1e-5, num_labels=NUM_LABELS, pad_token_id=PAD_ID,
        bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )
    t0 = time.perf_counter()
    # Built straight on the device in bf16: no fp32 copy, no host round trip.
    with torch.device(device):
        model = LlamaForSequenceClassification._from_config(config, dtype=torch.bfloat16)
    sync(device)
    log(f"built bf16 model on {device.type}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B params "
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

    from reclor_lab.train import peak_memory_mb

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


def run_loop(model, ds, lengths, bs, args, device, dtype, cfg, reference: bool = False) -> dict:
    """The kit's loop (length-grouped batches, the kit's optimizer), or with ``reference`` the
    reference solution's habits (shuffled batches, default AdamW, a loss ``.item()`` and a cache
    clear every step)."""
    import torch
    from torch.utils.data import DataLoader

    from reclor_lab.data import BatchListSampler, epoch_batches
    from reclor_lab.train import make_optimizer, optimizer_step, train_step

    n_steps = args.warmup + args.steps
    batches = epoch_batches(lengths, bs, args.seed, 1, group_by_length=not reference)[:n_steps]
    loader = DataLoader(ds, batch_sampler=BatchListSampler(batches), collate_fn=collate)
    if reference:
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                      lr=args.lr, weight_decay=cfg.weight_decay)
    else:
        optimizer = make_optimizer(model, cfg, device)
    model.train()
    step_ends, step_tokens = [], []
    sync(device)
    t_start = time.perf_counter()
    for batch in loader:
        step_tokens.append(int(batch["attention_mask"].sum()))  # counted on the host: no GPU sync
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        loss = train_step(model, batch, None, dtype)
        optimizer_step(model, optimizer, args.lr, args.max_grad_norm)
        if reference:
            loss.item()
            reference_cleanup(device)
        sync(device)  # per-step timing needs it; costs every variant the same
        step_ends.append(time.perf_counter())
    del optimizer
    return summarize(t_start, step_ends, step_tokens, args.warmup)


def profile_step(model, ds, bs, args, device, dtype, cfg) -> dict:
    """One kit step at batch ``bs`` (after one untimed step): its wall time, the operator calls
    it dispatches on the host, and the GPU kernels it launches with their summed time."""
    import collections

    import torch
    from torch.profiler import ProfilerActivity, profile
    from torch.utils._python_dispatch import TorchDispatchMode

    from reclor_lab.train import make_optimizer, optimizer_step, train_step

    class CountOps(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.calls[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    optimizer = make_optimizer(model, cfg, device)
    model.train()
    batch = collate(ds[:bs])
    tokens = int(batch["attention_mask"].sum())
    batch = {k: v.to(device) for k, v in batch.items()}

    def step():
        train_step(model, dict(batch), None, dtype)
        optimizer_step(model, optimizer, args.lr, args.max_grad_norm)
        sync(device)

    step()
    t0 = time.perf_counter()
    step()
    wall = time.perf_counter() - t0
    with CountOps() as counter:
        step()
    out = {"batch": bs, "tokens": tokens, "wall_ms": wall * 1e3, "ops": sum(counter.calls.values()),
           "top_ops": counter.calls.most_common(6)}
    if device.type == "cuda":
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            step()
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        out["kernels"] = len(kernels)
        out["kernel_ms"] = sum(e.time_range.elapsed_us() for e in kernels) / 1e3
    return out


def run_trainer(model, ds, bs, args, device, dtype, cfg) -> dict:
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class CountingTrainer(Trainer):
        """The stock Trainer; only counts each batch's real tokens (kept on the device: no sync)."""

        counts: list

        def training_step(self, model, inputs, num_items_in_batch=None):
            self.counts.append(inputs["attention_mask"].sum())
            return super().training_step(model, inputs, num_items_in_batch)

    class StepClock(TrainerCallback):
        def __init__(self):
            self.ends: list[float] = []

        def on_train_begin(self, a, state, control, **kw):
            sync(device)
            self.start = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            sync(device)
            self.ends.append(time.perf_counter())

    clock = StepClock()
    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=bs, max_steps=args.warmup + args.steps,
            learning_rate=args.lr, weight_decay=cfg.weight_decay, max_grad_norm=args.max_grad_norm,
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
    return summarize(clock.start, clock.ends, counts, args.warmup)


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=32, help="decoder layers (32 = Llama-2-7B)")
    p.add_argument("--hidden", type=int, default=4096, help="hidden size (4096 = Llama-2-7B)")
    p.add_argument("--intermediate", type=int, default=None, help="MLP size (default: 11008 x hidden/4096)")
    p.add_argument("--heads", type=int, default=None, help="attention heads (default: hidden/128)")
    p.add_argument("--vocab", type=int, default=32000, help="vocabulary size")
    p.add_argument("--batch-sizes", default="1,2,8", help="comma-separated batch sizes")
    p.add_argument("--variants", default="kit,trainer,reference",
                   help="comma-separated: kit, trainer, reference (the last at the reference's batch size only)")
    p.add_argument("--profile", action="store_true",
                   help="diagnose one kit step at batch 1 and at the largest batch (host ops, GPU kernel time)")
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps per variant and batch size")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    p.add_argument("--max-len", type=int, default=640, help="longest sequence (ReClor's longest ~640 tokens)")
    p.add_argument("--no-checkpointing", action="store_true", help="turn gradient checkpointing off")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max-grad-norm", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--allow-cpu", action="store_true",
                   help="run on the CPU when there is no GPU (to test the code path on a tiny --layers/--hidden)")
    args = p.parse_args()
    args.intermediate = args.intermediate or round(11008 * args.hidden / 4096)
    args.heads = args.heads or max(1, args.hidden // 128)
    if args.quick:
        args.steps, args.warmup = 3, 1
    args.warmup = max(1, args.warmup)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    variants = [v.strip() for v in args.variants.split(",")]
    t_script = time.perf_counter()

    import torch

    report = Report("QLoRA on a Llama-2-7B-shaped model: kit loop vs HF Trainer")
    report.settings = {"layers": args.layers, "hidden": args.hidden, "intermediate": args.intermediate,
                       "heads": args.heads, "vocab": args.vocab, "steps": args.steps, "warmup": args.warmup,
                       "gradient_checkpointing": not args.no_checkpointing, "lora_r": 16}
    if not torch.cuda.is_available() and not args.allow_cpu:
        log("no CUDA device: the GPU benchmark is skipped (run it on a machine with a GPU; "
            "--allow-cpu --layers 1 --hidden 256 tests the code path on the CPU)")
        report.goal(f"kit >= {GOAL_SPEEDUP}x the Trainer's tokens/s", None, "no GPU")
        report.goal(f"peak memory <= {GOAL_PEAK_GIB:g} GiB at batch 8 with gradient checkpointing", None, "no GPU")
        finish(report, args.json)
        return

    from reclor_lab.config import get_preset
    from reclor_lab.data import padding_fraction, epoch_batches
    from reclor_lab.lora import inject_lora, trainable_report
    from reclor_lab.modeling import measured_bytes, pick_device, resolve_compute_dtype

    cfg = get_preset("llama2-7b", gradient_checkpointing=not args.no_checkpointing, seed=args.seed,
                     learning_rate=args.lr, max_grad_norm=args.max_grad_norm)
    device, dtype = pick_device(), resolve_compute_dtype(cfg)
    torch.manual_seed(args.seed)
    log(f"device {device} ({report.machine['gpu'] or report.machine['cpu']}), compute dtype "
        f"{str(dtype).removeprefix('torch.')}; batch sizes {batch_sizes}; {args.warmup} + {args.steps} steps each")
    model = build_model(args, device, dtype)
    report.add("4-bit model weights", measured_bytes(model) / 2**30, "GiB", "measured, before LoRA", show=True)
    model = inject_lora(model, cfg)
    log(trainable_report(model).line())
    report.add("build + quantize + LoRA", time.perf_counter() - t_script, "s", "since script start", show=True)

    lengths = make_lengths(NUM_EXAMPLES, args.max_len, args.seed)
    ds = make_dataset(lengths, args.vocab, args.seed)
    report.add("sequence length mean / max", f"{sum(lengths) / len(lengths):.0f} / {max(lengths)}", "tokens",
               f"{len(lengths)} random sequences; each batch size trains on the first (warmup + steps) x batch")

    if args.profile:
        for bs in sorted({1, max(batch_sizes)}):
            try:
                r = profile_step(model, ds, bs, args, device, dtype, cfg)
            except Exception as e:  # a diagnosis must not cost the measurements below
                log(f"profile at batch {bs} failed: {type(e).__name__}: {e}")
                continue
            note = "; ".join(f"{name} {n:,}" for name, n in r["top_ops"])
            report.add(f"batch {bs}: one step, wall", r["wall_ms"], "ms", f"{r['tokens']} real tokens", show=True)
            report.add(f"batch {bs}: operator calls per step", r["ops"], "calls", f"most: {note}", show=True)
            if "kernels" in r:
                report.add(f"batch {bs}: GPU kernel time per step", r["kernel_ms"], "ms",
                           f"{r['kernels']:,} kernels; busy {100 * r['kernel_ms'] / r['wall_ms']:.0f} % of the "
                           "step's wall time", show=True)
        fresh_memory(model, device)

    results: dict = {}
    for bs in batch_sizes:
        # Both variants train one epoch over the same examples (a random sample of the pool, as the
        # lengths are drawn independently): the kit in length-grouped batches, the Trainer in its
        # own random order. Same tokens in total; only the order and the padding differ.
        n = (args.warmup + args.steps) * bs
        pool, pool_lengths = ds[:n], lengths[:n]
        pad = padding_fraction(pool_lengths, epoch_batches(pool_lengths, bs, args.seed, 1, True))
        pad_random = padding_fraction(pool_lengths, epoch_batches(pool_lengths, bs, args.seed, 1, False))
        for variant in variants:
            if variant == "reference" and bs != cfg.batch_size:
                continue
            base = fresh_memory(model, device)
            try:
                if variant in ("kit", "reference"):
                    r = run_loop(model, pool, pool_lengths, bs, args, device, dtype, cfg, variant == "reference")
                else:
                    r = run_trainer(model, pool, bs, args, device, dtype, cfg)
            except torch.OutOfMemoryError as e:
                log(f"batch {bs}, {variant}: out of memory ({str(e).splitlines()[0]})")
                report.add(f"batch {bs}, {variant}: tokens/s", "OOM", "", show=True)
                continue
            r["peak_gib"], r["start_gib"] = peak_gib(device), base
            results[bs, variant] = r
            note = (f"{r['tokens']:,} tokens in {r['seconds']:.1f} s over {r['steps']} steps; "
                    f"median step {r['median_step_seconds'] * 1e3:.0f} ms")
            note += (f"; length-grouped, {100 * pad:.1f} % padding" if variant == "kit"
                     else f"; shuffled, {100 * pad_random:.1f} % padding" if variant == "reference"
                     else f"; random order, ~{100 * pad_random:.0f} % padding (a shuffled epoch of the same examples)")
            report.add(f"batch {bs}, {variant}: tokens/s", r["tokens_per_second"], "tokens/s", note, show=True)
            report.add(f"batch {bs}, {variant}: peak memory", r["peak_gib"], "GiB",
                       f"{base:.2f} GiB allocated before the variant", show=True)
        if (bs, "kit") in results and (bs, "trainer") in results:
            ratio = results[bs, "kit"]["tokens_per_second"] / results[bs, "trainer"]["tokens_per_second"]
            report.add(f"batch {bs}: kit / Trainer tokens/s", ratio, "x", show=True)
            report.goal(f"kit >= {GOAL_SPEEDUP}x the Trainer's tokens/s at batch {bs}", ratio >= GOAL_SPEEDUP,
                        f"{ratio:.2f}x")
    for bs in batch_sizes:
        if (bs, "kit") in results and (cfg.batch_size, "reference") in results:
            ratio = results[bs, "kit"]["tokens_per_second"] / results[cfg.batch_size, "reference"]["tokens_per_second"]
            report.add(f"kit at batch {bs} / reference loop at batch {cfg.batch_size}", ratio, "x", show=True)
    if (8, "kit") in results and (2, "trainer") in results:
        ratio = results[8, "kit"]["tokens_per_second"] / results[2, "trainer"]["tokens_per_second"]
        report.add("kit at batch 8 / Trainer at batch 2 (the reference's batch size)", ratio, "x", show=True)
    if (8, "kit") in results and not args.no_checkpointing:
        peak = results[8, "kit"]["peak_gib"]
        report.goal(f"peak memory <= {GOAL_PEAK_GIB:g} GiB at batch 8 with gradient checkpointing (kit)",
                    peak <= GOAL_PEAK_GIB, f"{peak:.2f} GiB")
    report.add("whole script", time.perf_counter() - t_script, "s")
    if device.type != "cuda":
        report.settings["note"] = "CPU code-path test: the numbers mean nothing"
    finish(report, args.json)


if __name__ == "__main__":
    sys.exit(main())
