#!/usr/bin/env python3
"""Writes the preference-tuning parity fixtures under tests/fixtures/dpo/<arch>/.

For each HF fixture model of tests/fixtures/hf/<arch>/ (llama, mistral, qwen2, qwen3; see
tools/make_hf_fixtures.py) it runs TRL's own loss code on 6 random preference pairs, in fp32, with
  policy    = the base model + the HF fixture's adapter (tests/fixtures/hf/<arch>/adapter, whose
              A and B are non-zero, so the rewards are too; it is used as is, not copied),
  reference = the same model inside peft's `disable_adapter()` (the base alone), which is loom's
              reference. TRL itself would make a frozen copy of a pretrained adapter its reference
              (DPOTrainer.__init__ adds it as adapter "ref"); the script deletes that copy, so TRL
              takes its adapters-off path, the one it uses for a fresh adapter.
and records what loom's reference path must reproduce:

  expected.json          the pairs and the documents loom builds from them, the per-pair log-probs,
                         and for every case of CASES the mean loss over the pairs and TRL's metrics;
                         the losses of 5 AdamW steps of sigmoid DPO; the B = 0 check; versions.
  expected.safetensors   the LoRA gradients of the mean loss of the cases with "grads": true, under
                         "grad.<case>.<PEFT name>" (the HF fixtures' "grad.<PEFT name>" + the case).

Where the numbers come from (TRL 1.16.0, the installed wheel):
  sigmoid, ipo, robust, hinge  trl/trainer/dpo_trainer.py DPOTrainer._compute_loss, called on the
                               batch of TRL's DataCollatorForPreference; metrics from its _metrics.
  orpo                         trl/experimental/orpo/orpo_trainer.py get_batch_loss_metrics (its
                               NLL term: chosen prompt + completion tokens, mean over the batch's
                               tokens; odds ratio on the completions' mean log-probs).
  sigmoid with label smoothing TRL >= 0.29 ignores label_smoothing for "sigmoid"; the case follows
                               the conservative-DPO formula of TRL 0.28.0 dpo_loss:
                               -(1-e)·logsigmoid(b·h) - e·logsigmoid(-b·h), computed here in torch.
Every TRL number is checked against an independent torch computation (one document at a time, as
loom packs them), and the B = 0 case (every lora_B zeroed) is asserted: each pair's sigmoid loss is
exactly ln 2 and each reward exactly 0.

expected.json also holds the yardstick of the GPU test's DPO case (tests/gpu_step_test.cpp), as
tools/make_hf_fixtures.py measures it for SFT: YARDSTICK_STEPS AdamW steps of sigmoid DPO (beta 0.1,
the 6 pairs as one batch, the optimizer settings of "steps" but lr YARDSTICK_LR), run in loom's GPU precision (that
script's emulation: bf16 storage, fp32 accumulation, fp32 logits/loss/LoRA gradients/master
weights; the reference pass, adapters off, in the same precision) and in fp32, the worse of its two
accumulation orders:
  "dpo_bf16_baseline"      the base weights as stored (bf16): the test's bf16 mode
  "dpo_bf16_baseline_nf4"  the base projections NF4 round-tripped (build/nf4_roundtrip): nf4 mode
each {step_loss_abs: max over the steps of |loss - loss(fp32)| (absolute: the DPO loss falls towards
0 within the 20 steps, where a relative error measures nothing but the size of the loss),
grad_scaled: step-1 LoRA gradients, max over LoRA tensors of each tensor's scaled error
(tests/lora_compare.h), final_weights_scaled: the LoRA weights after the last step, the same way}.

Runs on a CPU in a minute or two, the yardsticks a few minutes more (torch 2.15.0, transformers
5.23.0, peft 0.21.2, trl 1.16.0 wrote the fixtures, recorded in each expected.json):
  pip install torch==2.15.0 transformers==5.23.0 peft==0.21.2 trl==1.16.0
  python3 tools/make_dpo_fixtures.py                   every fixture from scratch
  python3 tools/make_dpo_fixtures.py --yardstick-only  only the two DPO yardsticks of the existing fixtures
The yardsticks need build/nf4_roundtrip (make build/nf4_roundtrip).
"""
import argparse
import json
import math
import os
import sys
import tempfile
import types

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import datasets
import peft
import torch
import torch.nn.functional as F
import transformers
import trl
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from trl import DPOConfig, DPOTrainer
from trl.experimental.orpo import ORPOConfig, ORPOTrainer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_hf_fixtures as hf_tools  # noqa: E402  (the GPU-precision emulation of the SFT yardstick)

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
HF = os.path.join(REPO, "tests", "fixtures", "hf")
OUT = os.path.join(REPO, "tests", "fixtures", "dpo")
ARCHS = ["llama", "mistral", "qwen2", "qwen3"]
N_PAIRS = 6
PROMPT_LEN = (3, 9)       # inclusive ranges
COMPLETION_LEN = (2, 11)
STEPS = 5
YARDSTICK_STEPS = 20  # the GPU test's run (tests/gpu_step_test.cpp)
YARDSTICK_LR = hf_tools.GPU_LR  # the SFT GPU test's rate: at the fixture's 0.01 the final weights drift 0.08-0.40
# name -> settings; "grads": whether the LoRA gradients are stored (one set per loss type keeps a
# fixture under 300 KB; the other cases differ from theirs only in the per-pair weights).
CASES = {
    "sigmoid": dict(loss_type="sigmoid", beta=0.1, label_smoothing=0.0, grads=True),
    "sigmoid_ls01": dict(loss_type="sigmoid", beta=0.1, label_smoothing=0.1, grads=False),
    "sigmoid_beta05": dict(loss_type="sigmoid", beta=0.5, label_smoothing=0.0, grads=False),
    "ipo": dict(loss_type="ipo", beta=0.1, label_smoothing=0.0, grads=True),
    "robust_ls01": dict(loss_type="robust", beta=0.1, label_smoothing=0.1, grads=True),
    "hinge": dict(loss_type="hinge", beta=0.1, label_smoothing=0.0, grads=True),
    # beta 0.5 puts some pairs past the hinge (z > 1: loss 0, no gradient) on these fixtures.
    "hinge_beta05": dict(loss_type="hinge", beta=0.5, label_smoothing=0.0, grads=False),
    "orpo": dict(loss_type="orpo", orpo_lambda=0.1, grads=True),
}
DPO_METRICS = ["rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
               "logps/chosen", "logps/rejected"]
ORPO_METRICS = DPO_METRICS + ["nll_loss", "log_odds_ratio", "log_odds_chosen"]
# TRL's batched, padded forward against one document at a time: fp32 rounding of different
# summation orders, ~1e-6 on these sizes; 1e-5 leaves room without hiding a formula error.
AGREE = 1e-5


# --- Inputs ---------------------------------------------------------------------------------------
def make_pairs(vocab, seed):
    gen = torch.Generator().manual_seed(seed)

    def ids(lo, hi):
        n = int(torch.randint(lo, hi + 1, (1,), generator=gen))
        return torch.randint(0, vocab, (n,), generator=gen).tolist()

    pairs = []
    while len(pairs) < N_PAIRS:
        p, c, r = ids(*PROMPT_LEN), ids(*COMPLETION_LEN), ids(*COMPLETION_LEN)
        if c != r:
            pairs.append(dict(prompt_ids=p, chosen_ids=c, rejected_ids=r))
    return pairs


def documents(pair):
    """loom's two sequences of a pair: prompt + completion, the completion tokens the only targets."""
    def doc(completion):
        return dict(ids=pair["prompt_ids"] + completion,
                    mask=[0] * len(pair["prompt_ids"]) + [1] * len(completion))
    return dict(chosen=doc(pair["chosen_ids"]), rejected=doc(pair["rejected_ids"]))


def load_policy(arch):
    base = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.join(HF, arch, "model"), dtype=torch.float32, attn_implementation="eager")
    model = peft.PeftModel.from_pretrained(base, os.path.join(HF, arch, "adapter"), is_trainable=True)
    model.train()  # no dropout anywhere (lora_dropout 0, attention dropout 0): train = eval here
    return model


def lora_params(model):
    return [(n, p) for n, p in model.named_parameters() if "lora_" in n and ".default." in n]


def peft_name(n):
    """PEFT's saved key for a live parameter name: the adapter name "default" is removed."""
    return n.replace(".default", "")


def tiny_tokenizer(vocab):
    """TRL's trainers need a tokenizer to start; every batch here is made of token ids already."""
    tk = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="t0", eos_token="t1")


COMMON_ARGS = dict(report_to="none", use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
                   per_device_train_batch_size=N_PAIRS)
STUB = datasets.Dataset.from_list([{"prompt": "t2 t3", "chosen": " t4", "rejected": " t5"}])


# --- TRL ------------------------------------------------------------------------------------------
def dpo_trainer(arch, case, tmp):
    model = load_policy(arch)
    args = DPOConfig(output_dir=tmp, beta=case["beta"], loss_type=[case["loss_type"]],
                     label_smoothing=case["label_smoothing"], max_length=None, **COMMON_ARGS)
    tr = DPOTrainer(model=model, args=args, train_dataset=STUB, processing_class=tiny_tokenizer(model.config.vocab_size))
    # TRL's reference for a pretrained adapter is a frozen copy of it ("ref"); loom's is the base.
    tr.model.delete_adapter("ref")
    assert "ref" not in tr.model.peft_config and tr.model.active_adapter == "default"
    return tr


def trl_dpo(tr, pairs):
    """Mean loss, metrics and LoRA gradients of TRL's DPO loss on the pairs as one batch."""
    batch = tr.data_collator([dict(p) for p in pairs])
    tr._metrics["train"].clear()
    tr.model.zero_grad()
    loss = tr._compute_loss(tr.model, batch, return_outputs=False)
    loss.backward()
    metrics = {k: tr._metrics["train"][k][-1] for k in DPO_METRICS}
    return loss.item(), metrics, {peft_name(n): p.grad.detach().clone() for n, p in lora_params(tr.model)}


def trl_orpo(arch, case, pairs, tmp):
    model = load_policy(arch)
    args = ORPOConfig(output_dir=tmp, beta=case["orpo_lambda"], max_length=64, **COMMON_ARGS)
    tr = ORPOTrainer(model=model, args=args, train_dataset=STUB, processing_class=tiny_tokenizer(model.config.vocab_size))
    rows = []
    for p in pairs:  # the rows ORPOTrainer.tokenize_row would make (no BOS/EOS: the ids are the pair)
        row = dict(prompt_input_ids=p["prompt_ids"], prompt_attention_mask=[1] * len(p["prompt_ids"]))
        for side in ("chosen", "rejected"):
            ids = p["prompt_ids"] + p[f"{side}_ids"]
            row[f"{side}_input_ids"] = ids
            row[f"{side}_attention_mask"] = [1] * len(ids)
            row[f"{side}_labels"] = [-100] * len(p["prompt_ids"]) + p[f"{side}_ids"]
        rows.append(row)
    batch = tr.data_collator(rows)
    tr.model.zero_grad()
    loss, metrics = tr.get_batch_loss_metrics(tr.model, batch)
    loss.backward()
    metrics = {k: metrics[k] for k in ORPO_METRICS}
    return loss.item(), metrics, {peft_name(n): p.grad.detach().clone() for n, p in lora_params(tr.model)}


# --- The same, one document at a time (the independent check, and the cDPO case) ----------------
def token_logps(model, doc):
    """log p of every token of doc given its prefix (position 0 has none: dropped)."""
    ids = torch.tensor([doc["ids"]])
    logits = model(input_ids=ids).logits.float()[0, :-1]
    return torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None])[:, 0]


def completion_logp(model, doc):
    lp = token_logps(model, doc)
    return (lp * torch.tensor(doc["mask"][1:], dtype=lp.dtype)).sum()


def pair_logps(model, docs):
    """Per pair: summed completion log-probs of the policy (with grad) and the reference."""
    pol = {s: torch.stack([completion_logp(model, d[s]) for d in docs]) for s in ("chosen", "rejected")}
    with torch.no_grad(), model.disable_adapter():
        ref = {s: torch.stack([completion_logp(model, d[s]) for d in docs]) for s in ("chosen", "rejected")}
    n = {s: torch.tensor([float(sum(d[s]["mask"])) for d in docs]) for s in ("chosen", "rejected")}
    return pol, ref, n


def dpo_losses(case, pol, ref, n):
    b, e = case["beta"], case["label_smoothing"]
    lc, lr = pol["chosen"] - ref["chosen"], pol["rejected"] - ref["rejected"]
    z = b * (lc - lr)
    t = case["loss_type"]
    if t == "sigmoid":   # TRL 0.28.0 dpo_loss (label smoothing = conservative DPO)
        per_pair = -(1 - e) * F.logsigmoid(z) - e * F.logsigmoid(-z)
    elif t == "robust":
        per_pair = (-(1 - e) * F.logsigmoid(z) + e * F.logsigmoid(-z)) / (1 - 2 * e)
    elif t == "hinge":
        per_pair = torch.relu(1 - z)
    elif t == "ipo":     # mean log-prob per completion token, for the loss only (TRL 1.16)
        per_pair = (lc / n["chosen"] - lr / n["rejected"] - 1 / (2 * b)) ** 2
    rc, rr = (b * lc).detach(), (b * lr).detach()
    metrics = {"rewards/chosen": rc.mean(), "rewards/rejected": rr.mean(),
               "rewards/accuracies": (rc > rr).float().mean(), "rewards/margins": (rc - rr).mean(),
               "logps/chosen": pol["chosen"].mean(), "logps/rejected": pol["rejected"].mean()}
    return per_pair, {k: v.item() for k, v in metrics.items()}


def log1mexp(x):
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_loss(model, case, docs, pol, n):
    """TRL ORPO: NLL over the chosen sequences' prompt + completion tokens (token mean over the
    batch) - lambda * mean log sigmoid(log odds of the completions' mean log-probs)."""
    lam = case["orpo_lambda"]
    nll_sum, nll_n = 0.0, 0
    for d in docs:
        lp = token_logps(model, d["chosen"])
        nll_sum, nll_n = nll_sum - lp.sum(), nll_n + lp.numel()
    nll = nll_sum / nll_n
    mc, mr = pol["chosen"] / n["chosen"], pol["rejected"] / n["rejected"]
    log_odds = (mc - mr) - (log1mexp(mc) - log1mexp(mr))
    ratio = F.logsigmoid(log_odds)
    rc, rr = (lam * mc).detach(), (lam * mr).detach()
    metrics = {"rewards/chosen": rc.mean(), "rewards/rejected": rr.mean(),
               "rewards/accuracies": (rc > rr).float().mean(), "rewards/margins": (rc - rr).mean(),
               "logps/chosen": mc.mean(), "logps/rejected": mr.mean(), "nll_loss": nll,
               "log_odds_ratio": ratio.mean(), "log_odds_chosen": log_odds.mean()}
    return nll - lam * ratio.mean(), {k: v.item() for k, v in metrics.items()}, nll_n


def own(arch, case, docs):
    """(mean loss, metrics, LoRA gradients[, ORPO's NLL token count]) computed document by document."""
    model = load_policy(arch)
    pol, ref, n = pair_logps(model, docs)
    extra = {}
    if case["loss_type"] == "orpo":
        loss, metrics, extra["nll_tokens"] = orpo_loss(model, case, docs, pol, n)
    else:
        per_pair, metrics = dpo_losses(case, pol, ref, n)
        loss = per_pair.mean()
    loss.backward()
    grads = {peft_name(nm): p.grad.detach().clone() for nm, p in lora_params(model)}
    return loss.item(), metrics, grads, extra


# --- Checks ---------------------------------------------------------------------------------------
def grad_disagreement(a, b):
    """Largest |a - b| of any tensor over that tensor's largest |b|."""
    return max(((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-30)).item() for k in b)


def agree(name, got, want, what):
    assert abs(got - want) <= AGREE * max(1.0, abs(want)), f"{name} {what}: TRL {want} vs own {got}"


def check_hf_fixture_loss(arch):
    """The loaded model + adapter reproduce the HF fixture's SFT loss: same weights as make_hf_fixtures."""
    with open(os.path.join(HF, arch, "batch.json")) as f:
        docs = json.load(f)["documents"]
    with open(os.path.join(HF, arch, "expected.json")) as f:
        exp = json.load(f)
    model = load_policy(arch)
    with torch.no_grad():
        total = sum(-(token_logps(model, d) * torch.tensor(d["mask"][1:])).sum().item() for d in docs)
    assert abs(total / exp["n_targets"] - exp["loss"]) < 1e-5, f"{arch}: loaded model does not match its HF fixture"
    return exp


def b_zero_check(arch, pairs, docs, tmp):
    """With every lora_B zeroed the policy is the reference bit for bit: each pair's sigmoid loss is
    exactly ln 2 (in fp32: logsigmoid(0)) and each reward exactly 0, in TRL and document by document."""
    tr = dpo_trainer(arch, CASES["sigmoid"], tmp)
    with torch.no_grad():
        for n, p in lora_params(tr.model):
            if "lora_B" in n:
                p.zero_()
    loss, metrics, _ = trl_dpo(tr, pairs)
    ln2 = -F.logsigmoid(torch.tensor(0.0)).item()
    assert loss == ln2, f"{arch} B=0: TRL loss {loss} != ln 2"
    for k in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert metrics[k] == 0.0, f"{arch} B=0: TRL {k} = {metrics[k]}"
    with torch.no_grad():
        pol, ref, n = pair_logps(tr.model, docs)
        per_pair, _ = dpo_losses(CASES["sigmoid"], pol, ref, n)
    assert torch.equal(pol["chosen"], ref["chosen"]) and torch.equal(pol["rejected"], ref["rejected"])
    assert all(x == ln2 for x in per_pair.tolist()), f"{arch} B=0: per-pair losses {per_pair.tolist()}"
    return dict(asserted=True, loss=loss, ln2_fp32=ln2, per_pair_loss=per_pair.tolist(),
                rewards_chosen=(0.1 * (pol["chosen"] - ref["chosen"])).tolist(),
                rewards_rejected=(0.1 * (pol["rejected"] - ref["rejected"])).tolist(),
                what="every lora_B zeroed; TRL's mean loss and each pair's loss == logsigmoid(0) in fp32, "
                     "every reward == 0 (asserted by tools/make_dpo_fixtures.py)")


def adamw_steps(arch, pairs, adam, tmp):
    """STEPS AdamW steps of sigmoid DPO on the pairs as one batch (TRL's loss, torch's AdamW and
    clip_grad_norm_): the loss before each step."""
    tr = dpo_trainer(arch, CASES["sigmoid"], tmp)
    params = [p for _, p in lora_params(tr.model)]
    opt = torch.optim.AdamW(params, lr=adam["lr"], betas=(adam["beta1"], adam["beta2"]), eps=adam["eps"],
                            weight_decay=adam["weight_decay"])
    losses = []
    for _ in range(STEPS):
        loss, _, _ = trl_dpo(tr, pairs)  # zeroes the grads, then backward
        torch.nn.utils.clip_grad_norm_(params, adam["max_grad_norm"])
        opt.step()
        losses.append(loss)
    return losses


# --- The yardstick of the GPU test's DPO case ------------------------------------------------------
def loom_lora_forward_switchable(self, x, *args, **kwargs):
    """make_hf_fixtures' loom projection, honouring peft's adapter switch: with the adapters off (the
    reference pass) loom's lora_linear_forward (ops/lora_linear.cu) is the base alone, bf16(x·Wᵀ),
    then bf16(+ b)."""
    if not self.disable_adapters:
        return hf_tools.loom_lora_forward(self, x)
    base = self.base_layer
    y = hf_tools.to_bf16_values(hf_tools.mm(x.reshape(-1, x.shape[-1]).float(), base.weight.float().T))
    if base.bias is not None:
        y = hf_tools.to_bf16_values(y + base.bias.float())
    return y.to(hf_tools.BF16).reshape(*x.shape[:-1], -1)


def load_yardstick_model(model_dir, arch, loom_bf16):
    """The base of model_dir + the HF fixture's adapter, in fp32 or in loom's GPU precision (use
    inside hf_tools.LoomPrecision), with a working adapter switch in both."""
    model = hf_tools.load_for_baseline(model_dir, os.path.join(HF, arch), loom_bf16)
    if loom_bf16:
        for m in model.modules():
            if isinstance(m, peft.tuners.lora.Linear):
                m.forward = types.MethodType(loom_lora_forward_switchable, m)
    return model


def dpo_train_with_fp32_master(model, docs, adam, steps):
    """Sigmoid DPO (beta 0.1) on the pairs as one batch, AdamW on fp32 master copies of the LoRA
    weights (as make_hf_fixtures.train_with_fp32_master: loom's GPU scheme): the loss before each
    step, the step-1 LoRA gradients (before clipping, as the GPU test reads them) and the final
    LoRA weights, by tests/lora_compare.h tensor name."""
    live = hf_tools.lora_params(model)
    master = [p.detach().float().clone().requires_grad_(True) for _, p in live]
    opt = torch.optim.AdamW(master, lr=adam["lr"], betas=(adam["beta1"], adam["beta2"]), eps=adam["eps"],
                            weight_decay=adam["weight_decay"])
    losses, first_grads = [], None
    for _ in range(steps):
        with torch.no_grad():
            for (_, p), m in zip(live, master):
                p.copy_(m)
                p.grad = None
        pol, ref, n = pair_logps(model, docs)
        # The pair arithmetic in double, as engine/preference.cpp (PairLogps): only the log-probs are fp32.
        per_pair, _ = dpo_losses(CASES["sigmoid"], {s: v.double() for s, v in pol.items()},
                                 {s: v.double() for s, v in ref.items()}, n)
        loss = per_pair.mean()
        loss.backward()
        for (_, p), m in zip(live, master):
            m.grad = p.grad.float()
        if first_grads is None:
            first_grads = {nm: m.grad.clone() for (nm, _), m in zip(live, master)}
        torch.nn.utils.clip_grad_norm_(master, adam["max_grad_norm"])
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses, first_grads, {nm: m.detach().clone() for (nm, _), m in zip(live, master)}


def dpo_bf16_baseline(model_dir, arch, docs, adam, base_weights, trl_losses=None):
    """HF in loom's GPU precision against HF in fp32, YARDSTICK_STEPS steps of sigmoid DPO on the
    base weights of model_dir, the worse of hf_tools.ACCUMULATIONS, at lr YARDSTICK_LR. trl_losses: the
    fixture's TRL step losses, which the fp32 training reproduces at the fixture's lr (adam["lr"]) first."""
    if trl_losses is not None:
        mine, _, _ = dpo_train_with_fp32_master(load_yardstick_model(model_dir, arch, False), docs, adam,
                                                len(trl_losses))
        for k, (a, b) in enumerate(zip(mine, trl_losses)):  # measured <= 1e-6 apart; lr 10% off moves them 4e-3+
            assert abs(a - b) <= 1e-4, f"{arch} step {k + 1}: yardstick fp32 loss {a} vs TRL {b}"
    adam = dict(adam, lr=YARDSTICK_LR)
    l32, g32, w32 = dpo_train_with_fp32_master(load_yardstick_model(model_dir, arch, False), docs, adam,
                                               YARDSTICK_STEPS)
    out = {"measured_as": f"HF in loom's GPU precision vs HF fp32, sigmoid DPO beta 0.1 on the 6 pairs as one "
                          f"batch, worst of fp32 and fp64 sums, {base_weights} (tools/make_dpo_fixtures.py)",
           "lr": adam["lr"], "steps": YARDSTICK_STEPS, "step_loss_abs": 0.0, "grad_scaled": 0.0,
           "final_weights_scaled": 0.0,
           "step_loss_note": "absolute, not relative: the DPO loss falls towards 0 within the steps"}
    try:
        for accumulation in hf_tools.ACCUMULATIONS:
            hf_tools.accumulate_in = accumulation  # the dtype hf_tools.mm sums in
            with hf_tools.LoomPrecision():
                l16, g16, w16 = dpo_train_with_fp32_master(load_yardstick_model(model_dir, arch, True), docs,
                                                           adam, YARDSTICK_STEPS)
            grad, grad_at = hf_tools.worst_tensor(g16, g32)
            weights, weights_at = hf_tools.worst_tensor(w16, w32)
            out["step_loss_abs"] = max(out["step_loss_abs"], max(abs(a - b) for a, b in zip(l16, l32)))
            if grad >= out["grad_scaled"]:
                out["grad_scaled"], out["grad_worst_tensor"] = grad, grad_at
            if weights >= out["final_weights_scaled"]:
                out["final_weights_scaled"], out["final_weights_worst_tensor"] = weights, weights_at
    finally:
        hf_tools.accumulate_in = torch.float32
    out.update(torch=torch.__version__, transformers=transformers.__version__, peft=peft.__version__)
    print(f"{arch} {base_weights}: fp32 losses {l32[0]:.4f} .. {l32[-1]:.4f}; step losses "
          f"{out['step_loss_abs']:.2e} abs, step-1 grads {out['grad_scaled']:.2e} ({out['grad_worst_tensor']}), "
          f"final weights {out['final_weights_scaled']:.2e} ({out['final_weights_worst_tensor']})")
    return out


def dpo_yardsticks(arch, docs, adam, trl_losses):
    """{"dpo_bf16_baseline": the test's bf16 mode, "dpo_bf16_baseline_nf4": its nf4 mode (the NF4
    round trip of the base projections, make_hf_fixtures.nf4_model)}."""
    with tempfile.TemporaryDirectory() as tmp:
        return {"dpo_bf16_baseline": dpo_bf16_baseline(os.path.join(HF, arch, "model"), arch, docs, adam,
                                                       "base weights as stored (bf16)", trl_losses),
                "dpo_bf16_baseline_nf4": dpo_bf16_baseline(hf_tools.nf4_model(os.path.join(HF, arch), tmp), arch,
                                                           docs, adam, "base projections NF4 round-tripped (nf4 mode)")}


def rewrite_yardstick(arch):
    """Recomputes only the DPO yardsticks of an existing fixture; every other value stays as it was."""
    path = os.path.join(OUT, arch, "expected.json")
    with open(path) as f:
        expected = json.load(f)
    docs = [documents(p) for p in expected["pairs"]]
    adam = {k: expected[k] for k in ("lr", "beta1", "beta2", "eps", "weight_decay", "max_grad_norm")}
    expected.update(dpo_yardsticks(arch, docs, adam, expected["steps"]["losses"]))
    with open(path, "w") as f:
        json.dump(expected, f, indent=1)


# --- One fixture ----------------------------------------------------------------------------------
def run_arch(arch, seed):
    torch.manual_seed(0)
    hf = check_hf_fixture_loss(arch)
    vocab = load_policy(arch).config.vocab_size
    b_norm = sum(p.abs().sum().item() for n, p in lora_params(load_policy(arch)) if "lora_B" in n)
    assert b_norm > 0, f"{arch}: the HF fixture's adapter has B = 0; its rewards would all be 0"
    pairs = make_pairs(vocab, seed)
    docs = [documents(p) for p in pairs]
    out, tensors = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        model = load_policy(arch)
        with torch.no_grad():
            pol, ref, n = pair_logps(model, docs)
            sig, _ = dpo_losses(CASES["sigmoid"], pol, ref, n)
        per_pair = dict(policy_chosen=pol["chosen"].tolist(), policy_rejected=pol["rejected"].tolist(),
                        reference_chosen=ref["chosen"].tolist(), reference_rejected=ref["rejected"].tolist(),
                        chosen_tokens=[int(x) for x in n["chosen"]], rejected_tokens=[int(x) for x in n["rejected"]],
                        sigmoid_loss_beta01=sig.tolist())
        cases = []
        for name, case in CASES.items():
            mine, mine_metrics, mine_grads, extra = own(arch, case, docs)
            if case["loss_type"] == "orpo":
                loss, metrics, grads = trl_orpo(arch, case, pairs, tmp)
                source = "trl 1.16.0 trl/experimental/orpo/orpo_trainer.py ORPOTrainer.get_batch_loss_metrics"
            elif case["loss_type"] == "sigmoid" and case["label_smoothing"] > 0:
                loss, metrics, grads = mine, mine_metrics, mine_grads
                source = ("trl 0.28.0 trl/trainer/dpo_trainer.py dpo_loss 'sigmoid' (conservative DPO) in torch; "
                          "trl >= 0.29 ignores label_smoothing for sigmoid")
            else:
                loss, metrics, grads = trl_dpo(dpo_trainer(arch, case, tmp), pairs)
                source = "trl 1.16.0 trl/trainer/dpo_trainer.py DPOTrainer._compute_loss"
            agree(name, mine, loss, "loss")
            for k in metrics:
                agree(name, mine_metrics[k], metrics[k], k)
            g = grad_disagreement(mine_grads, grads)
            assert g < AGREE * 10, f"{name}: LoRA gradients TRL vs own differ by {g:.2e} (scaled)"
            entry = dict(name=name, **{k: v for k, v in case.items() if k != "grads"}, loss=loss,
                         metrics=metrics, grads=case["grads"], source=source, **extra)
            cases.append(entry)
            if case["grads"]:
                tensors.update({f"grad.{name}.{k}": v.contiguous() for k, v in grads.items()})
            check = "own only" if "0.28.0" in source else f"own vs TRL: loss {abs(mine - loss):.1e}, grads {g:.1e}"
            print(f"{arch} {name:15s} loss {loss:.6f} margins {metrics['rewards/margins']:+.5f} "
                  f"acc {metrics['rewards/accuracies']:.3f} ({check})")
        adam = {k: hf[k] for k in ("lr", "beta1", "beta2", "eps", "weight_decay", "max_grad_norm")}
        steps = adamw_steps(arch, pairs, adam, tmp)
        print(f"{arch} 5 AdamW steps of sigmoid DPO: " + " ".join(f"{x:.6f}" for x in steps))
        b_zero = b_zero_check(arch, pairs, docs, tmp)
    d = os.path.join(OUT, arch)
    os.makedirs(d, exist_ok=True)
    save_file(tensors, os.path.join(d, "expected.safetensors"))
    expected = dict(
        model=f"tests/fixtures/hf/{arch}/model", adapter=f"tests/fixtures/hf/{arch}/adapter",
        precision="fp32", reference="the base model: the adapter disabled (peft disable_adapter)",
        pairs=[dict(**p, **documents(p)) for p in pairs],
        per_pair_logps=per_pair,
        logps="sum of the completion tokens' log-probs (each predicted from its prefix; prompt tokens never targets)",
        ipo_logps="mean",
        ipo_note="IPO's loss uses the summed log-ratios divided by the completion lengths; its rewards/* and "
                 "logps/* metrics use the sums, like every DPO loss (trl 1.16; trl <= 0.28 divided those too)",
        orpo_nll="chosen sequences' prompt and completion tokens (all but the first token), mean over the "
                 "batch's tokens: TRL ORPOTrainer.concatenated_forward; rewards/logps of ORPO use mean "
                 "completion log-probs, log_odds_ratio = mean logsigmoid(log odds), log_odds_chosen = mean log odds",
        cases=cases,
        steps=dict(case="sigmoid", loss_type="sigmoid", beta=0.1, label_smoothing=0.0, losses=steps,
                   batch="the 6 pairs as one batch, loss = mean over the pairs"),
        **adam,
        b_zero=b_zero,
        torch=torch.__version__, transformers=transformers.__version__, peft=peft.__version__,
        trl=trl.__version__)
    expected.update(dpo_yardsticks(arch, docs, adam, steps))
    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--yardstick-only", action="store_true",
                        help='recompute "dpo_bf16_baseline" and "dpo_bf16_baseline_nf4" of the existing fixtures, '
                             'nothing else')
    args = parser.parse_args()
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    for k, arch in enumerate(ARCHS):
        if args.yardstick_only:
            rewrite_yardstick(arch)
        else:
            run_arch(arch, seed=200 + k)


if __name__ == "__main__":
    main()
