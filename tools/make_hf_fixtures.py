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
                         "bf16_baseline": how far the same HF model computing in bf16 (fp32 master
                         LoRA weights, as loom's GPU path) lands from fp32 — loss, step-1 LoRA
                         gradients, and 20 AdamW steps at GPU_LR. The GPU tests allow twice these errors (the flash-attention
                         rule: a low-precision kernel may be at most 2x as wrong as plain bf16).

Documents are run one at a time through HF (no packing there), and the loss is the sum of
target-token losses over all documents divided by the number of targets in the whole batch —
exactly the quantity loom computes on one packed buffer.

Runs on a CPU in a few seconds:  python3 tools/make_hf_fixtures.py  (torch, transformers, peft)
"""
import copy
import json
import os
import shutil

import torch
import transformers
import peft
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "hf")
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


def load_for_baseline(d, dtype):
    """The fixture as loom loads it: base and adapter from disk, everything computed in `dtype`."""
    base = transformers.AutoModelForCausalLM.from_pretrained(os.path.join(d, "model"), dtype=dtype,
                                                             attn_implementation="eager")
    return peft.PeftModel.from_pretrained(base, os.path.join(d, "adapter"), is_trainable=True,
                                          autocast_adapter_dtype=False).to(dtype)


def lora_params(model):
    return [(n, p) for n, p in model.named_parameters() if "lora_" in n]


def train_with_fp32_master(model, docs, n_targets, lr, steps):
    """AdamW on fp32 master copies of the LoRA weights while the model computes in its own dtype
    (loom's GPU scheme: bf16 compute, fp32 master weights, gradients and optimizer state)."""
    live = lora_params(model)
    master = [p.detach().float().clone().requires_grad_(True) for _, p in live]
    opt = torch.optim.AdamW(master, lr=lr, betas=ADAM["betas"], eps=ADAM["eps"],
                            weight_decay=ADAM["weight_decay"])
    losses = []
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
        torch.nn.utils.clip_grad_norm_(master, MAX_GRAD_NORM)
        opt.step()
        opt.zero_grad()
        losses.append(step_loss)
    return losses, {n: m.detach().clone() for (n, _), m in zip(live, master)}


def scaled(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def bf16_baseline(d, docs, n_targets):
    """Errors of HF computing in bf16 against HF in fp32 on this fixture: the yardstick of the
    GPU tests (tests/gpu_step_test.cpp allows twice these)."""
    grads, totals = [], []
    for dtype in (torch.float32, torch.bfloat16):
        m = load_for_baseline(d, dtype)
        total = 0.0
        for doc in docs:
            s, _, _ = doc_loss_sum(m, doc)
            (s / n_targets).backward()
            total += s.item()
        grads.append({n: p.grad.float() for n, p in lora_params(m)})
        totals.append(total)
    out = {"loss_rel": abs(totals[1] - totals[0]) / totals[0],
           "grad_scaled": max(scaled(grads[1][n], grads[0][n]) for n in grads[0]),
           "lr": GPU_LR, "steps": GPU_STEPS}
    (s32, w32), (s16, w16) = [train_with_fp32_master(load_for_baseline(d, dt), docs, n_targets, GPU_LR,
                                                     GPU_STEPS) for dt in (torch.float32, torch.bfloat16)]
    out["step_loss_rel"] = max(abs(a - b) / b for a, b in zip(s16, s32))
    out["final_weights_scaled"] = max(scaled(w16[n], w32[n]) for n in w32)
    return out


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
                       bf16_baseline=bf16_baseline(d, docs, n_targets),
                       torch=torch.__version__, transformers=transformers.__version__,
                       peft=peft.__version__), f, indent=1)
    print(f"{arch}: loss {total / n_targets:.6f}, {n_targets} targets, 5-step losses "
          + " ".join(f"{x:.5f}" for x in losses))


def main():
    torch.manual_seed(0)
    for k, (arch, spec) in enumerate(ARCHS.items()):
        run_arch(arch, spec, seed=100 + k)


if __name__ == "__main__":
    main()
