#!/usr/bin/env python3
"""The Hugging Face baseline of BENCHMARK.md's sft-alpaca workload, measured beside build/bench.

    python3 tools/hf_baseline.py --preset llama-3.1-8b [--steps 5] [--warmup 2] [--json FILE]
    python3 tools/hf_baseline.py --preset qwen3-0.6b --check-bench build/bench   (CPU only)
    python3 tools/hf_baseline.py --preset qwen3-0.6b --print-data                (CPU only)
    python3 tools/hf_baseline.py --preset llama-3.1-8b --tuned [--micro-batch N] [--attn A] [--no-liger]
    python3 tools/hf_baseline.py --preset tiny --tuned --device cpu --cpu-oom-tokens 1200 --steps 1 --warmup 1
                                                      (CPU smoke of the tuned path; figures meaningless)
    python3 tools/hf_baseline.py --preset qwen3-30b-a3b [--steps 5] [--warmup 2]   (mixture of experts)
    python3 tools/hf_baseline.py --preset tiny-moe --device cpu --cpu-oom-tokens 2500 --steps 1 --warmup 1
                                                      (CPU smoke of the MoE path; figures meaningless)

The baseline, exactly as BENCHMARK.md words it: transformers AutoModelForCausalLM.from_config in
bf16 with attn_implementation="sdpa" (random weights, torch seed 0), peft LoRA r=16 alpha=16
dropout 0 on q,k,v,o,gate,up,down, gradient checkpointing (non-reentrant), micro-batches of 4
sequences right-padded to the longest of the 4, 8 accumulation steps (32 sequences per step),
torch AdamW lr 2e-4 weight decay 0, grad-norm clip 1.0.

--tuned (issue 15, "hf-peft-tuned"): the same model, LoRA, optimizer, documents and steps, as a user with
an 80 GB GPU would run them: no gradient checkpointing; each micro-batch's documents flattened into one
row without padding (transformers' DataCollatorWithFlattening: position_ids restart per document, the
first label of each is -100, so nothing crosses a document boundary); attention flash_attention_2 if
the flash-attn package imports, else sdpa (block-diagonal causal mask from the position_ids, see
attention_choice); Liger's kernels when liger_kernel imports; PYTORCH_CUDA_ALLOC_CONF
expandable_segments; the micro-batch (documents, 1..32) the largest whose biggest row of the run fits,
found by powers of two then bisection, each try two forward+backward passes with AdamW's state held
aside, out-of-memory caught and freed (the trials are in the JSON: micro_batch_search).

The data are build/bench's, document for document (data/synthetic.h, data/dataloader.h, data/rng.h):
    SplitMix64(seed): state += 0x9E3779B97F4A7C15; out = mix64(state)
    lengths  (seed 1234): per pair, u1, u2 = ((out >> 11) + 1)·2⁻⁵³; r = sqrt(-2 ln u1), a = 2π u2;
             length = clip(llround(200·exp(0.6·z)), 32, 2048), z = r cos a, then r sin a
    ids      (seed 7): uniform below V, raw outputs below 2⁶⁴ mod V redrawn, documents back to back
    order    (seed mix64(42 ^ mix64(0))): Fisher-Yates, i = N-1 .. 1 swaps i with below(i + 1)
    step k   documents order[32k, 32k + 32); the baseline's micro-batch j is documents 4j .. 4j+3
Every token after a document's first is a target; the loss is the sum over the step's targets
divided by their count (num_items_in_batch), the quantity the engine computes.

Mixture of experts (issue 16: qwen3-30b-a3b, mixtral-8x7b; tiny-moe, the CPU smoke's, exists only
here): Qwen3MoeForCausalLM / MixtralForCausalLM from_config as above, every layer sparse, the router's
top-k as the preset sets it, output_router_logits off and router_aux_loss_coef at the published value
(both as HF's configs and build/bench's presets have them; tiny-moe turns the load-balancing loss on
to exercise it). The same LoRA as build/bench's: the four attention projections and every expert's
gate/up/down. PEFT 0.21.2 cannot reach the fused expert stacks by target_modules and rewrites the
expert names (Qwen3-MoE gate_proj/up_proj/down_proj, Mixtral w1/w3/w2, the names passed here) into
target_parameters [gate_up_proj, down_proj], gate and up one adapter of rank 2r
(tests/fixtures/moe/README.md). That is 994,836,480 trainable parameters on qwen3-30b-a3b (a rank-16
adapter per expert), 357,564,416 on mixtral-8x7b. Gradient checkpointing as above.
Memory: qwen3-30b-a3b's bf16 weights are 56.9 GiB; PEFT keeps the adapters in fp32, so they, their
gradients and AdamW's two moments add 14.8 GiB: 71.7 GiB before activations, of the 79 GiB an 80 GB
H100 shows. The rest (checkpointed activations, the fp32 logits of a micro-batch over 151,936 words,
the W + BA PEFT materialises for each layer's expert stacks) may not fit 4 sequences of the longest
step, so for the MoE presets the micro-batch is the largest of 4, 2, 1 sequences whose biggest padded
micro-batch of the run fits (two forward+backward passes with AdamW's state held aside, out-of-memory
caught), the accumulation growing to keep 32 sequences per step: what a transformers user does when
per_device_train_batch_size 4 runs out of memory. Not a QLoRA baseline: bitsandbytes' load_in_4bit
(transformers 5.23 integrations/bitsandbytes.py replace_with_bnb_linear) swaps nn.Linear modules only,
and the experts are 3-D nn.Parameters, so 4-bit loading leaves ~29B of the 30.5B parameters in bf16;
it would change the baseline without making it fit. If not even one sequence fits, the script stops
and says so (the row is then missing: run it on an H200). mixtral-8x7b's bf16 weights are 87 GiB:
it does not fit an 80 GB GPU at all; on an H200 (141 GB) they and the adapters' 5.3 GiB do.

Figures (one JSON object on stdout, the fields of build/bench):
    tokens_per_s  real (non-pad) tokens of the timed steps / their wall seconds (synchronised)
    peak_mem_gib  torch.cuda.max_memory_allocated() over the timed steps
    pad_share     pad tokens / all tokens the padded micro-batches compute
    mfu           tokens_per_s · (4·P + 12·L·H·D·ℓ̄) / the matmul ceiling measured here (torch);
                  P of an MoE preset counts the active parameters, as build/bench does (matmul_params)
"""
import argparse
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import time

import numpy as np

MASK64 = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15
DOCUMENTS = 4096            # build/bench's pool (data.synthetic_docs)
SEQUENCES_PER_STEP = 32
MICRO_BATCH = 4
LOADER_SEED = 42
LENGTH_SEED, TOKEN_SEED = 1234, 7
MEDIAN, SIGMA, MIN_LEN, MAX_LEN = 200.0, 0.6, 32, 2048
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# The first lengths build/bench generates (build/bench --preset qwen3-0.6b --print-data): a copy of
# the generator that drifts from the C++ one fails here before anything is timed.
CPP_FIRST_LENGTHS = [135, 154, 138, 547, 168, 128, 221, 404, 263, 89, 151, 694, 142, 157, 237, 183]

# models/model_config.cpp preset_model_config(): arch, V, C, F, L, H, KVH, D, tied, rms eps, rope,
# max positions. rope: (theta, llama3 factor or None).
PRESETS = {
    "qwen3-0.6b": ("qwen3", 151936, 1024, 3072, 28, 16, 8, 128, True, 1e-6, (1e6, None), 40960),
    "llama-3.2-1b": ("llama", 128256, 2048, 8192, 16, 32, 8, 64, True, 1e-5, (500000.0, 32.0), 131072),
    "mistral-7b": ("mistral", 32768, 4096, 14336, 32, 32, 8, 128, False, 1e-5, (1e6, None), 32768),  # v0.3
    "llama-3.1-8b": ("llama", 128256, 4096, 14336, 32, 32, 8, 128, False, 1e-5, (500000.0, 8.0), 131072),
    "qwen3-8b": ("qwen3", 151936, 4096, 12288, 36, 32, 8, 128, False, 1e-6, (1e6, None), 40960),
    "tiny": ("llama", 512, 128, 352, 4, 4, 2, 32, True, 1e-5, (1e4, None), 2048),
    # Mixture of experts: F is the (unused) dense width; the experts are in MOE.
    "qwen3-30b-a3b": ("qwen3_moe", 151936, 2048, 6144, 48, 32, 4, 128, False, 1e-6, (1e6, None), 40960),
    "mixtral-8x7b": ("mixtral", 32000, 4096, 14336, 32, 32, 8, 128, False, 1e-5, (1e6, None), 32768),
    "tiny-moe": ("qwen3_moe", 512, 128, 352, 2, 4, 2, 32, False, 1e-6, (1e6, None), 2048),
}
# make_moe_preset() of the same file: E experts, K per token, FE expert width, norm_topk_prob (Mixtral's
# router always normalises), output_router_logits, router_aux_loss_coef; every layer sparse.
MOE = {
    "qwen3-30b-a3b": (128, 8, 768, True, False, 0.001),
    "mixtral-8x7b": (8, 2, 14336, True, False, 0.02),
    "tiny-moe": (4, 2, 32, True, True, 0.02),
}
# tests/flops_test.cpp's hand count of qwen3-30b-a3b's active matmul parameters (engine/flops.h's P).
QWEN3_30B_A3B_ACTIVE = 3_041_656_832
ATTENTION_TARGETS = TARGETS[:4]
# PEFT's names of the expert projections (gate, up, down) it rewrites into target_parameters.
EXPERT_TARGETS = {"qwen3_moe": ["gate_proj", "up_proj", "down_proj"], "mixtral": ["w1", "w3", "w2"]}


# ---------------------------------------------------------------------------------------------
# The data: data/rng.h, data/synthetic.cpp and data/dataloader.cpp in Python

def mix64(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


class SplitMix64:
    def __init__(self, seed):
        self.state = seed & MASK64

    def next(self):
        self.state = (self.state + GAMMA) & MASK64
        return mix64(self.state)

    def below(self, n):
        rejected = (1 << 64) % n
        r = self.next()
        while r < rejected:
            r = self.next()
        return r % n

    def open_unit(self):
        return ((self.next() >> 11) + 1) * 2.0 ** -53


def splitmix64_block(seed, first, count):
    """Outputs first .. first+count-1 of SplitMix64(seed), vectorised (uint64 arithmetic wraps)."""
    k = np.arange(first + 1, first + count + 1, dtype=np.uint64)
    z = np.uint64(seed) + k * np.uint64(GAMMA)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def llround(x):
    """C's llround for x >= 0: halves away from zero (Python's round() goes to even)."""
    f = math.floor(x)
    return int(f) + (1 if x - f >= 0.5 else 0)


def clipped_length(z):
    return min(max(llround(MEDIAN * math.exp(SIGMA * z)), MIN_LEN), MAX_LEN)


def synthetic_lengths(n):
    # math (the C library's libm), not numpy: exp/log/cos must round as std:: does in the engine.
    rng = SplitMix64(LENGTH_SEED)
    lengths = []
    while len(lengths) < n:
        radius = math.sqrt(-2.0 * math.log(rng.open_unit()))
        angle = 6.283185307179586476925286766559 * rng.open_unit()
        lengths.append(clipped_length(radius * math.cos(angle)))
        lengths.append(clipped_length(radius * math.sin(angle)))
    return lengths[:n]


def synthetic_ids(total, vocab):
    """The first `total` ids of SplitMix64(7).below(vocab): raw outputs < 2⁶⁴ mod vocab are skipped."""
    rejected = np.uint64((1 << 64) % vocab)
    kept, drawn = [], 0
    while sum(len(k) for k in kept) < total:
        raw = splitmix64_block(TOKEN_SEED, drawn, total + 1024)
        drawn += len(raw)
        kept.append(raw[raw >= rejected] % np.uint64(vocab))
    return np.concatenate(kept)[:total].astype(np.int64)


def epoch_order(n, seed=LOADER_SEED, epoch=0):
    order = list(range(n))
    rng = SplitMix64(mix64((seed ^ mix64(epoch)) & MASK64))
    for i in range(n - 1, 0, -1):
        j = rng.below(i + 1)
        order[i], order[j] = order[j], order[i]
    return order


def synthetic_documents(vocab):
    """build/bench's pool of DOCUMENTS documents: their lengths and their ids (one array each)."""
    lengths = synthetic_lengths(DOCUMENTS)
    assert lengths[:len(CPP_FIRST_LENGTHS)] == CPP_FIRST_LENGTHS, (
        f"synthetic lengths {lengths[:16]} differ from build/bench's {CPP_FIRST_LENGTHS}: "
        "this copy of data/synthetic.cpp is out of date")
    starts = np.concatenate([[0], np.cumsum(lengths)])
    ids = synthetic_ids(int(starts[-1]), vocab)
    return lengths, [ids[starts[d]:starts[d + 1]] for d in range(DOCUMENTS)]


class Workload:
    """The documents of every step, as build/bench's loader hands them out."""

    def __init__(self, vocab, n_steps):
        self.lengths, self.ids = synthetic_documents(vocab)
        order = epoch_order(DOCUMENTS)
        assert n_steps * SEQUENCES_PER_STEP <= DOCUMENTS, "more steps than one epoch holds"
        self.steps = [order[k * SEQUENCES_PER_STEP:(k + 1) * SEQUENCES_PER_STEP] for k in range(n_steps)]

    def step_json(self, docs):
        return {"tokens": sum(self.lengths[d] for d in docs),
                "lengths": sorted((self.lengths[d] for d in docs), reverse=True),
                "id_sum": int(sum(int(self.ids[d].sum()) for d in docs))}

    def data_json(self, preset, vocab):
        return {"preset": preset, "vocab": vocab, "documents": DOCUMENTS, "seed": LOADER_SEED,
                "first_lengths": self.lengths[:16], "steps": [self.step_json(s) for s in self.steps]}


def check_against_bench(bench, args, workload, vocab):
    cmd = [bench, "--preset", args.preset, "--print-data", "--steps", str(args.steps),
           "--warmup", str(args.warmup)]
    theirs = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    ours = workload.data_json(args.preset, vocab)
    for key in ("vocab", "documents", "first_lengths"):
        if theirs[key] != ours[key]:
            sys.exit(f"error: {key} differs: {' '.join(cmd)} gives {theirs[key]}, tools/hf_baseline.py {ours[key]}")
    for k, (a, b) in enumerate(zip(theirs["steps"], ours["steps"])):
        if a != b:
            sys.exit(f"error: step {k} differs from {bench}'s (tokens {a['tokens']} vs {b['tokens']}, "
                     f"id sum {a['id_sum']} vs {b['id_sum']}): the dataloader or the generator changed")
    print(f"hf_baseline: the documents of {len(ours['steps'])} steps match {bench}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# FLOPs (engine/flops.h)

def matmul_params(preset):
    """P of engine/flops.h: the matmul weights a token goes through, LM head included; in a mixture of
    experts the router and the K experts it is sent to (ModelConfig::active_matmul_params)."""
    _, V, C, F, L, H, KVH, D = PRESETS[preset][:8]
    mlp = 3 * C * F
    if preset in MOE:
        E, K, FE = MOE[preset][:3]
        mlp = K * 3 * C * FE + E * C
    return L * (C * H * D + 2 * C * KVH * D + H * D * C + mlp) + V * C


def check_active_count():
    if matmul_params("qwen3-30b-a3b") != QWEN3_30B_A3B_ACTIVE:
        sys.exit(f"error: matmul_params('qwen3-30b-a3b') = {matmul_params('qwen3-30b-a3b'):,} differs from "
                 f"tests/flops_test.cpp's {QWEN3_30B_A3B_ACTIVE:,}: this copy of engine/flops.h's P is out of date")


def flops_per_token(preset, mean_keys):
    _, _, _, _, L, H, _, D = PRESETS[preset][:8]
    return 4.0 * matmul_params(preset) + 12.0 * L * H * D * mean_keys


def mean_attended_keys(lengths):
    """Causal within each document: the i-th token sees i + 1 keys (these presets have no window)."""
    return sum(n * (n + 1) / 2 for n in lengths) / sum(lengths)


# ---------------------------------------------------------------------------------------------
# The device: ceilings and identification (as build/bench reports them)

def median_ms(torch, run, warmup, runs):
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        start.record()
        run()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def measure_ceilings(torch):
    """8192³ bf16 matmul (median of 20 after 3) and a 2 GiB copy (median of 10 after 2), random data."""
    n = 8192
    a = torch.rand(n, n, device="cuda", dtype=torch.bfloat16) * 2 - 1
    b = torch.rand(n, n, device="cuda", dtype=torch.bfloat16) * 2 - 1
    ms = median_ms(torch, lambda: a @ b.T, 3, 20)
    tflops = 2.0 * n ** 3 / (ms * 1e-3) / 1e12
    del a, b
    src = torch.rand(1 << 30, device="cuda", dtype=torch.bfloat16)  # 2 GiB
    dst = torch.empty_like(src)
    ms = median_ms(torch, lambda: dst.copy_(src), 2, 10)
    tbps = 2.0 * src.numel() * 2 / (ms * 1e-3) / 1e12
    del src, dst
    torch.cuda.empty_cache()
    return tflops, tbps


def command_output(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
        return out.splitlines()[0] if out else ""
    except (OSError, subprocess.CalledProcessError):
        return ""


def git_commit():
    head = command_output(["git", "rev-parse", "--short", "HEAD"])
    if not head:
        return "unknown"
    dirty = command_output(["git", "status", "--porcelain", "--untracked-files=no"])
    return head + "-dirty" if dirty else head


def driver_cuda_version():
    """The CUDA version the driver supports ("13.0"), as cudaDriverGetVersion reports it to build/bench."""
    import ctypes
    try:
        version = ctypes.c_int(0)
        if ctypes.CDLL("libcuda.so.1").cuDriverGetVersion(ctypes.byref(version)) != 0:
            return ""
        return f"{version.value // 1000}.{version.value % 1000 // 10}"
    except OSError:
        return ""


def device_json(torch):
    return {"device": torch.cuda.get_device_name(0),
            "driver": command_output(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]),
            "driver_cuda": driver_cuda_version(), "runtime_cuda": torch.version.cuda}


# ---------------------------------------------------------------------------------------------
# The model

def hf_config(transformers, preset):
    import inspect
    arch, V, C, F, L, H, KVH, D, tied, eps, (theta, llama3_factor), max_pos = PRESETS[preset]
    cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
           "qwen3": transformers.Qwen3Config, "qwen3_moe": transformers.Qwen3MoeConfig,
           "mixtral": transformers.MixtralConfig}[arch]
    rope = {"rope_type": "default", "rope_theta": theta}
    if llama3_factor:
        rope = {"rope_type": "llama3", "rope_theta": theta, "factor": llama3_factor, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    kw = dict(vocab_size=V, hidden_size=C, intermediate_size=F, num_hidden_layers=L, num_attention_heads=H,
              num_key_value_heads=KVH, head_dim=D, rms_norm_eps=eps, max_position_embeddings=max_pos,
              tie_word_embeddings=tied, use_cache=False)
    if "rope_parameters" in inspect.signature(cls.__init__).parameters:  # transformers >= 5
        kw["rope_parameters"] = rope
    else:
        kw["rope_theta"] = theta
        kw["rope_scaling"] = rope if llama3_factor else None
    if arch in ("mistral", "mixtral"):
        kw["sliding_window"] = None  # the preset attends to the whole document (window 0)
    if preset in MOE:
        kw.update(moe_kwargs(preset))
    return cls(**kw)


def moe_kwargs(preset):
    """The experts of an MoE preset as its config class names them."""
    arch, F = PRESETS[preset][0], PRESETS[preset][3]
    E, K, FE, norm_topk, router_logits, aux_coef = MOE[preset]
    kw = dict(num_experts_per_tok=K, output_router_logits=router_logits, router_aux_loss_coef=aux_coef)
    if arch == "mixtral":
        assert FE == F, f"{preset}: Mixtral's experts are intermediate_size wide"
        return {**kw, "num_local_experts": E}
    return {**kw, "num_experts": E, "moe_intermediate_size": FE, "norm_topk_prob": norm_topk,
            "decoder_sparse_step": 1, "mlp_only_layers": []}


def base_model(torch, preset, device, attn="sdpa"):
    """The preset's model with random weights (torch seed 0), bf16, sdpa attention unless told otherwise."""
    import transformers
    torch.manual_seed(0)
    with torch.device(device):
        return transformers.AutoModelForCausalLM.from_config(
            hf_config(transformers, preset), dtype=torch.bfloat16, attn_implementation=attn)


def lora_config(preset=None):
    """r 16, alpha 16 on the seven projections; an MoE preset's MLP targets are its experts, by the names
    PEFT rewrites into target_parameters (module docstring)."""
    import peft
    arch = PRESETS[preset][0] if preset else None
    targets = ATTENTION_TARGETS + EXPERT_TARGETS[arch] if preset in MOE else TARGETS
    return peft.LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, target_modules=targets, bias="none",
                           task_type="CAUSAL_LM")


def build_model(torch, preset, device):
    import peft
    model = base_model(torch, preset, device)
    non_reentrant = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # the name since transformers 5.2x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=non_reentrant)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=non_reentrant)
    model = peft.get_peft_model(model, lora_config(preset))
    # A target naming PEFT stops rewriting would leave the experts frozen: not build/bench's LoRA. (Either
    # form adapts them: PEFT 0.21's target_parameters on transformers 5's fused stacks, or transformers 4's
    # per-expert nn.Linear modules by target_modules.)
    if preset in MOE and not any(".experts." in n for n, p in model.named_parameters() if p.requires_grad):
        sys.exit(f"error: PEFT {peft.__version__} put no LoRA on {preset}'s experts from target_modules "
                 f"{sorted(model.peft_config['default'].target_modules)}; see tests/fixtures/moe/README.md")
    model.train()
    return model


def micro_batches(torch, workload, docs, device, size=MICRO_BATCH):
    """Groups of `size` documents in batch order, right-padded to the group's longest."""
    out = []
    for g in range(0, len(docs), size):
        group = docs[g:g + size]
        width = max(workload.lengths[d] for d in group)
        ids = torch.zeros(len(group), width, dtype=torch.long)
        mask = torch.zeros(len(group), width, dtype=torch.long)
        for row, d in enumerate(group):
            n = workload.lengths[d]
            ids[row, :n] = torch.from_numpy(workload.ids[d])
            mask[row, :n] = 1
        labels = ids.masked_fill(mask == 0, -100)
        out.append({"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)})
    return out


def train_step(torch, model, optimizer, batches, n_targets):
    """One optimizer step over the accumulated micro-batches; returns the step's mean loss."""
    loss_sum = 0.0
    for batch in batches:
        out = model(**batch, num_items_in_batch=n_targets)
        out.loss.backward()
        loss_sum += out.loss.detach()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss_sum)


def synchronize(torch, device):
    if device == "cuda":
        torch.cuda.synchronize()


def trainable_parameters(model):
    return [p for p in model.parameters() if p.requires_grad]


def timed_training(torch, args, model, batches, targets):
    """2 (--warmup) untimed steps, then the timed ones: the figures every mode reports."""
    device = args.device
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=2e-4, weight_decay=0.0)
    for k in range(args.warmup):
        loss = train_step(torch, model, optimizer, batches[k], targets[k])
        print(f"hf_baseline: warm-up step {k + 1}/{args.warmup}, loss {loss:.4f}", file=sys.stderr)
    synchronize(torch, device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, loss = [], 0.0
    t0 = time.perf_counter()
    for k in range(args.warmup, args.warmup + args.steps):
        ts = time.perf_counter()
        loss = train_step(torch, model, optimizer, batches[k], targets[k])  # float(): synchronises
        times.append(time.perf_counter() - ts)
    synchronize(torch, device)
    return {"seconds": time.perf_counter() - t0, "step_times_s": times, "loss_last": loss,
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if device == "cuda" else None}


def figures_of(args, workload, batches, timing, ceilings):
    """tokens/s, MFU and pad share of the timed steps, the same formula for every mode."""
    tflops, tbps = ceilings
    timed = workload.steps[args.warmup:]
    real = sum(workload.lengths[d] for docs in timed for d in docs)
    computed = sum(b["input_ids"].numel() for k in range(args.warmup, len(batches)) for b in batches[k])
    keys = mean_attended_keys([workload.lengths[d] for docs in timed for d in docs])
    fpt = flops_per_token(args.preset, keys)
    tokens_per_s = real / timing["seconds"]
    return dict(tokens_per_s=tokens_per_s, mfu=tokens_per_s * fpt / (tflops * 1e12) if tflops else None,
                peak_mem_gib=timing.pop("peak_mem_gib"), pad_share=1.0 - real / computed, matmul_tflops=tflops,
                copy_tbps=tbps, micro_batches=sum(len(batches[k]) for k in range(args.warmup, len(batches))),
                tokens=real, padded_tokens=computed, flops_per_token=fpt, mean_attended_keys=keys, **timing)


def step_targets(workload):
    """Each step's target count (every token after its document's first): the loss divides by it."""
    return [sum(workload.lengths[d] - 1 for d in docs) for docs in workload.steps]


def start_device(torch, device):
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: the baseline needs a CUDA device (--device cpu runs it on the CPU, figures meaningless)")
    return measure_ceilings(torch) if device == "cuda" else (None, None)


def run_baseline(args, workload):
    import torch
    ceilings = start_device(torch, args.device)
    model = build_model(torch, args.preset, args.device)
    size = fitting_micro_batch(torch, args, model, workload) if args.preset in MOE else MICRO_BATCH
    batches = [micro_batches(torch, workload, docs, args.device, size) for docs in workload.steps]
    timing = timed_training(torch, args, model, batches, step_targets(workload))
    extra = {}
    if args.preset in MOE:
        extra = {"micro_batch": size, "lora_params": sum(p.numel() for p in trainable_parameters(model)),
                 "experts_implementation": model.config._experts_implementation}
    return result_json(args, torch, args.device,
                       {**figures_of(args, workload, batches, timing, ceilings), **extra},
                       engine="hf-peft", recompute="full")


def fitting_micro_batch(torch, args, model, workload):
    """MoE presets: the largest padded micro-batch of 4, 2 or 1 sequences whose biggest of the run (most
    padded tokens) fits, by try_micro_batch (module docstring, "Memory")."""
    reserve = 2 * sum(p.numel() * p.element_size() for p in trainable_parameters(model))  # AdamW's moments
    n_targets = step_targets(workload)[0]
    for size in (MICRO_BATCH, 2, 1):
        groups = [docs[g:g + size] for docs in workload.steps for g in range(0, len(docs), size)]
        biggest = max(groups, key=lambda group: len(group) * max(workload.lengths[d] for d in group))
        batch = micro_batches(torch, workload, biggest, args.device, size)[0]
        fits, _, peak = try_micro_batch(torch, args, model, batch, n_targets, reserve)
        print(f"hf_baseline: micro-batch of {size} sequences ({batch['input_ids'].numel()} padded tokens): "
              f"{'fits' if fits else 'out of memory'}" + (f", peak {peak:.2f} GiB" if peak else ""), file=sys.stderr)
        if fits:
            return size
    sys.exit(f"error: {args.preset}: not even one sequence of the run fits this device in bf16 with LoRA "
             "(weights, adapters and AdamW's state: see the docstring's Memory); run it on a larger GPU")


# ---------------------------------------------------------------------------------------------
# The tuned baseline (issue 15): transformers + peft as a user with an 80 GB GPU runs them. No
# gradient checkpointing; each micro-batch's documents packed into one row without padding
# (DataCollatorWithFlattening: position_ids restart at every document, the first label of each is
# -100); the largest micro-batch (documents) that fits, searched; Liger's kernels when they import.

def attention_choice(requested):
    """The attention that keeps packed documents apart. auto: flash_attention_2 when the flash-attn
    package imports (varlen kernels: each document attends only to itself, nothing computed across);
    else sdpa, which transformers (masking_utils.find_packed_sequence_indices, 4.5x through 5.23)
    gives a block-diagonal causal mask built from the position_ids: exact, but the kernel computes
    the whole row's T x T scores. flex_attention also honours the packing, but transformers compiles
    it with dynamic=False, so every new row length recompiles: a choice to try by hand, not a default."""
    if requested != "auto":
        return requested
    try:
        import flash_attn  # noqa: F401
        return "flash_attention_2"
    except ImportError:
        return "sdpa"


def apply_liger(arch, device, wanted):
    """Liger's RoPE, RMSNorm, SwiGLU and fused linear cross-entropy patched into transformers' classes
    of `arch` (before the model is built). Returns what was done, for the JSON."""
    if not wanted:
        return "off (--no-liger)"
    if device != "cuda":
        return "off (its Triton kernels need a GPU)"
    try:
        import importlib.metadata
        import liger_kernel.transformers as liger
        version = importlib.metadata.version("liger-kernel")
    except ImportError as e:
        return f"off (liger_kernel does not import: {e})"
    getattr(liger, f"apply_liger_kernel_to_{arch}")()
    return f"liger-kernel {version}: rope, rms_norm, swiglu, fused_linear_cross_entropy"


def packed_micro_batches(torch, workload, docs, size, device, flash_kwargs):
    """Groups of `size` documents in batch order, each flattened into one row by transformers'
    DataCollatorWithFlattening (with cu_seq_lens for flash_attention_2, which then skips deriving them)."""
    import transformers
    collate = transformers.DataCollatorWithFlattening(return_flash_attn_kwargs=flash_kwargs)
    out = []
    for g in range(0, len(docs), size):
        batch = collate([{"input_ids": workload.ids[d].tolist()} for d in docs[g:g + size]])
        out.append({k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()})
    return out


def release(torch, device):
    import gc
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def try_micro_batch(torch, args, model, batch, n_targets, reserve_bytes):
    """Two forward+backward passes of `batch` with `reserve_bytes` held aside (AdamW's two moments, not
    yet allocated): (fits, seconds of the second pass, peak GiB). Out-of-memory is caught and freed."""
    device, tokens = args.device, batch["input_ids"].numel()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    fits, seconds, reserve, out = True, None, None, None
    try:
        if device == "cpu" and args.cpu_oom_tokens and tokens > args.cpu_oom_tokens:
            raise torch.cuda.OutOfMemoryError(f"--cpu-oom-tokens {args.cpu_oom_tokens} < {tokens} tokens")
        reserve = torch.empty(reserve_bytes, dtype=torch.uint8, device=device)
        for _ in range(2):  # the second pass meets the allocator as the training loop leaves it
            synchronize(torch, device)
            t0 = time.perf_counter()
            out = model(**batch, num_items_in_batch=n_targets)
            out.loss.backward()
            out = None
            synchronize(torch, device)
            seconds = time.perf_counter() - t0
    except torch.cuda.OutOfMemoryError:
        fits = False
    except RuntimeError as e:  # cuBLAS reports its own failed allocations at the edge of memory this way
        if "ALLOC_FAILED" not in str(e) and "out of memory" not in str(e):
            raise
        fits = False
    # Outside the except clause: the traceback (and the activations its frames hold) is gone by now.
    out = reserve = None
    model.zero_grad(set_to_none=True)
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device == "cuda" else None
    release(torch, device)
    return fits, seconds, peak


def search_micro_batch(torch, args, model, workload):
    """The largest micro-batch (documents per packed row, 1..32) whose biggest row over the run's steps
    fits: powers of two until one fails, then bisection between the last that fit and the first that
    did not. Returns (size, the trials in order)."""
    reserve = 2 * sum(p.numel() * p.element_size() for p in trainable_parameters(model))
    targets = step_targets(workload)
    trials = {}

    def fits(size):
        biggest = max(((docs, g) for docs in workload.steps for g in range(0, len(docs), size)),
                      key=lambda dg: sum(workload.lengths[d] for d in dg[0][dg[1]:dg[1] + size]))
        docs, g = biggest
        batch = packed_micro_batches(torch, workload, docs[g:g + size], size, args.device,
                                     args.attn == "flash_attention_2")[0]
        ok, seconds, peak = try_micro_batch(torch, args, model, batch, targets[0], reserve)
        trials[size] = {"micro_batch": size, "tokens": batch["input_ids"].numel(), "fits": ok,
                        "seconds": seconds, "peak_gib": peak}
        print(f"hf_baseline: micro-batch {size:2d} ({trials[size]['tokens']} tokens): "
              f"{'fits' if ok else 'out of memory'}", file=sys.stderr)
        return ok

    fit, fail, size = 0, None, 1
    while size <= SEQUENCES_PER_STEP:
        if not fits(size):
            fail = size
            break
        fit, size = size, size * 2
    if fit == 0:
        sys.exit(f"error: one document of up to {MAX_LEN} tokens does not fit on the device without "
                 "gradient checkpointing; the tuned baseline cannot run here")
    while fail is not None and fail - fit > 1:
        mid = (fit + fail) // 2
        fit, fail = (mid, fail) if fits(mid) else (fit, mid)
    return fit, list(trials.values())


def run_tuned(args, workload):
    import torch
    ceilings = start_device(torch, args.device)
    args.attn = attention_choice(args.attn)
    liger = apply_liger(PRESETS[args.preset][0], args.device, not args.no_liger)
    import peft
    model = peft.get_peft_model(base_model(torch, args.preset, args.device, args.attn), lora_config(args.preset))
    model.train()
    size, searched = (args.micro_batch, []) if args.micro_batch else search_micro_batch(torch, args, model, workload)
    print(f"hf_baseline: micro-batch {size} documents, attention {args.attn}, {liger}", file=sys.stderr)
    batches = [packed_micro_batches(torch, workload, docs, size, args.device, args.attn == "flash_attention_2")
               for docs in workload.steps]
    timing = timed_training(torch, args, model, batches, step_targets(workload))
    extra = {"micro_batch": size, "micro_batch_search": searched, "attn_implementation": args.attn,
             "packing": "DataCollatorWithFlattening (position_ids)", "liger": liger,
             "gradient_checkpointing": False, "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")}
    return result_json(args, torch, args.device,
                       {**figures_of(args, workload, batches, timing, ceilings), **extra},
                       engine="hf-peft-tuned", recompute="none")


def result_json(args, torch, device, figures, engine, recompute):
    import peft
    import transformers
    head = {"engine": engine, "preset": args.preset, "mode": "bf16", "gpus": 1}
    for key in ("tokens_per_s", "mfu", "peak_mem_gib", "pad_share"):
        head[key] = figures.pop(key)
    ident = device_json(torch) if device == "cuda" else {"device": "cpu"}
    run = {"commit": git_commit(), "matmul_tflops": figures.pop("matmul_tflops"),
           "copy_tbps": figures.pop("copy_tbps"), "token_budget": None, "recompute": recompute,
           "sequences_per_step": SEQUENCES_PER_STEP, "warmup_steps": args.warmup, "timed_steps": args.steps}
    versions = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    return {**head, **ident, **run, **figures, **versions}


def print_row(j):
    mfu = f"{100 * j['mfu']:5.1f}%" if j["mfu"] is not None else "  n/a"
    peak = f"{j['peak_mem_gib']:6.2f} GiB" if j["peak_mem_gib"] is not None else "   n/a"
    print(f"{j['preset']:<14} {j['engine']} {j['mode']} | {j['tokens_per_s']:9.0f} tok/s | MFU {mfu} | {peak} | "
          f"pad {100 * j['pad_share']:.1f}% | {j['device']}", file=sys.stderr)


def emit(obj, path):
    line = json.dumps(obj)
    print(line, flush=True)
    if path:
        with open(path, "w") as f:
            f.write(line + "\n")


def training_baseline_parser(doc, cpu_help):
    """The flags every training baseline takes (this one and tools/unsloth_baseline.py)."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--preset", required=True, choices=sorted(PRESETS))
    p.add_argument("--steps", type=int, default=5, help="timed steps (after the warm-up)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json", default="", help="also write the JSON object to this file")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help=cpu_help)
    p.add_argument("--check-bench", metavar="BENCH", help="compare the documents with BENCH --print-data")
    return p


def parse_args():
    p = training_baseline_parser(__doc__, "cpu exercises the script without a GPU (its figures mean nothing)")
    p.add_argument("--print-data", action="store_true", help="print each step's documents, as build/bench does")
    tuned = p.add_argument_group("the tuned baseline (issue 15)")
    tuned.add_argument("--tuned", action="store_true",
                       help="no gradient checkpointing, packed micro-batches, the largest that fits, Liger")
    tuned.add_argument("--micro-batch", type=int, default=0, help="documents per micro-batch (default: searched)")
    tuned.add_argument("--attn", default="auto", choices=["auto", "sdpa", "flash_attention_2", "flex_attention"],
                       help="attention for the packed rows (auto: flash_attention_2 if flash_attn imports, else sdpa)")
    tuned.add_argument("--no-liger", action="store_true", help="leave Liger's kernels out even where they import")
    tuned.add_argument("--cpu-oom-tokens", type=int, default=0,
                       help="--device cpu: a micro-batch of more tokens counts as out of memory (exercises the "
                            "search; also the MoE presets' micro-batch choice)")
    args = p.parse_args()
    if args.steps < 1 or args.warmup < 0:
        p.error(f"--steps must be >= 1 and --warmup >= 0 (got {args.steps}, {args.warmup})")
    if not 0 <= args.micro_batch <= SEQUENCES_PER_STEP:
        p.error(f"--micro-batch must be 1..{SEQUENCES_PER_STEP} documents (got {args.micro_batch})")
    if not args.tuned and (args.micro_batch or args.attn != "auto" or args.no_liger):
        p.error("--micro-batch, --attn and --no-liger belong to --tuned")
    if args.cpu_oom_tokens and not (args.tuned or args.preset in MOE):
        p.error("--cpu-oom-tokens belongs to --tuned and the MoE presets (" + ", ".join(sorted(MOE)) + ")")
    return args


def main():
    check_active_count()
    args = parse_args()
    vocab = PRESETS[args.preset][1]
    workload = Workload(vocab, args.warmup + args.steps)
    if args.print_data:
        emit(workload.data_json(args.preset, vocab), args.json)
    elif args.check_bench:
        check_against_bench(args.check_bench, args, workload, vocab)
    else:
        if args.tuned:
            # What a tuned user sets: segments that grow in place, so rows of changing length do not
            # fragment the cache into out-of-memory (read when torch initialises CUDA, hence here).
            os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
        result = (run_tuned if args.tuned else run_baseline)(args, workload)
        print_row(result)
        emit(result, args.json)


if __name__ == "__main__":
    main()
