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
# # 03 · LoRA on the 4-bit model
#
# The 4-bit weights are frozen: nothing can train them. LoRA puts a small trainable update
# next to each chosen linear layer instead:
#
# $$W = W_0 + \frac{\alpha}{r}\, B A, \qquad A \in \mathbb{R}^{r \times \text{in}},\;
#   B \in \mathbb{R}^{\text{out} \times r}$$
#
# $W_0$ stays frozen (here: 4-bit), only $A$ and $B$ learn, and with a small rank $r$ they hold
# $r\,(\text{in} + \text{out})$ numbers instead of $\text{in} \cdot \text{out}$. $B$ starts at
# zero, so training starts from exactly the pretrained model. This notebook:
#
# 1. writes the update out on one layer and checks it against peft,
# 2. finds the layers to adapt,
# 3. injects the adapters (`prepare_model_for_kbit_training` + `get_peft_model`),
# 4. counts what trains.
#
# **Stand-alone.** It reads only the model from disk (it repeats notebook 02's 4-bit load; no
# state is shared between notebooks). One exercise: `count_lora_params`.

# %%
PRESET = "tiny"  # or "llama2-7b": the reference solution (GPU, weights and data on disk)

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the Hugging Face hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from reclor_lab.config import get_preset
from reclor_lab.notebook import start_notebook

start_notebook("torch", "transformers", "peft", "bitsandbytes")  # cd to the repo root, print versions

cfg = get_preset(PRESET)
print()
print(cfg.summary("preset", "model_name_or_path", "lora_r", "lora_alpha", "lora_dropout", "lora_targets"))

# %%
import bitsandbytes.functional as bnbf
import ipywidgets as widgets
import torch

from reclor_lab import checks
from reclor_lab.cpu4bit import layer_compute_dtype
from reclor_lab.lora import (
    find_lora_targets, inject_lora, lora_error_bound, predicted_lora_params, trainable_report,
)
from reclor_lab.modeling import (
    LLAMA2_7B_HIDDEN, LLAMA2_7B_INTERMEDIATE, LLAMA2_7B_LAYERS, LLAMA2_7B_PARAMS, load_model,
    load_tokenizer, quantizable_linears,
)

# %% [markdown]
# The model in 4 bits, as in notebook 02 (the load report is explained there).

# %%
tokenizer = load_tokenizer(cfg.model_name_or_path)
model = load_model(cfg, tokenizer)
device = next(model.parameters()).device

# %% [markdown]
# ## 1. The update on one layer, by hand
#
# Take the query projection of the first decoder layer. Its frozen weight $W_0$ is the
# dequantized 4-bit matrix. We give $A$ and $B$ some values (as if after training: at the start
# $B = 0$ and the update is exactly zero) and compute the adapted layer two ways: with the merged
# weight $W_0 + \frac{\alpha}{r} B A$, and as the layer computes it, $W_0 x + \frac{\alpha}{r}
# B (A x)$, which never builds the full-size update.

# %%
layer = model.model.layers[0].self_attn.q_proj
out_features, in_features = layer.out_features, layer.in_features
r, alpha = cfg.lora_r, cfg.lora_alpha
scaling = alpha / r

W0 = bnbf.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float().cpu()  # (out, in), frozen
g = torch.Generator().manual_seed(0)
A = torch.randn(r, in_features, generator=g) / in_features**0.5   # (r, in)
B = torch.randn(out_features, r, generator=g) / r**0.5            # (out, r): not zero, "trained"
x = torch.randn(4, in_features, generator=g)

W = W0 + scaling * B @ A                  # the merged weight
y_merged = x @ W.T
y_lora = x @ W0.T + scaling * (x @ A.T) @ B.T  # what the layer computes: two thin matmuls
print(f"W0 {tuple(W0.shape)}, A {tuple(A.shape)}, B {tuple(B.shape)}, alpha/r = {scaling}")
within_rounding = (y_merged - y_lora).abs().double() <= lora_error_bound(x, W0, A, B, scaling, torch.float32)
print("merged == two thin matmuls (within fp32 rounding):", bool(within_rounding.all()))
print(f"full update: {out_features * in_features:,} numbers; LoRA: r·(in+out) = {r * (in_features + out_features):,}")

# %% [markdown]
# ## 2. Which layers get adapters?
#
# The reference adapts every 4-bit linear layer except the head: the seven projections of each
# decoder layer (`q_proj`, `k_proj`, `v_proj`, `o_proj` in attention; `gate_proj`, `up_proj`,
# `down_proj` in the MLP). `find_lora_targets` is the package's version of exercise 3 in
# notebook 02; `cfg.lora_targets` can name a subset instead (`None` means all).

# %%
targets = list(cfg.lora_targets) if cfg.lora_targets else find_lora_targets(model)
print("targets:", targets)
shapes = [(m.out_features, m.in_features) for name, m in quantizable_linears(model)
          if name.split(".")[-1] in targets]
for t in targets:
    found = [(m.out_features, m.in_features) for name, m in quantizable_linears(model)
             if name.split(".")[-1] == t]
    print(f"  {t:<10} {len(found)} layers of (out, in) = {found[0]}")

# %% [markdown]
# **Exercise 4.** How many parameters will train? Write `count_lora_params(shapes, r)`: for
# adapted layers of shapes `(out_features, in_features)`, the number of LoRA parameters,
# $\sum r\,(\text{in} + \text{out})$ ($A$ is $r \times \text{in}$, $B$ is $\text{out} \times r$).

# %%
def count_lora_params(shapes: list[tuple[int, int]], r: int) -> int:
    """Exercise 4: LoRA parameters for adapted layers of shapes (out_features, in_features)."""
    # BEGIN SOLUTION: one term r · (in + out) per shape; the shapes are (out, in)
    return sum(r * (in_f + out_f) for out_f, in_f in shapes)
    # END SOLUTION


# %%
count_lora_params = checks.check_count_lora_params(count_lora_params)

# %% [markdown]
# The classification head `score` (4 × hidden) is new, so it trains in full next to the
# adapters. Prediction for this model, and the same sum for Llama-2-7B (32 layers, hidden 4096,
# MLP 11008):

# %%
head = model.score.weight.numel()
predicted = count_lora_params(shapes, r) + head
print(f"{PRESET}: {len(shapes)} adapted layers → {count_lora_params(shapes, r):,} LoRA parameters "
      f"+ {head:,} head = {predicted:,} trainable")
print("package's predicted_lora_params agrees:", predicted_lora_params(model, targets, r) == predicted)

h, m = LLAMA2_7B_HIDDEN, LLAMA2_7B_INTERMEDIATE
llama_shapes = LLAMA2_7B_LAYERS * ([(h, h)] * 4 + [(m, h), (m, h), (h, m)])
llama_lora = count_lora_params(llama_shapes, 16)
print(f"Llama-2-7B, r=16, all 7 projections: {llama_lora:,} LoRA + {4 * h:,} head "
      f"= {llama_lora + 4 * h:,} trainable ({(llama_lora + 4 * h) / LLAMA2_7B_PARAMS:.2%} of {LLAMA2_7B_PARAMS:,})")

# %% [markdown]
# ## 3. Injecting the adapters
#
# `inject_lora(model, cfg)` does the reference's two peft calls:
#
# * `prepare_model_for_kbit_training(model)`: freezes every parameter, casts the weights that
#   are not 4-bit (embeddings, norms, head) to fp32 for stable training, and turns on gradient
#   checkpointing when the config asks for it (`gradient_checkpointing`: less memory, ~30 %
#   slower; the 7B preset uses it);
# * `get_peft_model(model, LoraConfig(task_type=SEQ_CLS, r, lora_alpha, lora_dropout,
#   target_modules))`: wraps each target layer in a `lora.Linear4bit` holding the frozen 4-bit
#   layer plus `lora_A`, `lora_B` and a dropout, and, because of `SEQ_CLS`, keeps a trainable
#   copy of the head `score`.

# %%
peft_model = inject_lora(model, cfg)
lora_cfg = peft_model.peft_config["default"]
print("LoraConfig:", lora_cfg.task_type, "| r", lora_cfg.r, "| alpha", lora_cfg.lora_alpha,
      "| dropout", lora_cfg.lora_dropout, "| targets", sorted(lora_cfg.target_modules))
print(peft_model.base_model.model.model.layers[0].self_attn.q_proj)

# %% [markdown]
# What trains now, counted like peft's `print_trainable_parameters` (a 4-bit weight counts as the
# number of weights it represents), and the prediction from the shapes alone:

# %%
report = trainable_report(peft_model)
print(report.line())
print("as predicted from the shapes:", report.trainable == predicted)
trainable_names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
print(f"{len(trainable_names)} trainable tensors, e.g.:")
for n in trainable_names[:2] + trainable_names[-1:]:
    print("  ", n)

# %% [markdown]
# **Checked against peft.** Put our $A$ and $B$ into peft's adapter of the same layer and run it:
# in eval mode (no dropout) it computes $W_0 x + \frac{\alpha}{r} B A x$ with the 4-bit $W_0$,
# which is our hand-computed `y_merged`. (This overwrites the adapter's starting values;
# nothing trains in this notebook, so that is harmless here.)
#
# "Equal" in floating point means "within rounding": peft sums the same products in another
# order. How far apart two such sums may be follows from the dtype the layer's matmul runs in
# (fp32 on a CPU, bf16 on a GPU) and the number of roundings: `lora_error_bound` gives that
# bound for each output, so the check below is as strict as the arithmetic allows, and no
# stricter.

# %%
lora_layer = peft_model.base_model.model.model.layers[0].self_attn.q_proj
with torch.no_grad():
    lora_layer.lora_A["default"].weight.copy_(A)
    lora_layer.lora_B["default"].weight.copy_(B)
peft_model.eval()
with torch.no_grad():
    y_peft = lora_layer(x.to(device)).float().cpu()
matmul_dtype = layer_compute_dtype(lora_layer.base_layer)  # the dtype this layer's kernel computes in
bound = lora_error_bound(x, W0, A, B, scaling, matmul_dtype)
print("the layer's matmul runs in:", matmul_dtype)
print("peft's lora.Linear4bit == W0 + (alpha/r)·B·A, within rounding:",
      bool(((y_peft.double() - y_merged.double()).abs() <= bound).all()))

# %% [markdown]
# ### Play: the LoRA explorer
#
# How does the rank and the choice of layers change what trains? Pick `r` and the target
# layers; the counts use your `count_lora_params` on this model's shapes and on Llama-2-7B's.
# (Live in Jupyter; a saved notebook shows the widget as static.)

# %%
shape_of = {t: s for t, s in zip(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                                 [(h, h)] * 4 + [(m, h), (m, h), (h, m)])}
layer_shapes = {t: [(mod.out_features, mod.in_features) for name, mod in quantizable_linears(model)
                    if name.split(".")[-1] == t] for t in targets}
total_params = report.total - report.trainable  # the model without adapters (head included)


def explore(r: int, chosen: tuple[str, ...]) -> str:
    mine = count_lora_params([s for t in chosen for s in layer_shapes[t]], r) + head
    big = count_lora_params([shape_of[t] for t in chosen if t in shape_of] * LLAMA2_7B_LAYERS, r) + 4 * h
    return (f"<b>{PRESET}</b>: {mine:,} trainable ({mine / total_params:.2%} of {total_params:,})<br>"
            f"<b>Llama-2-7B</b>: {big:,} trainable ({big / LLAMA2_7B_PARAMS:.3%} of {LLAMA2_7B_PARAMS:,})")


rank = widgets.SelectionSlider(options=[1, 2, 4, 8, 16, 32, 64], value=cfg.lora_r, description="r")
chosen = widgets.SelectMultiple(options=targets, value=tuple(targets), rows=len(targets), description="targets")
result = widgets.HTML(explore(rank.value, chosen.value))


def update(_change) -> None:
    result.value = explore(rank.value, chosen.value)


rank.observe(update, names="value")
chosen.observe(update, names="value")
widgets.VBox([rank, chosen, result])

# %% [markdown]
# ## What you have now
#
# A 4-bit model whose only trainable parts are the LoRA matrices and the head. Notebook 04
# builds the same model through `reclor_lab.train.setup` and trains it.
