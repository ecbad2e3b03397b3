#!/usr/bin/env python3
"""Writes the Hugging Face parity fixtures under tests/fixtures/hf/<arch>/.

For each of llama (llama3 rope scaling, attention bias), mistral (sliding window), qwen2 (q/k/v
bias, sharded checkpoint) and qwen3 (q/k norm, head_dim != hidden/heads, tied embeddings) it makes
a tiny random model with transformers, wraps it with a peft LoRA on all seven projections with
non-zero A and B, and records what loom's reference path must reproduce:

  model/                 config.json + safetensors (bf16 values, so fp32 loading is exact)
  adapter/               the peft adapter as save_pretrained writes it (the starting LoRA weights)
  batch.json             documents (ids + per-token target mask), their split into micro-batches
  expected.safetensors   logits of every document, the LoRA gradients (PEFT names), loss
  expected.json          loss, target count, the losses of 5 AdamW steps (+ optimizer settings), and
                         "bf16_baseline": the yardstick of the GPU tests (tests/gpu_step_test.cpp):
                         how far HF computing in loom's GPU precision (bf16 storage, fp32
                         accumulation, fp32 logits/loss/LoRA gradients/master weights; see
                         "The yardstick" below) lands from HF in fp32, measured exactly as the test
                         measures loom's GPU against loom's fp32 reference: per-token losses (max
                         abs), step-1 LoRA gradients and final LoRA weights (max over tensors of
                         each tensor's scaled error), and the step losses of 20 AdamW steps at
                         GPU_LR (max rel). The test allows kRule (2) times these (the flash-attention
                         rule: a low-precision kernel may be at most 2x as wrong as plain bf16).
                         "bf16_baseline_nf4": the same figures for the test's nf4 mode, measured
                         on the NF4 round trip of the base weights (see nf4_model below).

Documents are run one at a time through HF (no packing there), and the loss is the sum of
target-token losses over all documents divided by the number of targets in the whole batch —
exactly the quantity loom computes on one packed buffer.

Runs on a CPU in a few minutes (torch 2.15.0, transformers 5.23.0, peft 0.21.2 wrote the fixtures;
pip install torch==2.15.0 transformers==5.23.0 peft==0.21.2):
  python3 tools/make_hf_fixtures.py                   every fixture from scratch
  python3 tools/make_hf_fixtures.py --yardstick-only  only the two yardsticks of the existing fixtures
The nf4 yardstick needs build/nf4_roundtrip (make build/nf4_roundtrip).
"""
import argparse
import copy
import json
import os
import shutil
import subprocess
import tempfile
import types

import torch
import transformers
import peft
from safetensors.torch import load_file, save_file

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(REPO, "tests", "fixtures", "hf")
NF4_ROUNDTRIP = os.path.join(REPO, "build", "nf4_roundtrip")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA_R, LORA_ALPHA = 4, 8
ADAM = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
MAX_GRAD_NORM = 1.0
STEPS = 5
GPU_LR, GPU_STEPS = 1e-3, 20   # the GPU step test's run (tests/gpu_step_test.cpp)
# Document lengths; the first two form micro-batch 0, the rest micro-batch 1.
DOC_LENGTHS = [9, 1, 14, 6]
MICRO_BATCHES = [[0, 1], [2, 3]]

# head_dim 64 everywhere: the GPU attention kernels take head dims 64 and 128, and the same
# fixtures check the GPU step (tests/gpu_step_test.cpp).
ARCHS = {
    "llama": dict(
        cls="LlamaForCausalLM", cfg_cls="LlamaConfig",
        cfg=dict(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=64, rms_norm_eps=1e-5,
                 max_position_embeddings=64, attention_bias=True, tie_word_embeddings=False,
                 rope_theta=10000.0,
                 rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                   high_freq_factor=4.0, original_max_position_embeddings=16))),
    "mistral": dict(
        cls="MistralForCausalLM", cfg_cls="MistralConfig",
        cfg=dict(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                 num_attention_heads=2, num_key_value_heads=1, head_dim=64, rms_norm_eps=1e-5,
                 max_position_embeddings=64, sliding_window=4, tie_word_embeddings=False,
                 rope_theta=10000.0)),
    "qwen2": dict(
        cls="Qwen2ForCausalLM", cfg_cls="Qwen2Config", shard="200KB",
        cfg=dict(vocab_size=64, hidden_size=128, intermediate_size=96, num_hidden_layers=2,
                 num_attention_heads=2, num_key_value_heads=1, rms_norm_eps=1e-6,
                 max_position_embeddings=64, tie_word_embeddings=False, rope_theta=1000000.0)),
    "qwen3": dict(
        cls="Qwen3ForCausalLM", cfg_cls="Qwen3Config",
        cfg=dict(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=64, rms_norm_eps=1e-6,
                 max_position_embeddings=64, tie_word_embeddings=True, rope_theta=1000000.0)),
}


def bf16_exact(t):
    """Rounds to bf16 and back: the saved bf16 checkpoint then loads as exactly these fp32 values."""
    return t.to(torch.bfloat16).to(torch.float32)


def randomize(model, gen):
    """Non-trivial weights: matrices ~ N(0, 0.15), norm weights 1 + N(0, 0.2), biases N(0, 0.1)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(bf16_exact(1 + 0.2 * torch.randn(p.shape, generator=gen)))
            elif name.endswith("bias"):
                p.copy_(bf16_exact(0.1 * torch.randn(p.shape, generator=gen)))
            else:
                p.copy_(bf16_exact(0.15 * torch.randn(p.shape, generator=gen)))


def make_batch(vocab, gen):
    docs = []
    for n in DOC_LENGTHS:
        ids = torch.randint(0, vocab, (n,), generator=gen).tolist()
        # Prompt/response style mask: the first third of each document is not a target.
        mask = [0 if i < n // 3 else 1 for i in range(n)]
        docs.append(dict(ids=ids, mask=mask))
    return docs


def doc_loss_sum(model, doc):
    """Sum of target-token CE of one document and its logits. labels[t] = ids[t] where mask[t];
    the model predicts token t from tokens < t, so position t-1 is scored against labels[t]."""
    ids = torch.tensor([doc["ids"]])
    logits = model(input_ids=ids).logits.float()[0]
    labels = torch.tensor([i if m else -100 for i, m in zip(doc["ids"], doc["mask"])])
    shift_logits, shift_labels = logits[:-1], labels[1:]
    loss = torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=-100,
                                             reduction="sum")
    return loss, logits, int((shift_labels != -100).sum())


def lora_grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def peft_name(n):
    """PEFT's saved key for a live parameter name: the adapter name "default" is removed."""
    return n.replace(".default", "")


def build(arch, spec, seed):
    gen = torch.Generator().manual_seed(seed)
    cfg = getattr(transformers, spec["cfg_cls"])(**spec["cfg"], attn_implementation="eager")
    cfg.dtype = torch.float32
    base = getattr(transformers, spec["cls"])(cfg).float()
    randomize(base, gen)
    d = os.path.join(OUT, arch)
    shutil.rmtree(d, ignore_errors=True)
    # Save a bf16 copy: converting `base` itself would also round its fp32 rope inv_freq buffer.
    copy.deepcopy(base).to(torch.bfloat16).save_pretrained(os.path.join(d, "model"),
                                                           max_shard_size=spec.get("shard", "50MB"))
    os.remove(os.path.join(d, "model", "generation_config.json"))
    lcfg = peft.LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0,
                           target_modules=TARGETS, task_type="CAUSAL_LM")
    model = peft.get_peft_model(base, lcfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(os.path.join(d, "adapter"))
    os.remove(os.path.join(d, "adapter", "README.md"))  # peft's model card: not a fixture
    return model, gen, d


# --- The yardstick of the GPU tests ------------------------------------------------------------
# HF computing in loom's GPU precision (models/cuda_model.cpp, ops/*.cu), against HF in fp32:
#   stored in bf16: weights, the LoRA copies used by the GEMMs, every activation (residual stream,
#     norm outputs, q/k/v, attention output, gate/up, SwiGLU product, x·Aᵀ) and every activation
#     gradient; each kernel computes in fp32 from bf16 loads and rounds its output once.
#   fp32: GEMM accumulation, softmax, RMSNorm statistics, RoPE angles and rotation, the LM head's
#     logits, the loss, LoRA gradients (accumulated in fp32), master weights and AdamW state.
# Plain HF in bf16 differs from that in ways loom does not share, so it is patched where it does:
#   LM head: HF's bf16 logits -> fp32 logits and loss (ops/cross_entropy.cu: GemmOut::kFp32), dz
#     rounded to bf16 before dx = dz·W.
#   LoRA projections: HF rounds the LoRA gradients to bf16 and sums them in bf16 per document ->
#     linear_forward/linear_backward of cuda_model.cpp: fp32 dA/dB from bf16 operands.
#   attention: HF rounds the scores to bf16 -> fp32 scores, bf16 P for P·V, flash backward with
#     bf16 P and dS (ops/attention_kernels.cuh).
#   RoPE: HF rotates in bf16 with bf16 cos/sin -> fp32 rotation, one rounding (ops/rope.cu).
#   SwiGLU: HF rounds silu(g) before the product -> one rounding (ops/swiglu.cu).
#   RMSNorm backward: HF rounds dout·w to bf16 -> fp32 (ops/rmsnorm.cu).
# Every figure is measured exactly as tests/gpu_step_test.cpp measures loom's GPU against its fp32
# reference (same reductions), so "at most kRule times the yardstick" compares like with like.
BF16 = torch.bfloat16
MODELING = [transformers.models.llama.modeling_llama, transformers.models.mistral.modeling_mistral,
            transformers.models.qwen2.modeling_qwen2, transformers.models.qwen3.modeling_qwen3]


def to_bf16_values(t):
    """fp32 tensor holding t rounded to bf16 (a bf16 operand read by an fp32 kernel)."""
    return t.to(BF16).float()


class RoundValueOnly(torch.autograd.Function):
    """Rounds the value to bf16, passes the gradient through in fp32 (an fp32 kernel's internal
    rounding point that has no bf16 gradient buffer behind it)."""
    @staticmethod
    def forward(ctx, t):
        return to_bf16_values(t)

    @staticmethod
    def backward(ctx, g):
        return g


# loom's GEMMs and attention accumulate in fp32 in some order, and the order decides the bf16
# rounding of an output that lands near a tie; over 20 steps such flips move the step losses by up
# to 2x (measured: llama 2.7% with fp32 sums, 1.6% with fp64). So the yardstick is the worst over two
# accumulations, fp32 and fp64 (another order, in effect), rather than one arbitrary order, and where a
# caller asks for them (worst_against_fp32's permuted_orders) over fp32 sums in more orders: each
# product's inner dimension in a random permutation (order_gen).
ACCUMULATIONS = (torch.float32, torch.float64)
accumulate_in = torch.float32
order_gen = None  # a torch.Generator while mm sums in a permuted order


def mm(a, b):
    """a @ b of fp32 tensors holding bf16 values, summed in accumulate_in (in a random order of the
    inner dimension while order_gen is set), returned as fp32."""
    if order_gen is not None:
        p = torch.randperm(a.shape[-1], generator=order_gen)
        a, b = a[..., p], b[..., p, :]
    return (a.to(accumulate_in) @ b.to(accumulate_in)).float()


class LoomHead(torch.autograd.Function):
    """LM head + loss input: fp32 logits from bf16 x and W; backward dz rounded to bf16, dx = bf16(dz·W)."""
    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(w)
        return mm(x.float(), w.float().T)

    @staticmethod
    def backward(ctx, dz):
        (w,) = ctx.saved_tensors
        return (mm(to_bf16_values(dz), w.float())).to(BF16), None


class LoomLinear(torch.autograd.Function):
    """One frozen projection with its LoRA adapter, as CudaModel::Impl::linear_forward/backward:
    y = bf16(x·Wᵀ), y = bf16(y + b), u = bf16(x·A16ᵀ), y = bf16(s·u·B16ᵀ + y);
    du = bf16(s·dy·B16), dB = s·dyᵀ·u (fp32), dA = duᵀ·x (fp32), dx = bf16(bf16(dy·W) + du·A16).
    x, W, b are bf16 tensors; A, B the fp32 master weights (A16, B16 their bf16 copies)."""
    @staticmethod
    def forward(ctx, x, w, b, a, bm, s):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).float()
        a16, b16 = to_bf16_values(a), to_bf16_values(bm)
        y = to_bf16_values(mm(x2, w.float().T))
        if b is not None:
            y = to_bf16_values(y + b.float())
        u = to_bf16_values(mm(x2, a16.T))
        y = (s * mm(u, b16.T) + y).to(BF16)
        ctx.save_for_backward(x2, w, u, a16, b16)
        ctx.s, ctx.shape = s, shape
        return y.reshape(*shape[:-1], -1)

    @staticmethod
    def backward(ctx, dy):
        x2, w, u, a16, b16 = ctx.saved_tensors
        s = ctx.s
        dy2 = dy.reshape(-1, dy.shape[-1]).float()
        du = to_bf16_values(s * mm(dy2, b16))
        grad_b = s * mm(dy2.T, u)
        grad_a = mm(du.T, x2)
        dx = (to_bf16_values(mm(dy2, w.float())) + mm(du, a16)).to(BF16)
        return dx.reshape(ctx.shape), None, None, grad_a, grad_b, None


class LoomAttention(torch.autograd.Function):
    """Causal (windowed) GQA attention as ops/attention_kernels.cuh computes it: fp32 scores and
    softmax, P rounded to bf16 for P·V, output rounded once; backward from the recomputed fp32 P
    with bf16 P and dS as tensor-core operands, dq/dk/dv rounded once (dk, dv summed over the
    query heads of their group in fp32 first). q (B, H, T, D), k and v (B, KVH, T, D), bf16."""
    @staticmethod
    def forward(ctx, q, k, v, visible, scale):
        g = q.shape[1] // k.shape[1]
        kf, vf = k.float().repeat_interleave(g, 1), v.float().repeat_interleave(g, 1)
        scores = (mm(q.float(), kf.transpose(-1, -2)) * scale).masked_fill(~visible, float("-inf"))
        p = torch.softmax(scores, -1)
        out = mm(to_bf16_values(p), vf).to(BF16)
        ctx.save_for_backward(q, k, v, out, p)
        ctx.scale, ctx.g = scale, g
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, p = ctx.saved_tensors
        g, scale = ctx.g, ctx.scale
        kf, vf = k.float().repeat_interleave(g, 1), v.float().repeat_interleave(g, 1)
        do = dout.float()
        p16 = to_bf16_values(p)
        dp = mm(do, vf.transpose(-1, -2))
        delta = (do * out.float()).sum(-1, keepdim=True)
        ds16 = to_bf16_values(p * (dp - delta))

        def per_kv_head(t):  # (B, H, T, D) -> (B, KVH, T, D), fp32 sum over each group
            return t.reshape(t.shape[0], -1, g, *t.shape[2:]).sum(2)
        dq = (mm(ds16, kf) * scale).to(BF16)
        dk = per_kv_head(mm(ds16.transpose(-1, -2), q.float()) * scale).to(BF16)
        dv = per_kv_head(mm(p16.transpose(-1, -2), do)).to(BF16)
        return dq, dk, dv, None, None


def loom_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Stands in for each modeling file's eager_attention_forward (same signature and output)."""
    mask = attention_mask[:, :, :, : key.shape[-2]]
    visible = mask if mask.dtype == torch.bool else mask == 0
    return LoomAttention.apply(query, key, value, visible, scaling).transpose(1, 2).contiguous(), None


def loom_rope(q, k, cos, sin, unsqueeze_dim=1):
    """Stands in for apply_rotary_pos_emb: fp32 cos/sin (see use_fp32_rope_angles), fp32 rotation, one rounding."""
    cos, sin = cos.unsqueeze(unsqueeze_dim).float(), sin.unsqueeze(unsqueeze_dim).float()

    def rotate(x):
        xf = x.float()
        half = xf.shape[-1] // 2
        return (xf * cos + torch.cat((-xf[..., half:], xf[..., :half]), -1) * sin).to(x.dtype)
    return rotate(q), rotate(k)


def loom_rmsnorm_forward(self, x):
    """HF's RMSNorm forward, bf16(bf16(x·rstd)·w), with an fp32 backward (ops/rmsnorm.cu)."""
    xf = x.float()
    normed = RoundValueOnly.apply(xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))
    return (normed * self.weight.float()).to(x.dtype)


def loom_mlp_forward(self, x):
    """SwiGLU product in fp32, one rounding (ops/swiglu.cu)."""
    h = (torch.nn.functional.silu(self.gate_proj(x).float()) * self.up_proj(x).float()).to(x.dtype)
    return self.down_proj(h)


def loom_lora_forward(self, x, *args, **kwargs):
    base = self.base_layer
    return LoomLinear.apply(x, base.weight, base.bias, self.lora_A["default"].weight,
                            self.lora_B["default"].weight, self.scaling["default"])


class LoomPrecision:
    """Within this context, the modeling files' attention and RoPE are loom's (module globals)."""
    def __enter__(self):
        self.saved = [(m, m.eager_attention_forward, m.apply_rotary_pos_emb) for m in MODELING]
        for m in MODELING:
            m.eager_attention_forward, m.apply_rotary_pos_emb = loom_attention, loom_rope
        return self

    def __exit__(self, *exc):
        for m, attention, rope in self.saved:
            m.eager_attention_forward, m.apply_rotary_pos_emb = attention, rope


def load_adapter_fp32(model, d):
    """The adapter's values exactly as saved (fp32), whatever dtype peft gave the live parameters."""
    saved = load_file(os.path.join(d, "adapter", "adapter_model.safetensors"))
    with torch.no_grad():
        for n, p in lora_params(model):
            p.data = saved[peft_name(n)].float().clone()


def load_for_baseline(model_dir, d, loom_bf16):
    """The fixture as loom loads it: base from model_dir, adapter from the fixture d. fp32 everywhere
    (loom's reference path), or loom's GPU precision (bf16 storage, so the base weights are rounded
    to bf16 as the GPU stores them; patched as described above; use inside LoomPrecision)."""
    dtype = BF16 if loom_bf16 else torch.float32
    base = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype,
                                                             attn_implementation="eager")
    model = peft.PeftModel.from_pretrained(base, os.path.join(d, "adapter"), is_trainable=True)
    load_adapter_fp32(model, d)
    if not loom_bf16:
        return model
    for module in model.modules():
        kind = type(module).__name__
        if kind.endswith("RMSNorm"):
            module.forward = types.MethodType(loom_rmsnorm_forward, module)
        elif kind.endswith("MLP"):
            module.forward = types.MethodType(loom_mlp_forward, module)
        elif isinstance(module, peft.tuners.lora.Linear):
            module.forward = types.MethodType(loom_lora_forward, module)
    inner = model.base_model.model
    head = inner.lm_head
    head.forward = lambda x: LoomHead.apply(x, head.weight)
    rotary = inner.model.rotary_emb
    angles = rotary.forward
    rotary.forward = lambda x, position_ids: angles(x.float(), position_ids)  # fp32 cos/sin
    return model


def lora_params(model):
    return [(n, p) for n, p in model.named_parameters() if "lora_" in n]


def tensor_name(n):
    """The GPU test's name of a LoRA tensor (tests/lora_compare.h): layers.<l>.<proj>.lora_<A|B>."""
    parts = n.split(".")
    layer = parts[parts.index("layers") + 1]
    proj = next(x for x in parts if x.endswith("_proj"))
    ab = next(x for x in parts if x.startswith("lora_"))
    return f"layers.{layer}.{proj}.{ab}"


def scaled(a, b):
    """tests/test_util.h scaled_error: max |a - b| / max |b| over one tensor."""
    return ((a - b).abs().max() / b.abs().max()).item()


def worst_tensor(got, want):
    """Max over LoRA tensors of each tensor's scaled error, and which tensor (lora_compare.h)."""
    errors = {tensor_name(n): scaled(got[n], want[n]) for n in want}
    name = max(errors, key=errors.get)
    return errors[name], name


def token_losses(model, doc):
    """Per-position CE (0 where not a target) from fp32 logits: what CudaModel::token_losses returns."""
    ids = torch.tensor([doc["ids"]])
    logits = model(input_ids=ids).logits.float()[0]
    labels = torch.tensor([i if m else -100 for i, m in zip(doc["ids"], doc["mask"])])
    return torch.nn.functional.cross_entropy(logits[:-1], labels[1:], ignore_index=-100, reduction="none")


def train_with_fp32_master(model, docs, n_targets, lr, steps):
    """AdamW on fp32 master copies of the LoRA weights (loom's GPU scheme: fp32 master weights,
    gradients and optimizer state), global normalisation and clipping as loom's step."""
    live = lora_params(model)
    master = [p.detach().float().clone().requires_grad_(True) for _, p in live]
    opt = torch.optim.AdamW(master, lr=lr, betas=ADAM["betas"], eps=ADAM["eps"],
                            weight_decay=ADAM["weight_decay"])
    losses, first_grads = [], None
    for _ in range(steps):
        with torch.no_grad():
            for (_, p), m in zip(live, master):
                p.copy_(m)
                p.grad = None
        step_loss = 0.0
        for doc in docs:
            s, _, _ = doc_loss_sum(model, doc)
            (s / n_targets).backward()
            step_loss += s.item() / n_targets
        for (_, p), m in zip(live, master):
            m.grad = p.grad.float()
        if first_grads is None:
            first_grads = {n: m.grad.clone() for (n, _), m in zip(live, master)}
        torch.nn.utils.clip_grad_norm_(master, MAX_GRAD_NORM)
        opt.step()
        opt.zero_grad()
        losses.append(step_loss)
    return losses, first_grads, {n: m.detach().clone() for (n, _), m in zip(live, master)}


def run_in(loom_bf16, model_dir, d, docs, n_targets):
    """Per-token losses at the starting weights, then the GPU test's 20 AdamW steps."""
    model = load_for_baseline(model_dir, d, loom_bf16)
    with torch.no_grad():
        tokens = torch.cat([token_losses(model, doc) for doc in docs])
    return (tokens,) + train_with_fp32_master(model, docs, n_targets, GPU_LR, GPU_STEPS)


def worst_against_fp32(run, precision, measured_as, worst=None, permuted_orders=0):
    """A yardstick: run(False) in fp32, then run(True) inside precision() for each of ACCUMULATIONS and
    for permuted_orders more fp32 orders (mm's order_gen seeded 0, 1, ...); run gives (token losses,
    step losses, step-1 grads, final weights). The worst token-loss, grad, step-loss and final-weight
    errors (worst(got, want) -> (error, tensor name), default worst_tensor)."""
    global accumulate_in, order_gen
    worst = worst or worst_tensor
    tok32, s32, g32, w32 = run(False)
    out = {"measured_as": measured_as, "lr": GPU_LR, "steps": GPU_STEPS, "token_loss_abs": 0.0, "grad_scaled": 0.0,
           "step_loss_rel": 0.0, "final_weights_scaled": 0.0}
    orders = [(dtype, None) for dtype in ACCUMULATIONS] + [(torch.float32, seed) for seed in range(permuted_orders)]
    for accumulate_in, seed in orders:
        order_gen = None if seed is None else torch.Generator().manual_seed(seed)
        with precision():
            tok16, s16, g16, w16 = run(True)
        grad, grad_at = worst(g16, g32)
        weights, weights_at = worst(w16, w32)
        out["token_loss_abs"] = max(out["token_loss_abs"], (tok16 - tok32).abs().max().item())
        if grad >= out["grad_scaled"]:
            out["grad_scaled"], out["grad_worst_tensor"] = grad, grad_at
        out["step_loss_rel"] = max(out["step_loss_rel"], max(abs(a - b) / b for a, b in zip(s16, s32)))
        if weights >= out["final_weights_scaled"]:
            out["final_weights_scaled"], out["final_weights_worst_tensor"] = weights, weights_at
    accumulate_in, order_gen = torch.float32, None
    if permuted_orders:
        out["summation_orders"] = len(orders)
    out.update(torch=torch.__version__, transformers=transformers.__version__, peft=peft.__version__)
    return out


def bf16_baseline(model_dir, d, docs, n_targets, base_weights):
    """Errors of HF in loom's GPU precision against HF in fp32 on this fixture with the base weights
    of model_dir, each measured as tests/gpu_step_test.cpp measures loom's GPU against loom's fp32
    reference; the worst over ACCUMULATIONS."""
    return worst_against_fp32(lambda loom_bf16: run_in(loom_bf16, model_dir, d, docs, n_targets), LoomPrecision,
                              f"HF in loom's GPU precision vs HF fp32, worst of fp32 and fp64 sums, "
                              f"{base_weights} (tools/make_hf_fixtures.py)")


def nf4_model(d, out_dir):
    """The fixture's base model with every LoRA target projection replaced by its NF4 round trip
    (bf16 -> NF4 blocksize 64, double quantization -> fp32), written by loom itself
    (build/nf4_roundtrip, models/weights.h apply_nf4_roundtrip): the weights of loom's fp32 reference
    in nf4 mode. Loaded in bf16 they are what the GPU multiplies by in nf4 mode (ops/nf4.h: its
    dequantization is this fp32 value rounded to bf16). Unlike the fixture's bf16 weights they are not
    bf16 values, so the nf4 mode carries one rounding more than the bf16 mode: the weights'."""
    if not os.access(NF4_ROUNDTRIP, os.X_OK):
        raise SystemExit(f"{NF4_ROUNDTRIP} is missing: run make build/nf4_roundtrip first")
    subprocess.run([NF4_ROUNDTRIP, os.path.join(d, "model"), out_dir], check=True)
    shutil.copy(os.path.join(d, "model", "config.json"), out_dir)  # HF's config, not loom's rewrite
    return out_dir


def yardsticks(d, docs, n_targets):
    """{"bf16_baseline": on the fixture's weights (the test's bf16 mode), "bf16_baseline_nf4": on
    their NF4 round trip (the test's nf4 mode)}."""
    with tempfile.TemporaryDirectory() as tmp:
        return {"bf16_baseline": bf16_baseline(os.path.join(d, "model"), d, docs, n_targets,
                                               "base weights as stored (bf16)"),
                "bf16_baseline_nf4": bf16_baseline(nf4_model(d, tmp), d, docs, n_targets,
                                                   "base projections NF4 round-tripped (nf4 mode)")}


def run_arch(arch, spec, seed):
    model, gen, d = build(arch, spec, seed)
    docs = make_batch(spec["cfg"]["vocab_size"], gen)
    n_targets = sum(sum(doc["mask"][1:]) for doc in docs)

    # 1. Loss, logits and LoRA gradients of the whole batch.
    model.zero_grad()
    total, logits = 0.0, {}
    for i, doc in enumerate(docs):
        s, lg, _ = doc_loss_sum(model, doc)
        (s / n_targets).backward()
        total += s.item()
        logits[f"logits.{i}"] = lg.detach().contiguous()
    grads = {f"grad.{peft_name(n)}": g for n, g in lora_grads(model).items()}
    save_file({**logits, **grads}, os.path.join(d, "expected.safetensors"))

    # 2. Five AdamW steps, each over both micro-batches with global normalisation + clipping.
    opt = torch.optim.AdamW([p for n, p in model.named_parameters() if "lora_" in n], **ADAM)
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        step_loss = 0.0
        for mb in MICRO_BATCHES:
            for i in mb:
                s, _, _ = doc_loss_sum(model, docs[i])
                (s / n_targets).backward()
                step_loss += s.item() / n_targets
        torch.nn.utils.clip_grad_norm_([p for n, p in model.named_parameters() if "lora_" in n],
                                       MAX_GRAD_NORM)
        opt.step()
        losses.append(step_loss)

    with open(os.path.join(d, "batch.json"), "w") as f:
        json.dump(dict(documents=docs, micro_batches=MICRO_BATCHES), f)
    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump(dict(loss=total / n_targets, n_targets=n_targets, step_losses=losses,
                       lr=ADAM["lr"], beta1=ADAM["betas"][0], beta2=ADAM["betas"][1],
                       eps=ADAM["eps"], weight_decay=ADAM["weight_decay"],
                       max_grad_norm=MAX_GRAD_NORM, lora_r=LORA_R, lora_alpha=LORA_ALPHA,
                       **yardsticks(d, docs, n_targets),
                       torch=torch.__version__, transformers=transformers.__version__,
                       peft=peft.__version__), f, indent=1)
    print(f"{arch}: loss {total / n_targets:.6f}, {n_targets} targets, 5-step losses "
          + " ".join(f"{x:.5f}" for x in losses))


def rewrite_yardstick(arch):
    """Recomputes only the yardsticks of an existing fixture; every other file and value stays
    bit for bit as it was (the fp32 parts depend on the CPU's summation order at the ~1e-7 level,
    so a full regeneration on another machine would change them within parity_test's 1e-4)."""
    d = os.path.join(OUT, arch)
    path = os.path.join(d, "expected.json")
    with open(path) as f:
        expected = json.load(f)
    with open(os.path.join(d, "batch.json")) as f:
        docs = json.load(f)["documents"]
    expected.update(yardsticks(d, docs, expected["n_targets"]))
    with open(path, "w") as f:
        json.dump(expected, f, indent=1)
    print_yardsticks(arch, expected)



def print_yardsticks(arch, expected):
    """One line per yardstick of a fixture's expected.json (bf16 and nf4)."""
    for key in ("bf16_baseline", "bf16_baseline_nf4"):
        b = expected[key]
        print(f"{arch} {key}: token loss {b['token_loss_abs']:.2e} abs, step-1 grads {b['grad_scaled']:.2e} "
              f"({b['grad_worst_tensor']}), step losses {b['step_loss_rel']:.2e} rel, final weights "
              f"{b['final_weights_scaled']:.2e} ({b['final_weights_worst_tensor']})")

def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--yardstick-only", action="store_true",
                        help='recompute "bf16_baseline" and "bf16_baseline_nf4" of the existing fixtures, nothing else')
    args = parser.parse_args()
    torch.manual_seed(0)
    for k, (arch, spec) in enumerate(ARCHS.items()):
        if args.yardstick_only:
            rewrite_yardstick(arch)
        else:
            run_arch(arch, spec, seed=100 + k)


if __name__ == "__main__":
    main()
