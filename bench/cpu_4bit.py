"""What the kit's one 4-bit CPU path costs: evaluation forward passes of the tiny 4-bit model on
the kit's path (dequantize + fp32 matmul, every CPU) against bitsandbytes' packed bf16 kernel
(taken by default on CPUs with ``avx512_bf16`` after the first evaluation pass), side by side in
one process, and how far apart their logits are.

The packed kernel exists only on CPUs with ``avx512_bf16``; elsewhere the script measures the
kit's path alone and says so. Training is not timed on the packed path: it gives wrong
gradients there (see reclor_lab/cpu4bit.py), so its speed would mean nothing.

    python bench/cpu_4bit.py [--batch-size 32] [--batches 8] [--json PATH]
"""

from __future__ import annotations

from common import Report, finish, parser, timeit


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=32,
                   help="examples per forward pass (the tiny preset's eval batch)")
    p.add_argument("--batches", type=int, default=8, help="forward passes per timing")
    args = p.parse_args()
    repeat = 3 if args.quick else 7

    import torch

    from reclor_lab.config import get_preset
    from reclor_lab.cpu4bit import cpu_has_avx512_bf16, cpu_kernel_report
    from reclor_lab.data import load_split, make_collator, model_inputs, tokenize_records
    from reclor_lab.model import load_model, load_tokenizer

    cfg = get_preset("tiny")
    tokenizer = load_tokenizer(cfg.model_name_or_path)
    val = load_split(cfg.data_dir, "val")
    ds, _ = tokenize_records(val, tokenizer, cfg.max_len, cfg.template, cache=False)
    collate = make_collator(tokenizer)
    rows = list(model_inputs(ds))
    batches = [collate(rows[i * args.batch_size:(i + 1) * args.batch_size]) for i in range(args.batches)]
    for b in batches:
        b.pop("labels", None)
    n_tokens = sum(int(b["attention_mask"].sum()) for b in batches)

    def forward_all(model) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([model(**b).logits for b in batches])

    report = Report("4-bit evaluation on this CPU: the kit's path vs bitsandbytes' packed bf16 kernel")
    report.settings = {"preset": "tiny", "batch_size": args.batch_size, "batches": args.batches,
                       "tokens": n_tokens, "repeat": repeat}
    torch.manual_seed(0)  # the classification head is initialised at load: the same one for both
    kit = load_model(cfg, tokenizer).eval()
    kit_logits = forward_all(kit)
    t_kit = timeit(lambda: forward_all(kit), warmup=1, repeat=repeat)
    report.add("kit: dequantize + fp32 matmul", n_tokens / t_kit.median, "tokens/s",
               f"median of {repeat}; {cpu_kernel_report(kit).model_path}")

    if not cpu_has_avx512_bf16():
        report.add("bitsandbytes' packed bf16 kernel", "n/a", "", "this CPU has no avx512_bf16")
        finish(report, args.json)
        return
    torch.manual_seed(0)
    packed = load_model(cfg, tokenizer).eval()
    for module in packed.modules():  # undo the kit's choice: bitsandbytes' default on this CPU
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = True
    packed_logits = forward_all(packed)  # the first pass repacks the weights
    t_packed = timeit(lambda: forward_all(packed), warmup=1, repeat=repeat)
    report.add("bitsandbytes: packed bf16 kernel", n_tokens / t_packed.median, "tokens/s",
               f"median of {repeat}; {cpu_kernel_report(packed).model_path}")
    report.add("packed kernel / kit, evaluation speed", t_kit.median / t_packed.median, "x",
               "above 1: the speed the kit gives up on this CPU")
    diff = (packed_logits - kit_logits).abs()
    report.add("logits, max |packed - kit|", diff.max().item(), "",
               f"the kit's logits span {kit_logits.min().item():.2f} to {kit_logits.max().item():.2f}")
    agree = (packed_logits.argmax(-1) == kit_logits.argmax(-1)).float().mean().item()
    report.add("predictions that agree", 100 * agree, "%",
               f"of {len(kit_logits)} examples, untrained head")
    finish(report, args.json)


if __name__ == "__main__":
    main()
