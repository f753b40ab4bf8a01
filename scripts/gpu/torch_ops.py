#!/usr/bin/env python3
"""PyTorch's own kernels for the ops of one training step that are not matrix products: how far
each of mixsim's memory-bound and attention kernels is from what the library the issue compares
against does on the same card (bench_gpu_gemm does this for the products).

For a model of bench_gpu_train's configs, each op is timed alone on the tensors a step gives it,
in the precision mixsim's cuda-bf16 backend runs it, and multiplied by its calls per step:
  attention_forward, attention_backward  scaled_dot_product_attention, causal, bf16 (B, NH, T, HS)
                                         (flash attention on an H100), L calls
  layernorm_forward, layernorm_backward  F.layer_norm over (B T, C) fp32 (the residual stream),
                                         2 L + 1 calls (mixsim fuses most forward ones with the
                                         residual add: its residual_layernorm_forward)
  classifier                             F.cross_entropy forward and backward over fp32 logits
                                         (B T, Vp), one call
  adamw                                  torch.optim.AdamW(fused=True) over every parameter, fp32
A backward is timed as forward plus backward less the forward. Prints
`RESULT torch-ops <config> <op>_ms=...` (milliseconds per step) for scripts/gpu-check.sh, which
sets them beside the per-op times of `bench_gpu_train --profile`.

  python3 scripts/gpu/torch_ops.py --config gpt2
  python3 scripts/gpu/torch_ops.py --config tiny --device cpu     (a check of the script itself)
"""
import argparse
import time

import torch
import torch.nn.functional as F

CONFIGS = {  # name: (layers, heads, channels, context, vocab, batch), as bench_gpu_train's
    "tiny": (2, 2, 64, 64, 256, 2),
    "small": (6, 6, 384, 256, 256, 16),
    "gpt2": (12, 12, 768, 1024, 50257, 8),
    "1.1b": (24, 16, 2048, 2048, 50257, 2),
}


def timer(device, reps):
    """ms per call of fn(), the mean over `reps` calls after two warm-ups."""
    def run(fn):
        for _ in range(2):
            fn()
        if device == "cuda":
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(reps):
                fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / reps
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return 1e3 * (time.perf_counter() - t0) / reps
    return run


def attention(q, k, v):
    if hasattr(F, "scaled_dot_product_attention"):  # torch >= 2.0
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    T = q.shape[-2]  # older torch (a CPU check of this script)
    att = (q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    return att.masked_fill(~mask, float("-inf")).softmax(-1) @ v


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="gpt2", choices=sorted(CONFIGS))
    ap.add_argument("--reps", type=int, default=20, help="timed calls of each op")
    ap.add_argument("--device", default="cuda", help="cuda, or cpu to check the script itself")
    args = ap.parse_args()
    L, NH, C, T, V, B = CONFIGS[args.config]
    dev, HS, N, Vp = args.device, C // NH, B * T, (V + 63) // 64 * 64
    params = 12 * L * C * C + 13 * L * C + Vp * C + T * C + 2 * C  # as mixsim's ParamLayout
    run = timer(dev, args.reps)
    gen = torch.Generator(device=dev).manual_seed(1)

    def randn(*shape, dtype=torch.float32, grad=False):
        return torch.randn(*shape, generator=gen, device=dev, dtype=dtype).requires_grad_(grad)

    def per_step(calls, forward, forward_backward):
        """ms per step of `calls` forward passes and of their backward passes."""
        fwd, both = run(forward), run(forward_backward)
        return calls * fwd, calls * max(both - fwd, 0.0)

    ms = {}
    # attention: bf16 on the GPU (mixsim's tensor-core kernels), fp32 for the CPU check
    adt = torch.bfloat16 if dev == "cuda" else torch.float32
    q, k, v = (randn(B, NH, T, HS, dtype=adt, grad=True) for _ in range(3))
    dout = randn(B, NH, T, HS, dtype=adt)
    ms["attention_forward"], ms["attention_backward"] = per_step(
        L, lambda: attention(q, k, v),
        lambda: torch.autograd.grad(attention(q, k, v), (q, k, v), dout))
    del q, k, v, dout
    # LayerNorm over the fp32 residual stream
    x, w, b = randn(N, C, grad=True), randn(C, grad=True), randn(C, grad=True)
    dy = randn(N, C)
    ms["layernorm_forward"], ms["layernorm_backward"] = per_step(
        2 * L + 1, lambda: F.layer_norm(x, (C,), w, b),
        lambda: torch.autograd.grad(F.layer_norm(x, (C,), w, b), (x, w, b), dy))
    del x, w, b, dy
    # softmax + cross-entropy and its logits' gradient over fp32 logits, one call a step
    logits = randn(N, Vp, grad=True)
    targets = torch.randint(0, V, (N,), generator=gen, device=dev)
    ms["classifier"] = run(lambda: torch.autograd.grad(F.cross_entropy(logits, targets), logits))
    del logits, targets
    # AdamW over all parameters (one tensor of their count: the fused kernel walks them in chunks)
    p = torch.nn.Parameter(randn(params))
    p.grad = randn(params)
    fused = {"fused": True} if dev == "cuda" else {}  # (torch 1.13's AdamW, on the CPU, has none)
    opt = torch.optim.AdamW([p], lr=1e-4, weight_decay=0.1, **fused)
    ms["adamw"] = run(opt.step)

    values = " ".join(f"{op}_ms={t:.3f}" for op, t in ms.items())
    print(f"torch {torch.__version__} on {dev}, {args.config}: L={L} NH={NH} C={C} T={T} Vp={Vp} "
          f"B={B}, {params / 1e6:.1f}M parameters; ms per step:")
    for op, t in ms.items():
        print(f"  {op:<20} {t:8.3f}")
    print(f"RESULT torch-ops {args.config} {values}", flush=True)


if __name__ == "__main__":
    main()
