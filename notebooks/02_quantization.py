# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: -all
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: reclor-lab (Python 3)
#     language: python
#     name: reclor-lab
# ---

# %% [markdown]
# # 02 · 4-bit quantization (NF4)
#
# Llama-2-7B has 6.7 billion weights: 27 GB in fp32, 13.5 GB in bf16. QLoRA stores the big
# projection matrices in **4 bits** per weight instead, and computes in bf16. This notebook
# opens that box:
#
# 1. `BitsAndBytesConfig`, field by field,
# 2. NF4 on one block of weights, by hand, then on a whole matrix; NF4 against FP4 and int4,
# 3. the memory table: fp32 / bf16 / 4-bit, for this model and for Llama-2-7B,
# 4. the model loaded in 4 bits, and what one `Linear4bit` layer holds,
# 5. which kernel computes a 4-bit layer: on a GPU, and on this CPU.
#
# **Stand-alone.** This notebook reads only the model from disk; it needs no other notebook.
# Two exercises: `nf4_block` and `lora_targets`.

# %%
PRESET = "tiny"  # or "llama2-7b": the reference solution (GPU, weights and data on disk)

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the Hugging Face hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from reclor_lab.config import get_preset
from reclor_lab.course.notebook import start_notebook

start_notebook("torch", "transformers", "bitsandbytes")  # cd to the repo root, print versions

cfg = get_preset(PRESET)
print()
print(cfg.summary("preset", "model_name_or_path", "quantization", "double_quant", "compute_dtype"))

# %%
import os

import matplotlib.pyplot as plt
import torch
import transformers
import bitsandbytes as bnb

from reclor_lab.course import checks
from reclor_lab.cpu4bit import cpu_kernel_report, is_repacked
from reclor_lab.model import (
    NF4_BLOCKSIZE, NF4_CODE, bnb_config, is_4bit, load_model, load_tokenizer, logical_numel,
    pick_device,
)

transformers.logging.disable_progress_bar()  # no "Loading weights 0%" bars stored in the notebook

# %% [markdown]
# ## 1. `BitsAndBytesConfig`, field by field
#
# `bnb_config(cfg)` builds the reference's quantization config from the run config:
#
# | field | value | what it does, what it costs |
# |---|---|---|
# | `load_in_4bit` | `True` | every `nn.Linear` of the decoder becomes a bitsandbytes `Linear4bit` as the weights load |
# | `bnb_4bit_quant_type` | `"nf4"` | 4-bit NormalFloat: 16 code values placed at quantiles of a normal distribution, because trained weights are roughly normal (the alternative `"fp4"` spaces them less well) |
# | `bnb_4bit_use_double_quant` | `True` | the per-block scales are themselves quantized to 8 bits: ~0.37 bit per weight saved (~0.3 GB on 7B), a little extra compute |
# | `bnb_4bit_compute_dtype` | bf16 on a GPU that has it, fp16 (with loss scaling) on a GPU without (T4, V100), fp32 on a CPU | the dtype the weights are dequantized to for each matmul: 4 bits is storage only |
# | `bnb_4bit_quant_storage` | `uint8` | the container: two 4-bit values packed per byte |
#
# Layers that are not `nn.Linear` (embeddings, RMSNorms) stay in 16/32 bits, and so does the
# classification head `score`: it is new, small and trained in full.

# %%
quant = bnb_config(cfg)
for field in ("load_in_4bit", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant",
              "bnb_4bit_compute_dtype", "bnb_4bit_quant_storage"):
    print(f"{field:<27} {getattr(quant, field)}")
print("device:", pick_device().type)

# %% [markdown]
# ## 2. NF4 on one weight matrix
#
# We take one real weight matrix, the query projection of the first decoder layer, from the
# model loaded the ordinary way (`quantization="none"`). While that full-precision model is in
# memory we also measure it, for the table in section 3.

# %%
from reclor_lab.model import measured_bytes

tokenizer = load_tokenizer(cfg.model_name_or_path)
plain = load_model(cfg.replace(quantization="none"), tokenizer)  # its load report: section 3
W = plain.model.layers[0].self_attn.q_proj.weight.detach().float().cpu()
plain_bytes = measured_bytes(plain)
del plain  # on Llama-2-7B this frees 13.5 GB before the 4-bit load below
print("W:", tuple(W.shape), W.dtype)

# %% [markdown]
# **The 16 NF4 values.** A 4-bit index can pick one of 16 numbers. NF4's are quantiles of a
# standard normal distribution, rescaled to [-1, 1], with an exact 0: dense near 0 where most
# weights are, sparse in the tails.

# %%
print("NF4 code:", " ".join(f"{v:+.3f}" for v in NF4_CODE))
fig, ax = plt.subplots(figsize=(7, 1.6))
ax.eventplot(NF4_CODE, lineoffsets=0, linelengths=1)
ax.set_yticks([])
ax.set_xlim(-1.05, 1.05)
ax.set_xlabel("code value (weight / absmax)")
ax.set_title("The 16 NF4 code values")
plt.show()

# %% [markdown]
# The same 16 values over the real weights: every weight of `W` divided by the absmax of its
# block of 64 (what NF4 stores a code for), as a histogram. The levels crowd where the weights
# crowd, near 0; each weight is stored as the nearest level (the shaded bands alternate between
# neighbouring levels' catchment areas).

# %%
normalized = (lambda b: b / b.abs().amax(dim=1, keepdim=True))(W.reshape(-1, NF4_BLOCKSIZE)).flatten()
bounds = [-1.0] + [(a + b) / 2 for a, b in zip(NF4_CODE[:-1], NF4_CODE[1:])] + [1.0]
fig, ax = plt.subplots(figsize=(8, 3))
for k in range(16):
    ax.axvspan(bounds[k], bounds[k + 1], color="tab:blue" if k % 2 else "tab:cyan", alpha=0.12, lw=0)
ax.hist(normalized.numpy(), bins=120, color="tab:gray", alpha=0.8, label="weights of q_proj / their block's absmax")
for v in NF4_CODE:
    ax.axvline(v, color="tab:red", lw=1)
ax.plot([], [], color="tab:red", label="the 16 NF4 levels")
ax.set_xlabel("weight / block absmax")
ax.set_ylabel("weights")
ax.set_title(f"NF4 levels over the {normalized.numel():,} weights of q_proj (layer 0)")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# **Quantize one block by hand.** NF4 cuts the weights into blocks of 64. In each block:
#
# 1. the block's scale is its largest absolute value, its **absmax** (kept, one per block), so
#    that every weight / absmax lies in [-1, 1];
# 2. each weight is stored as the **code**: the index (0–15) of the `NF4_CODE` value nearest to
#    weight / absmax;
# 3. to **dequantize**, look the code's value up and multiply it by the absmax.
#
# That is all NF4 is; bitsandbytes does the same in fast kernels.
#
# **Exercise 4.** Write `nf4_block(block)`: one block of 64 float32 weights → `(codes, absmax,
# dequantized)`: the 64 codes as an integer tensor, the absmax as a 0-d tensor, the 64
# dequantized float32 values. The check compares all three, bit for bit, with bitsandbytes'
# `quantize_4bit` / `dequantize_4bit` (NF4, block size 64).

# %%
code = torch.tensor(NF4_CODE)  # the 16 values, index 0..15


def nf4_block(block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exercise 4: one block of 64 weights → (codes 0..15, absmax, dequantized values)."""
    # BEGIN SOLUTION: the three steps above; `code` holds the 16 values (broadcasting compares all at once)
    absmax = block.abs().max()
    codes = ((block / absmax).unsqueeze(-1) - code).abs().argmin(dim=-1)
    return codes, absmax, code[codes] * absmax
    # END SOLUTION


# %%
nf4_block = checks.check_nf4_block(nf4_block)

# %% [markdown]
# Your function on the first blocks of the real matrix, against bitsandbytes' round trip of the
# whole matrix (`nf4_roundtrip`: `quantize_4bit` + `dequantize_4bit`):

# %%
checks.note(nf4_block)
import bitsandbytes.functional as bnbf

from reclor_lab.model import nf4_roundtrip

blocks = W.reshape(-1, NF4_BLOCKSIZE)                  # (n_blocks, 64)
n = min(len(blocks), 64)                               # a Python loop: a few blocks are enough
by_hand = torch.stack([nf4_block(b)[2] for b in blocks[:n]])
rt = nf4_roundtrip(W)
codes0 = nf4_block(blocks[0])[0]
print(f"{len(blocks)} blocks of {NF4_BLOCKSIZE}; block 0 uses {codes0.unique().numel()} of the 16 codes")
print(f"by hand == bitsandbytes on the first {n} blocks:",
      torch.equal(by_hand, rt.dequantized.float().reshape(-1, NF4_BLOCKSIZE)[:n]))
print(rt.summary())

# %% [markdown]
# The error is largest in the blocks with a large absmax (the scale stretches the 16 levels
# further apart) and is zero for each block's absmax weight itself (the code holds ±1 exactly).

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3))
ax1.hist(W.flatten().numpy(), bins=80, alpha=0.6, label="original")
ax1.hist(rt.dequantized.flatten().float().numpy(), bins=80, alpha=0.6, label="NF4 round trip")
ax1.set_title("Weights of q_proj (layer 0)")
ax1.set_xlabel("weight value")
ax1.set_ylabel("weights")
ax1.legend()
ax2.hist((rt.dequantized.float() - W).flatten().numpy(), bins=80, color="tab:red")
ax2.set_title("Quantization error (dequantized − original)")
ax2.set_xlabel("error")
ax2.set_ylabel("weights")
fig.tight_layout()
plt.show()

# %% [markdown]
# **NF4 against the alternatives.** Three 4-bit formats, each with one absmax per block of 64:
#
# * **uniform absmax int4**: round weight / absmax × 7 to an integer in −7 … 7 (15 evenly spaced
#   levels);
# * **FP4** (`quant_type="fp4"` in bitsandbytes): a tiny float (sign, exponent, mantissa); its
#   16 levels are 0 twice (+0 and −0), ±0.005, ±1/6, ±1/4, ±1/3, ±1/2, ±2/3 and ±1;
# * **NF4**: levels at the quantiles of a normal distribution, placed where normally
#   distributed weights are dense.
#
# Trained weights are close to normal, so we measure the round-trip error on normally
# distributed numbers (fixed seed), as a fraction of their standard deviation.
#
# **Predict before you run.** Which of the three formats has the largest error? (Answers to the
# "predict" questions are in `notebooks/README.md`.)

# %%
g = torch.Generator().manual_seed(0)
normal = torch.randn(256, 1024, generator=g)


def int4_roundtrip(w: torch.Tensor) -> torch.Tensor:
    b = w.reshape(-1, NF4_BLOCKSIZE)
    absmax = b.abs().amax(dim=1, keepdim=True)
    return (torch.round(b / absmax * 7) / 7 * absmax).reshape(w.shape)


def bnb_roundtrip(w: torch.Tensor, quant_type: str) -> torch.Tensor:
    packed, state = bnbf.quantize_4bit(w, blocksize=NF4_BLOCKSIZE, quant_type=quant_type)
    return bnbf.dequantize_4bit(packed, state, quant_type=quant_type).float()


errors = {name: ((rt_ - normal).pow(2).mean().sqrt() / normal.std()).item()
          for name, rt_ in (("uniform int4", int4_roundtrip(normal)), ("FP4", bnb_roundtrip(normal, "fp4")),
                            ("NF4", bnb_roundtrip(normal, "nf4")))}
for name, e in errors.items():
    print(f"{name:<13} RMS error {e:.4f} of the weights' std")

fig, ax = plt.subplots(figsize=(6, 2.8))
ax.bar(list(errors), list(errors.values()), color=["tab:gray", "tab:orange", "tab:blue"])
ax.set_ylabel("RMS round-trip error / std")
ax.set_xlabel("4-bit format (absmax per block of 64)")
ax.set_title("Round-trip error on N(0, 1) weights")
for i, e in enumerate(errors.values()):
    ax.text(i, e, f"{e:.3f}", ha="center", va="bottom")
plt.show()

# %% [markdown]
# NF4 has the smallest error. FP4 has the largest, worse even than the uniform grid: four of its 16
# codes sit at about 0 (±0, ±0.005), and the gap from there to ±1/6 is where many normal weights
# fall. Uniform int4 spends its levels evenly, also on the tails where few weights are. (The
# block's absmax weight itself is exact in all three.)
#
# **Are the 16 NF4 codes used equally often?** Quantiles of a normal distribution would be, if
# every weight were divided by one fixed scale. But each block is divided by its *own* absmax,
# the largest of 64 draws, which lands at ±1 by construction: the two extreme codes then hold
# about one weight per block each (1/64 ≈ 1.6 %), while the middle codes hold more than their
# 1/16. Counted on the same N(0, 1) weights:

# %%
packed, _ = bnbf.quantize_4bit(normal, blocksize=NF4_BLOCKSIZE, quant_type="nf4")
codes_used = torch.stack([packed.flatten() >> 4, packed.flatten() & 0xF], dim=1).flatten().long()
share = torch.bincount(codes_used, minlength=16).float() / codes_used.numel()
print("share of the weights per code (0..15):", " ".join(f"{x:.1%}" for x in share.tolist()))
print(f"least used {share.min():.1%} (code {share.argmin().item()}), most used {share.max():.1%} "
      f"(code {share.argmax().item()}); equal use would be {1 / 16:.2%} each")

# %% [markdown]
# So NF4 is not "equal use per code": it is levels placed densely where the weights are, which
# is what keeps its error lowest.
#
# **What double quantization saves.** Plain NF4 keeps one fp32 absmax per 64 weights: 32 / 64 =
# 0.5 bit per weight on top of the 4-bit code. Double quantization stores those absmaxes as 8-bit
# codes instead, with one fp32 scale per 256 of them: 8 / 64 + 32 / (64 · 256) ≈ 0.127 bit. The
# saving is about 0.37 bit per quantized weight, about 0.3 GB on Llama-2-7B's 6.5 billion
# quantized weights:

# %%
from reclor_lab.model import LLAMA2_7B_CLASSIFIER_PARAMS, LLAMA2_7B_QUANTIZED_PARAMS, nf4_bytes_per_param

plain_bits, dq_bits = nf4_bytes_per_param(double_quant=False) * 8, nf4_bytes_per_param(double_quant=True) * 8
print(f"bits per weight: {plain_bits:.3f} plain, {dq_bits:.3f} double quantized; saved {plain_bits - dq_bits:.3f}")
print(f"Llama-2-7B: {LLAMA2_7B_QUANTIZED_PARAMS:,} quantized weights → "
      f"{LLAMA2_7B_QUANTIZED_PARAMS * (plain_bits - dq_bits) / 8 / 1e9:.2f} GB saved")

# %% [markdown]
# ## 3. The memory table
#
# The model loaded in 4 bits: `load_model` passes `bnb_config(cfg)` to
# `AutoModelForSequenceClassification.from_pretrained(…, num_labels=4)`.
#
# Transformers prints a **load report** (below the cell, on stderr): `lm_head.weight`
# UNEXPECTED (the checkpoint is a causal LM, whose word-prediction head a classifier does not
# use, so it is never loaded: 131 M weights on Llama-2-7B) and `score.weight` MISSING (the
# 4-way classification head is new, randomly initialised, and trained by us; "consider
# training" is exactly the plan). Both are what we want. `load_model` shows this report only when asked
# (`report=True`, as here): everywhere else in the kit, a report listing only these two is
# expected and left out, and one naming any other weight still shows.

# %%
model_path = cfg.model_name_or_path  # shown relative to the repository root in the report
model = load_model(cfg.replace(model_name_or_path=os.path.relpath(model_path) if os.path.isabs(model_path)
                               else model_path), tokenizer, report=True)

# %% [markdown]
# Estimated weight bytes in three precisions, and what the loaded model measures; both models as
# 4-way classifiers (no `lm_head`). 4-bit costs
# 4.127 bits per projection weight with double quantization (4 bits + 8-bit scales per 64 +
# fp32 scales per 256·64); embeddings, norms and head are not quantized. They stay in the
# compute dtype: bf16 on a GPU (what the estimate assumes), but fp32 on a CPU, which is why the
# measured size of the tiny model on a CPU is above the 4-bit estimate. On the tiny model the
# embeddings are a big share anyway, so the saving is smaller than on Llama-2-7B, where nearly
# all weights are projections (the share is printed below the table).
#
# **Predict before you run.** 4-bit storage takes Llama-2-7B to about a quarter of its bf16
# size. Will it shrink the tiny model as much?

# %%
from reclor_lab.model import memory_report

print(memory_report(model).table())
print(f"Llama-2-7B as a classifier: {LLAMA2_7B_QUANTIZED_PARAMS:,} of {LLAMA2_7B_CLASSIFIER_PARAMS:,} weights "
      f"({LLAMA2_7B_QUANTIZED_PARAMS / LLAMA2_7B_CLASSIFIER_PARAMS:.1%}) are in projections")
mem = memory_report(model)
print(f"{PRESET}: {mem.quantized_params:,} of {mem.params:,} weights ({mem.quantized_params / mem.params:.1%}) are in "
      f"projections; its 4-bit estimate is {mem.nf4_bytes / mem.bf16_bytes:.0%} of its bf16 size "
      f"(Llama-2-7B: {mem.llama2_7b_nf4_bytes / mem.llama2_7b_bf16_bytes:.0%})")
print()
print(f"measured, loaded without quantization: {plain_bytes / 1e3:,.1f} KB"
      if plain_bytes < 1e8 else f"measured, loaded without quantization: {plain_bytes / 1e9:.3f} GB")

# %% [markdown]
# ## 4. What a `Linear4bit` holds
#
# Every projection (`q_proj`, `k_proj`, …, `down_proj`) is now a `Linear4bit`. Its weight is a
# `Params4bit`: a flat `uint8` tensor with two 4-bit indices per byte, plus a `quant_state`
# with everything needed to dequantize: the original shape, the block size, the absmax scales
# (8-bit with double quantization, with their own fp32 scales in `state2`) and the code.

# %%
layer = model.model.layers[0].self_attn.q_proj
w4, qs = layer.weight, layer.weight.quant_state
print(layer)
print("weight:", type(w4).__name__, w4.dtype, tuple(w4.shape), f"({logical_numel(w4):,} weights in {w4.numel():,} bytes)")
print("original shape:", tuple(qs.shape), "| quant type:", qs.quant_type, "| block size:", qs.blocksize)
print("absmax:", qs.absmax.dtype, tuple(qs.absmax.shape), "| double quantized:", qs.nested)
if qs.nested:
    print("state2.absmax:", qs.state2.absmax.dtype, tuple(qs.state2.absmax.shape),
          "| block size:", qs.state2.blocksize)
print("compute dtype:", layer.compute_dtype)

# %% [markdown]
# Dequantizing the layer's weight gives back the NF4 round trip of the original matrix (with
# double quantization, as loaded), and the layer's forward pass is an ordinary matmul with it.

# %%
deq = bnbf.dequantize_4bit(w4.data, qs).float().cpu()
same_as_roundtrip = nf4_roundtrip(W, double_quant=qs.nested).dequantized.float()
print("dequantized layer == NF4 round trip of W:", torch.equal(deq, same_as_roundtrip))
x = torch.randn(3, qs.shape[1], generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    y = layer(x.to(w4.device, layer.compute_dtype)).float().cpu()
print("layer(x) ≈ x @ deq.T:", torch.allclose(y, x @ deq.T, atol=1e-2, rtol=1e-2))

# %% [markdown]
# ## 5. Which kernel computes a 4-bit layer?
#
# "4-bit" names how the weights are **stored**. To compute, every path expands them again; which
# kernel does that depends on the hardware:
#
# * **On a GPU** (the instructor's run), bitsandbytes' CUDA kernels dequantize each weight block
#   to bf16 and hand it to a bf16 matmul; a single-token forward uses a fused 4-bit kernel instead.
#   Autograd sees an ordinary matmul, so LoRA's gradients are exact up to bf16 rounding.
# * **On a CPU**, bitsandbytes 0.50 has two paths. Every CPU can *dequantize + matmul* in the
#   compute dtype (fp32 here), just as the GPU does in bf16. CPUs whose flags include
#   `avx512_bf16` (recent Intel Xeons, AMD Zen 4/5) also have a *packed bf16 kernel*: the first
#   evaluation pass repacks the weights into a CPU-specific layout (and expands the
#   double-quantized scales to bf16), and from then on every forward pass, training too, runs
#   that kernel. It has no backward rule, so the gradients reaching the LoRA matrices below a
#   repacked layer come out wrong (torch warns "an autograd kernel was not registered … silently
#   incorrect behavior"), and a run would train differently on different laptops.
#
# The kit therefore keeps every 4-bit layer on the *dequantize + matmul* path on every CPU
# (`load_model` calls `reclor_lab.cpu4bit.use_portable_kernels`): the same fp32 arithmetic and
# the same numbers whatever the CPU, at the cost of a slower evaluation on `avx512_bf16` CPUs.
# What this machine has and what bitsandbytes would do here (this output depends on the CPU
# that ran the notebook, so nbval does not compare it):

# %%
# NBVAL_IGNORE_OUTPUT
print(cpu_kernel_report(model).lines())

# %% [markdown]
# An evaluation pass leaves the layers as they were loaded: not repacked, still double quantized,
# still computing in the compute dtype.
#
# **Predict before you run.** This machine may have `avx512_bf16`. After one evaluation pass,
# will the layer be repacked?

# %%
model.eval()
with torch.no_grad():
    model(**tokenizer(["Context: a short passage. Question: why?"], return_tensors="pt").to(w4.device))
print("after an evaluation pass: repacked:", is_repacked(layer), "| double quantized:", layer.weight.quant_state.nested,
      "| path:", cpu_kernel_report(model).model_path if w4.device.type == "cpu" else "CUDA kernels")

# %% [markdown]
# **Exercise 5.** LoRA (notebook 03) adapts every 4-bit linear layer except the head. peft
# wants their *leaf names* (`"q_proj"`, not `"model.layers.0.self_attn.q_proj"`). Write
# `lora_targets(model)`: the sorted unique leaf names of every `bnb.nn.Linear4bit` in the
# model, leaving out the head `score`.

# %%
def lora_targets(model) -> list[str]:
    """Exercise 5: sorted unique leaf names of every 4-bit linear layer except the head `score`."""
    # BEGIN SOLUTION: walk model.named_modules(); keep the last part of the name of every bnb.nn.Linear4bit
    names = set()
    for name, module in model.named_modules():
        leaf = name.split(".")[-1]
        if isinstance(module, bnb.nn.Linear4bit) and leaf != "score":
            names.add(leaf)
    return sorted(names)
    # END SOLUTION


# %%
lora_targets = checks.check_lora_targets(lora_targets, model)

# %%
checks.note(lora_targets)
targets = lora_targets(model)
print(targets)
n_layers = sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
print(f"{n_layers} Linear4bit layers = {model.config.num_hidden_layers} decoder layers × {len(targets)} projections")
print("head:", type(model.score).__name__, tuple(model.score.weight.shape), model.score.weight.dtype,
      "| 4-bit:", is_4bit(model.score.weight))

# %% [markdown]
# ## What you have now
#
# The model in 4 bits, and the list of layers LoRA will adapt. Notebook 03 adds the adapters.
