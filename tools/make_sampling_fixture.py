#!/usr/bin/env python3
"""Writes tests/fixtures/sampling/expected.json: the distribution Hugging Face generate samples from,
for tests/sampling_test.cpp (ops/sampling.h).

For each case (a random logits row of V = 997 fp32 values, a context of token ids, and generate's
sampling options) the processors are the LogitsProcessorList that GenerationMixin._get_logits_processor
builds for those options on a tiny Llama (repetition penalty; with do_sample also temperature, top-k,
top-p and min-p), applied to the row as _sample applies it; the expected distribution is
softmax(processed scores) in fp32, as _sample computes `probs` before torch.multinomial.

The cut points of top-p and min-p are decided in fp32 by HF and in exact fixed point by loom: a
token whose cumulative probability (top-p) or probability ratio (min-p) lies within rounding of
the threshold could land on either side. The generator asserts that every case keeps a margin of
at least MARGIN (computed in float64) from each threshold, so the kept sets are unambiguous.

Floats are written as their float32 bit patterns (uint32): logits dense, probabilities as
[index, bits] pairs of the nonzero entries.

Runs on a CPU in a few seconds:  python3 tools/make_sampling_fixture.py  (torch, transformers)
"""
import json
import os

import numpy as np
import torch
import transformers

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "sampling")
V = 997          # prime: no power-of-two or multiple-of-warp size hides an off-by-one
ROWS = 3
CONTEXT = 40
MARGIN = 1e-4

# generate's options per case (top_k=0 is set explicitly: GenerationConfig's default is 50).
CASES = [
    dict(row=0, do_sample=False, repetition_penalty=1.3),
    dict(row=0, do_sample=True, temperature=0.7, top_k=50, top_p=0.9, repetition_penalty=1.3),
    dict(row=1, do_sample=True, temperature=1.5, top_k=0, top_p=0.8, min_p=0.05),
    dict(row=1, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, min_p=0.1),
    dict(row=2, do_sample=True, temperature=1.2, top_k=200, top_p=0.95, min_p=0.02, repetition_penalty=0.8),
    dict(row=0, do_sample=True, temperature=1.3, top_k=30),
    dict(row=2, do_sample=True, temperature=2.0, top_k=0, top_p=1.0),
]


def bits(t):
    return t.detach().contiguous().numpy().astype(np.float32).view(np.uint32).ravel().tolist()


def tiny_model():
    config = transformers.LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2)
    return transformers.LlamaForCausalLM(config)


def processors(model, options, context):
    gen = transformers.GenerationConfig(**{k: v for k, v in options.items() if k != "row"})
    return model._get_logits_processor(generation_config=gen, input_ids_seq_length=context.shape[1],
                                       device=context.device,
                                       model_kwargs={"attention_mask": torch.ones_like(context)})


def check_margins(name, options, scores_before_top_p, probs):
    """Asserts that no token sits within MARGIN of a top-p or min-p threshold (float64 recomputation)."""
    if options.get("do_sample") and options.get("top_p", 1.0) < 1.0:
        p = torch.softmax(scores_before_top_p.double(), -1)[0]
        cum = torch.sort(p).values.cumsum(0)
        gap = (cum - (1 - options["top_p"])).abs().min().item()
        assert gap > MARGIN, f"{name}: top-p threshold within {gap:.2e} of a cumulative probability"
    if options.get("min_p"):
        ratio = probs.double() / probs.max().double()
        kept = ratio[ratio > 0]
        gap = (kept - options["min_p"]).abs().min().item()
        assert gap > MARGIN, f"{name}: min-p threshold within {gap:.2e} of a probability ratio"


def record(model, index, options, logits, context):
    name = f"case{index}"
    procs = processors(model, options, context)
    scores = logits.clone()[None]
    before_top_p = scores
    for proc in procs:
        if type(proc).__name__ == "TopPLogitsWarper":
            before_top_p = scores
        scores = proc(context, scores)
    probs = torch.softmax(scores, -1)[0]
    check_margins(name, options, before_top_p, probs)
    nonzero = torch.nonzero(probs).ravel()
    return dict(name=name, row=options["row"], processors=[type(p).__name__ for p in procs],
                temperature=options.get("temperature", 1.0) if options["do_sample"] else 0.0,
                top_k=options.get("top_k", 0), top_p=options.get("top_p", 1.0), min_p=options.get("min_p", 0.0),
                repetition_penalty=options.get("repetition_penalty", 1.0),
                prob_index=nonzero.tolist(), prob_bits=bits(probs[nonzero]))


def main():
    torch.manual_seed(12)
    model = tiny_model()
    # Logits spread like a language model's (a few strong candidates, a long tail); the context
    # repeats ids (penalised once each) and holds one id >= V (HF ignores it).
    logits = [torch.randn(V) * 2.5 for _ in range(ROWS)]
    contexts = [torch.cat([torch.randint(0, V, (CONTEXT - 1,)), torch.tensor([V + 3])]) for _ in range(ROWS)]
    for c in contexts:
        c[1] = c[0]
    cases = [record(model, i, o, logits[o["row"]], contexts[o["row"]][None]) for i, o in enumerate(CASES)]
    doc = dict(generator="tools/make_sampling_fixture.py", torch=torch.__version__,
               transformers=transformers.__version__, vocab=V,
               rows=[dict(logit_bits=bits(l), context=c.tolist()) for l, c in zip(logits, contexts)], cases=cases)
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "expected.json")
    with open(path, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")
    for c in cases:
        print(f"  {c['name']}: {len(c['prob_index'])} tokens kept; {', '.join(c['processors'])}")


if __name__ == "__main__":
    main()
