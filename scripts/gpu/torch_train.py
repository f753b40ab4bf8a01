#!/usr/bin/env python3
"""PyTorch's training speed on the model bench_gpu_train measures: the comparison for issue #8.

The same GPT-2 architecture as mixsim (learned positions, pre-LayerNorm blocks, tanh-GELU MLP,
output head tied to the token embedding, vocabulary padded to a multiple of 64), the same shapes
and batch, the same step (zero_grad, forward, backward, gradient-norm clipping, AdamW), with
random tokens. Precision: bf16 (autocast, fp32 master weights; the issue's yardstick, usually with
--compile) or fp32 (TF32 off, what mixsim's fp32 CUDA backend computes). Prints a line
`RESULT torch-<dtype>[-compile] <config> tokens_per_s=... tflops=... mfu=...` for gpu-check.sh.
FLOPs per token are counted as in bench/timed_backend.hpp (6 per matrix weight, causal
attention at half), MFU against --peak-tflops (989: H100 dense bf16). --accum 1,8 times the
same model once per count of micro-batches a step, as bench_gpu_train --accum does (A forwards and
backwards of the batch with each loss scaled by 1/A, then one clipping and one update; ceil(steps
/ A) steps; the config named gpt2-x8), in one process: the compiled model is the same for every
count, so it compiles once.

  python3 scripts/gpu/torch_train.py --config gpt2 --dtype bf16 --compile --steps 30
"""
import argparse
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

CONFIGS = {  # name: (layers, heads, channels, context, vocab, batch)
    "small": (6, 6, 384, 256, 256, 16),
    "gpt2": (12, 12, 768, 1024, 50257, 8),
    "1.1b": (24, 16, 2048, 2048, 50257, 2),
}


class Block(nn.Module):
    def __init__(self, C, NH):
        super().__init__()
        self.NH = NH
        self.ln1 = nn.LayerNorm(C)
        self.qkv = nn.Linear(C, 3 * C)
        self.attproj = nn.Linear(C, C)
        self.ln2 = nn.LayerNorm(C)
        self.fc = nn.Linear(C, 4 * C)
        self.fcproj = nn.Linear(4 * C, C)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.NH, C // self.NH).transpose(1, 2) for t in (q, k, v))
        if hasattr(F, "scaled_dot_product_attention"):  # torch >= 2.0: flash attention
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # older torch (a CPU check of this script)
            att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
            mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            y = att.masked_fill(~mask, float("-inf")).softmax(-1) @ v
        x = x + self.attproj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.fcproj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class Gpt(nn.Module):
    def __init__(self, L, NH, C, T, V):
        super().__init__()
        Vp = (V + 63) // 64 * 64
        self.V = V
        self.wte = nn.Embedding(Vp, C)
        self.wpe = nn.Embedding(T, C)
        self.blocks = nn.ModuleList(Block(C, NH) for _ in range(L))
        self.lnf = nn.LayerNorm(C)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * L) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx, targets):
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.lnf(x) @ self.wte.weight.t()  # tied head over the padded rows, as mixsim
        return F.cross_entropy(logits[..., : self.V].float().reshape(-1, self.V), targets.view(-1))


def flops_per_token(L, C, T, V):
    return 6 * (L * (12 * C * C + 9 * C) + V * C) + 6 * L * T * C


def accum_list(text):
    parts = text.split(",")
    if not all(p.isdigit() and 0 < int(p) < 1000 for p in parts):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give counts of micro-batches a step, positive integers separated by "
            "commas (1,8)")
    return [int(p) for p in parts]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="gpt2", choices=sorted(CONFIGS))
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--batch", type=int, default=0, help="sequences per step (0: the config's)")
    ap.add_argument("--steps", type=int, default=30, help="timed steps (after 5 warm-up steps)")
    ap.add_argument("--accum", type=accum_list, default=[1],
                    help="micro-batches a step, one timing per count: 1,8 (default 1)")
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--device", default="cuda", help="cuda, or cpu to check the script itself")
    args = ap.parse_args()

    L, NH, C, T, V, B = CONFIGS[args.config]
    B = args.batch or B
    torch.manual_seed(1)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = args.device
    model = Gpt(L, NH, C, T, V).to(dev)
    decay = [p for n, p in model.named_parameters() if p.dim() == 2]
    other = [p for n, p in model.named_parameters() if p.dim() != 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": other, "weight_decay": 0.0}],
                            lr=1e-4, betas=(0.9, 0.95), eps=1e-8,
                            **({"fused": True} if dev == "cuda" else {}))
    step_model = torch.compile(model) if args.compile else model
    amp = torch.autocast(dev, dtype=torch.bfloat16, enabled=args.dtype == "bf16")
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    label = f"torch-{args.dtype}" + ("-compile" if args.compile else "")
    for accum in args.accum:
        tokens = torch.randint(0, V, (accum, B, T + 1), device=dev)
        micro = [(t[:, :-1].contiguous(), t[:, 1:].contiguous()) for t in tokens]

        def step():
            opt.zero_grad(set_to_none=True)
            for x, y in micro:
                with amp:
                    loss = step_model(x, y)
                (loss / accum).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            return loss

        t0 = time.time()
        for _ in range(5):
            loss = step()
        sync()
        warm = time.time() - t0
        steps = -(-args.steps // accum)  # about as many micro-batches whatever the count
        t0 = time.time()
        for _ in range(steps):
            loss = step()
        sync()
        seconds = time.time() - t0
        tps = B * T * accum * steps / seconds
        tflops = tps * flops_per_token(L, C, T, V) / 1e12
        print(f"{label} {args.config}: B={B} x {accum} micro-batches, T={T}, warm-up {warm:.1f} s, "
              f"{steps} steps {seconds:.2f} s, loss {loss.item():.3f}; {tps:.0f} tokens/s, "
              f"{tflops:.1f} TFLOP/s, MFU {100 * tflops / args.peak_tflops:.1f}% of "
              f"{args.peak_tflops:.0f}")
        # the config named with its batch where --batch changed it (gpt2-b32) and its
        # micro-batches where there are several (gpt2-x8), as bench_gpu_train does
        config = args.config if B == CONFIGS[args.config][5] else f"{args.config}-b{B}"
        if accum > 1:
            config += f"-x{accum}"
        print(f"RESULT {label} {config} tokens_per_s={tps:.0f} tflops={tflops:.2f} "
              f"mfu={100 * tflops / args.peak_tflops:.2f}", flush=True)


if __name__ == "__main__":
    main()
