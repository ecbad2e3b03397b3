"""Anchors for build/attention_bench's one-document cases (issue 14): PyTorch's scaled_dot_product_attention
on the same shape (one causal document of T tokens, H query heads, KVH key/value heads, head dim D, bf16),
timed with each backend PyTorch offers on this GPU (FLASH_ATTENTION is FlashAttention-2; CUDNN_ATTENTION
is cuDNN's fused attention, which on Hopper uses its sm_90 kernels). FLOPs are counted as attention_bench
counts them: forward 4·D·H·T(T+1)/2, backward 2.5 times that. Each time is the median of 20 runs after 3
warm-ups, CUDA events. K and V are repeated to H heads (PyTorch's flash path takes equal head counts), which
changes memory traffic a little, not the FLOPs.

    python3 tools/attention_anchor.py [--T 16384] [--D 128 64]
"""
import argparse

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
import torch.nn.functional as F


def median_ms(fn, warmup=3, runs=20):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def run(backend, T, H, KVH, D):
    gen = torch.Generator(device="cuda").manual_seed(1234)
    q = torch.randn(1, H, T, D, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
    k = torch.randn(1, KVH, T, D, device="cuda", dtype=torch.bfloat16, generator=gen)
    v = torch.randn(1, KVH, T, D, device="cuda", dtype=torch.bfloat16, generator=gen)
    k = k.repeat_interleave(H // KVH, dim=1).requires_grad_()
    v = v.repeat_interleave(H // KVH, dim=1).requires_grad_()
    dout = torch.randn(1, H, T, D, device="cuda", dtype=torch.bfloat16, generator=gen)
    with sdpa_kernel([backend]):
        fwd_ms = median_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        bwd_ms = median_ms(lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True))
    flops = 4.0 * D * H * T * (T + 1) / 2
    print(f"torch {torch.__version__} {backend.name:<16} one doc T={T} H{H} KVH{KVH} D{D}  "
          f"fwd {fwd_ms:7.3f} ms {flops / fwd_ms * 1e-9:6.1f} TFLOP/s   bwd {bwd_ms:7.3f} ms "
          f"{2.5 * flops / bwd_ms * 1e-9:6.1f} TFLOP/s", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--T", type=int, default=16384)
    ap.add_argument("--D", type=int, nargs="+", default=[128, 64])
    args = ap.parse_args()
    print(torch.cuda.get_device_name())
    for D in args.D:
        for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION):
            try:
                run(backend, args.T, 32, 8, D)
            except RuntimeError as e:  # a backend this build or GPU lacks: say so, go on
                print(f"{backend.name}: not available here ({str(e).splitlines()[0][:120]})", flush=True)


if __name__ == "__main__":
    main()
