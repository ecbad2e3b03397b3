#!/usr/bin/env python3
"""Checks that PEFT loads the adapters loom writes for mixture-of-experts models (issue 16).

    python3 tools/check_moe_export.py MANIFEST.json

MANIFEST.json is written by tests/moe_export_test.cpp (MoeExport.PeftLoadsLoomsAdapters): cases, each
a base model folder (a fixture of tests/fixtures/moe), an adapter folder loom wrote with
save_peft_adapter, token ids of some documents and loom's fp32 logits of each under base + adapter.
For each case, PeftModel.from_pretrained (peft 0.21.2, transformers 5.23) loads the adapter onto the
base in fp32 and must
  - load every tensor of the file into a LoRA parameter, with its values unchanged (a key PEFT does
    not recognise is dropped with only a warning, so this is checked, not assumed), and leave no
    LoRA parameter of the model unloaded;
  - give loom's logits within 1e-4 of their largest magnitude (tests/moe_reference_test.cpp's bound
    for the same fp32 computation; measured errors are printed).
Prints one line per case and the package versions; exits 1 when a check fails.
"""
import json
import sys
import warnings

import torch
import transformers
import peft
from safetensors.torch import load_file

TOL = 1e-4


def scaled_error(got, want):
    return ((got - want).abs().max() / want.abs().max()).item()


def check_case(case):
    base = transformers.AutoModelForCausalLM.from_pretrained(case["base"], dtype=torch.float32,
                                                             attn_implementation="eager")
    model = peft.PeftModel.from_pretrained(base, case["adapter"])
    model.eval()
    saved = load_file(f"{case['adapter']}/adapter_model.safetensors")
    live = {n.replace(".default", ""): p for n, p in model.named_parameters() if "lora_" in n}
    failures = []
    if set(saved) != set(live):
        failures.append(f"file keys not loaded: {sorted(set(saved) - set(live))[:4]}, "
                        f"LoRA parameters not in the file: {sorted(set(live) - set(saved))[:4]}")
    for key in set(saved) & set(live):
        if not torch.equal(saved[key], live[key].detach()):
            failures.append(f"{key}: PEFT holds other values than the file")
    if not case["ids"]:
        failures.append("the manifest holds no documents to compare")
    worst = 0.0
    with torch.no_grad():
        for ids, want in zip(case["ids"], case["logits"]):
            logits = model(input_ids=torch.tensor([ids])).logits[0].float()
            want = torch.tensor(want)
            if logits.shape != want.shape:
                failures.append(f"logits of shape {tuple(logits.shape)}, loom's {tuple(want.shape)}")
                continue
            worst = max(worst, scaled_error(logits, want))
    if worst > TOL:
        failures.append(f"logits differ from loom's by {worst:.2e} of their scale (bound {TOL})")
    targets = ", ".join(f"{k}={model.peft_config['default'].__dict__[k]}" for k in ("target_modules", "target_parameters"))
    print(f"{case['name']}: {len(saved)} tensors loaded ({targets}); logits max scaled error {worst:.2e}"
          + ("" if not failures else " FAILED"))
    for f in failures:
        print(f"  {f}")
    return not failures


def main():
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    with open(sys.argv[1]) as f:
        manifest = json.load(f)
    ok = all([check_case(c) for c in manifest["cases"]])
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
