#!/usr/bin/env python3
"""The error that kernels/attention_tc.cu should have: a float64 simulation of its bf16 roundings.

Rounds q, k, v, dout and the probabilities / their gradients to bf16 exactly where the kernels
do (products accumulate in fp32 on the GPU; float64 here, which changes nothing at this scale),
and compares with exact float64 attention on random normal inputs. The forward is the kernel's
single pass over key tiles of 64 (flash attention): P = exp(scale s - running max) rounded to
bf16 per tile, the sums rescaled when the max grows, out divided by the unrounded sum at the end. The backward pass starts from
the exact forward's out and lse, as the test's does (the CPU's fp32 ones). Prints relative L2 errors per
shape; tests/gpu/ops_test.cpp (Bf16TensorCoreAttention) takes its bounds from them. Then the
same roundings computed in fp32 against float64: how far the GPU (fp32 sums in another order) can
be from the test's double emulation of the kernels (attention_bf16_reference). Needs torch (CPU
is enough): python3 scripts/gpu/attention_bf16_error.py
"""
import math

import torch


def bf16(x):
    return x.to(torch.bfloat16).to(torch.float64)


KEY_TILE = 64  # the forward kernel's key tiles (kRows)


def tiled_forward(s, v, rnd):
    """The forward kernel's one pass (flash attention) over key tiles of 64, in s's dtype: per
    tile m_new = max(m, tile max of the scaled scores s), rescale = exp(m - m_new) (0 on the first
    tile: every row sees key 0 there), p = exp(s - m_new), l = l rescale + sum p (p unrounded),
    acc = acc rescale + rnd(p) rnd(v); m = m_new. A row before the tile (all of it masked) keeps
    m (rescale 1, p 0). Returns out = acc (1 / l) and lse = m + log l."""
    T = s.shape[-1]
    m = torch.full(s.shape[:-1], -math.inf, dtype=s.dtype)
    l = torch.zeros(s.shape[:-1], dtype=s.dtype)
    acc = torch.zeros(*s.shape[:-1], v.shape[-1], dtype=s.dtype)
    for j0 in range(0, T, KEY_TILE):
        st = s[..., j0:j0 + KEY_TILE]
        m_new = torch.maximum(m, st.amax(-1))
        rescale = torch.exp(m - m_new)
        p = torch.exp(st - m_new[..., None])
        l = l * rescale + p.sum(-1)
        acc = acc * rescale[..., None] + rnd(p) @ rnd(v[..., j0:j0 + KEY_TILE, :])
        m = m_new
    return acc * (1 / l)[..., None], m + torch.log(l)


def rel(a, b):
    return (a - b).norm().item() / b.norm().item()


def kernel_roundings(q, k, v, g, out_ref, lse_ref, scale, causal, dtype):
    """The kernels' outputs, with their bf16 roundings, computed in `dtype`."""
    q, k, v, g = (x.to(dtype) for x in (q, k, v, g))
    rnd = lambda x: x.to(torch.bfloat16).to(dtype)
    s = (rnd(q) @ rnd(k).transpose(-1, -2) * scale).masked_fill(~causal, -math.inf)
    out, lse = tiled_forward(s, v, rnd)
    p = torch.exp(s - lse_ref.to(dtype)[..., None])
    d = (g * out_ref.to(dtype)).sum(-1)
    ds = p * (rnd(g) @ rnd(v).transpose(-1, -2) - d[..., None])
    dq = rnd(ds) @ rnd(k) * scale
    dk = rnd(ds).transpose(-1, -2) @ rnd(q) * scale
    dv = rnd(p).transpose(-1, -2) @ rnd(g)
    return out, lse, torch.cat([dq, dk, dv])


def fp32_against_emulation(B, T, C, NH):
    HS = C // NH
    scale = 1 / math.sqrt(HS)
    heads = lambda x: x.reshape(B, T, NH, HS).transpose(1, 2)
    q, k, v = (heads(x) for x in torch.randn(B, T, 3 * C, dtype=torch.float64).split(C, dim=2))
    g = heads(torch.randn(B, T, C, dtype=torch.float64))
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    s = (q @ k.transpose(-1, -2) * scale).masked_fill(~causal, -math.inf)
    out_ref, lse_ref = torch.softmax(s, -1) @ v, torch.logsumexp(s, -1)
    exact = kernel_roundings(q, k, v, g, out_ref, lse_ref, scale, causal, torch.float64)
    fp32 = kernel_roundings(q, k, v, g, out_ref, lse_ref, scale, causal, torch.float32)
    errors = ", ".join(f"{name} {rel(b.double(), a):.2e}"
                       for name, a, b in zip(("out", "lse", "dqkv"), exact, fp32))
    print(f"B={B} T={T} C={C} NH={NH}: fp32 against the float64 emulation, relative L2 {errors}")


def simulate(B, T, C, NH):
    HS = C // NH
    scale = 1 / math.sqrt(HS)
    qkv = torch.randn(B, T, 3 * C, dtype=torch.float64)
    dout = torch.randn(B, T, C, dtype=torch.float64)
    heads = lambda x: x.reshape(B, T, NH, HS).transpose(1, 2)
    q, k, v = (heads(x) for x in qkv.split(C, dim=2))
    g = heads(dout)
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))

    qe, ke, ve = (x.clone().requires_grad_() for x in (q, k, v))
    s = (qe @ ke.transpose(-1, -2) * scale).masked_fill(~causal, -math.inf)
    out = torch.softmax(s, -1) @ ve
    lse = torch.logsumexp(s, -1)
    out.backward(g)

    s_k = (bf16(q) @ bf16(k).transpose(-1, -2) * scale).masked_fill(~causal, -math.inf)
    out_k, lse_k = tiled_forward(s_k, v, bf16)  # one pass, P = exp(s - running max) rounded
    # Backward as the test runs it: from the reference forward's out and lse (the CPU's), so that
    # only backward's own rounding counts.
    o_ref, lse_ref = out.detach(), lse.detach()
    p_b = torch.exp(s_k - lse_ref[..., None])
    d = (g * o_ref).sum(-1)  # fp32 dout . out
    ds = p_b * (bf16(g) @ bf16(v).transpose(-1, -2) - d[..., None])
    dq = bf16(ds) @ bf16(k) * scale
    dk = bf16(ds).transpose(-1, -2) @ bf16(q) * scale
    dv = bf16(p_b).transpose(-1, -2) @ bf16(g)
    exact = torch.cat([qe.grad, ke.grad, ve.grad])
    print(f"B={B} T={T} C={C} NH={NH} (HS={HS}): relative L2 error out {rel(out_k, out):.2e}, "
          f"lse {rel(lse_k, lse):.2e}, dqkv {rel(torch.cat([dq, dk, dv]), exact):.2e}")


if __name__ == "__main__":
    torch.manual_seed(0)
    shapes = [(2, 150, 192, 3), (1, 100, 128, 1), (3, 1, 32, 2), (2, 65, 96, 2), (1, 70, 80, 1),
              (1, 256, 768, 12)]
    for shape in shapes:
        simulate(*shape)
    for shape in shapes:
        fp32_against_emulation(*shape)
