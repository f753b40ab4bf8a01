#!/usr/bin/env python3
"""torch_check: an independent PyTorch reference for one forward/backward of mixsim's GPT.

Reads a directory written by bench/gpu/gpt_dump (params.f32, grads.f32, tokens.i32,
targets.i32, meta.json), rebuilds the same model in PyTorch from params.f32, computes the loss
and the gradients of all parameters, and compares them with the ones mixsim computed:

    torch_check.py DIR [--device cuda|cpu] [--tol-loss X] [--tol-grad Y] [--dtype float32|float64]

One line per tensor (meta.json order): max |diff|, the relative L2 error
||g_torch - g_ours|| / ||g_torch|| and the relative max error max|diff| / max|g_torch| (which
catches a few wrong elements that the L2 norm would dilute); both must be within --tol-grad.
Then the summary line
    torch_check: loss ours=... torch=... rel=...; worst grad rel-L2 ... (tensor),
                 rel-max ... (tensor); PASS|FAIL   (one line)
Exit status 1 on FAIL (or on a malformed dump), 0 on PASS.

The model, as mixsim defines it (src/model/gpt.cpp, src/backend/cpu/*.cpp, kernels/*.cu):
  x = wte[token] + wpe[t]                         (learned positions; wte has Vp rows)
  per layer l (pre-LayerNorm):
    h   = LN(x; ln1w[l], ln1b[l])                 LN: biased variance, eps 1e-5
    qkv = h @ qkvw[l]^T + qkvb[l]                 every matmul: out = in @ W^T + b, W (OC, C)
    q, k, v = qkv[..., 0:C], [C:2C], [2C:3C]; head h owns channels [h*HS, (h+1)*HS) of each
    y   = softmax(q k^T / sqrt(HS), causal) v     heads concatenated back in channel order
    x   = x + y @ attprojw[l]^T + attprojb[l]
    h   = LN(x; ln2w[l], ln2b[l])
    x   = x + gelu_tanh(h @ fcw[l]^T + fcb[l]) @ fcprojw[l]^T + fcprojb[l]
  logits = LN(x; lnfw, lnfb) @ wte^T               (tied head over all Vp rows)
  loss = mean over positions with target >= 0 of cross-entropy over the FIRST V logits only
  (the padded rows V..Vp-1 of wte get no gradient; targets < 0 are skipped).
Only torch, numpy, json and argparse; works with torch 1.13 and 2.x, on CPU without a GPU.
"""

import argparse
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

# Default tolerances. Both sides compute in fp32 and differ only in summation order (BLAS
# blocking, OpenMP/warp reductions, a flash-style attention that recomputes the probabilities
# from the log-sum-exp) and in exp() (the CPU backend's polynomial fast_exp, ~1-2 ulp).
# Measured with the CPU backend against torch fp32 (and fp64) on CPU, gpt_dump --init rich,
# nine configs from L=1 C=40 T=53 to L=6 C=256 T=256: loss rel <= 1.6e-7, worst grad rel-L2
# per tensor 6e-7..9.4e-7 and rel-max <= 1.4e-6, flat in the model size (--init model:
# 4.6e-7). The subtlest modelling mistakes tried, in the reference, give (rel-L2 / loss):
# GELU erf instead of tanh 4.6e-4 / 3.4e-6; LayerNorm eps 1e-6 instead of 1e-5 4.1e-4 /
# 3.5e-6; unbiased LayerNorm variance 2.3e-2 / 1.0e-3 (transposed weights, a wrong head
# layout, scale or mask: O(1)).
# So the grad tolerance sits ~20x above the fp32 noise and ~20x below the subtlest bug; the
# loss tolerance ~12x above its noise (gradients are the sharper test of the two).
DEFAULT_TOL_LOSS = 2e-6  # relative difference of the loss
DEFAULT_TOL_GRAD = 2e-5  # relative L2 and relative max error of each tensor's gradient

LN_EPS = 1e-5


def fail(message):
    print(f"torch_check: error: {message}", file=sys.stderr)
    sys.exit(1)


def nan_last(x):
    """Orders errors with NaN as the worst."""
    return math.inf if math.isnan(x) else x


def relative(error, scale):
    """error / scale, where a zero scale (no gradient expected at all) makes any error infinite."""
    if scale > 0:
        return float(error / scale)
    return 0.0 if error == 0 else math.inf


def read_raw(path, dtype, count):
    data = np.fromfile(path, dtype=dtype)
    if data.size != count:
        fail(f"{path} holds {data.size} values, meta.json says {count}")
    return data


def load_dump(directory):
    with open(os.path.join(directory, "meta.json")) as f:
        meta = json.load(f)
    L, NH, C, HS = meta["L"], meta["NH"], meta["C"], meta["HS"]
    maxT, V, Vp, B, T = meta["maxT"], meta["V"], meta["Vp"], meta["B"], meta["T"]
    if NH * HS != C or Vp < V or Vp % 64 != 0 or T > maxT:
        fail(f"inconsistent dims in meta.json: {meta}")
    expected = {  # the canonical layout (src/model/layout.cpp)
        "wte": [Vp, C], "wpe": [maxT, C], "ln1w": [L, C], "ln1b": [L, C],
        "qkvw": [L, 3 * C, C], "qkvb": [L, 3 * C], "attprojw": [L, C, C], "attprojb": [L, C],
        "ln2w": [L, C], "ln2b": [L, C], "fcw": [L, 4 * C, C], "fcb": [L, 4 * C],
        "fcprojw": [L, C, 4 * C], "fcprojb": [L, C], "lnfw": [C], "lnfb": [C],
    }
    offset = 0
    for t in meta["tensors"]:
        if expected.get(t["name"]) != t["shape"] or t["offset"] != offset:
            fail(f"tensor {t['name']}: shape {t['shape']} at offset {t['offset']} is not the "
                 f"layout this script knows ({expected.get(t['name'])} at {offset})")
        if t["numel"] != math.prod(t["shape"]):
            fail(f"tensor {t['name']}: numel {t['numel']} != prod(shape)")
        offset += t["numel"]
    if [t["name"] for t in meta["tensors"]] != list(expected) or offset != meta["total"]:
        fail("tensor list of meta.json does not match the canonical layout")
    total = meta["total"]
    params = read_raw(os.path.join(directory, "params.f32"), "<f4", total)
    grads = read_raw(os.path.join(directory, "grads.f32"), "<f4", total)
    tokens = read_raw(os.path.join(directory, "tokens.i32"), "<i4", B * T).reshape(B, T)
    targets = read_raw(os.path.join(directory, "targets.i32"), "<i4", B * T).reshape(B, T)
    if tokens.min() < 0 or tokens.max() >= V or targets.max() >= V or (targets >= 0).sum() == 0:
        fail("tokens or targets out of range")
    return meta, params, grads, tokens, targets


def gpt_loss(flat, meta, tokens, targets):
    """The mean loss of mixsim's GPT with all parameters as views of the flat buffer."""
    L, NH, C, HS, V = meta["L"], meta["NH"], meta["C"], meta["HS"], meta["V"]
    B, T = tokens.shape
    p = {t["name"]: flat[t["offset"]:t["offset"] + t["numel"]].view(t["shape"])
         for t in meta["tensors"]}
    # The attention scale as both backends compute it: 1 / sqrt(HS) rounded to float.
    scale = float(np.float32(1.0) / np.sqrt(np.float32(HS)))
    causal = torch.ones(T, T, dtype=torch.bool, device=flat.device).tril()

    x = p["wte"][tokens] + p["wpe"][:T].unsqueeze(0)  # (B,T,C)
    for l in range(L):
        h = F.layer_norm(x, (C,), p["ln1w"][l], p["ln1b"][l], eps=LN_EPS)
        qkv = F.linear(h, p["qkvw"][l], p["qkvb"][l])  # (B,T,3C)
        q, k, v = qkv.split(C, dim=-1)
        q, k, v = (z.view(B, T, NH, HS).transpose(1, 2) for z in (q, k, v))  # (B,NH,T,HS)
        att = (q @ k.transpose(-2, -1)) * scale
        att = att.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + F.linear(y, p["attprojw"][l], p["attprojb"][l])
        h = F.layer_norm(x, (C,), p["ln2w"][l], p["ln2b"][l], eps=LN_EPS)
        h = F.gelu(F.linear(h, p["fcw"][l], p["fcb"][l]), approximate="tanh")
        x = x + F.linear(h, p["fcprojw"][l], p["fcprojb"][l])
    x = F.layer_norm(x, (C,), p["lnfw"], p["lnfb"], eps=LN_EPS)
    logits = x @ p["wte"].t()  # (B,T,Vp): the head is tied to all Vp rows of wte
    logits = logits[..., :V]  # the padded columns never enter the softmax
    return F.cross_entropy(logits.reshape(B * T, V), targets.reshape(B * T).long(),
                           ignore_index=-1, reduction="mean")


def torch_version():
    return tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])


def use_full_fp32():
    """Exact fp32 products on the GPU: no TF32 on Ampere and later GPUs. torch >= 2.9 has per-backend
    fp32_precision settings and raises an error when the legacy and the new settings are mixed,
    so only one of the two is used (and neither is read back)."""
    if torch_version() >= (2, 9):
        # cuBLAS only: the model has no convolution or RNN, so cuDNN's setting does not matter.
        torch.backends.cuda.matmul.fp32_precision = "ieee"
    else:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def check_fp32_matmul(device):
    """Fails unless a matrix product on `device` is accurate to fp32 (TF32 keeps 10 mantissa
    bits: its error is ~1e-3, fp32's ~1e-7): whatever the settings said, the reference is fp32."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(256, 256, generator=gen, dtype=torch.float64)
    b = torch.randn(256, 256, generator=gen, dtype=torch.float64)
    exact = a @ b
    got = (a.float().to(device) @ b.float().to(device)).double().cpu()
    rel = float((got - exact).norm() / exact.norm())
    if not rel < 1e-5:
        fail(f"fp32 matrix products on {device} have relative error {rel:.1e} (TF32 or lower "
             "precision is on): the reference would not be fp32")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir", help="directory written by gpt_dump")
    ap.add_argument("--device", choices=["cuda", "cpu"], default=None,
                    help="where torch computes (default: cuda if available, else cpu)")
    ap.add_argument("--tol-loss", type=float, default=DEFAULT_TOL_LOSS,
                    help=f"max relative loss difference (default {DEFAULT_TOL_LOSS:g})")
    ap.add_argument("--tol-grad", type=float, default=DEFAULT_TOL_GRAD,
                    help=f"max relative L2 and relative max gradient error per tensor "
                         f"(default {DEFAULT_TOL_GRAD:g})")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                    help="precision of the reference (float64: to see how far fp32 itself is "
                         "from exact)")
    args = ap.parse_args()

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        fail("--device cuda, but torch sees no usable GPU (torch.cuda.is_available() is False)")
    if device == "cuda":
        use_full_fp32()
    check_fp32_matmul(device)
    dtype = torch.float64 if args.dtype == "float64" else torch.float32

    meta, params, ours_grads, tokens, targets = load_dump(args.dir)
    flat = torch.tensor(params, dtype=dtype, device=device, requires_grad=True)
    tok = torch.tensor(tokens, dtype=torch.long, device=device)
    tgt = torch.tensor(targets, dtype=torch.long, device=device)
    loss = gpt_loss(flat, meta, tok, tgt)
    loss.backward()
    torch_grads = flat.grad.detach().double().cpu().numpy()
    ours = ours_grads.astype(np.float64)

    print(f"torch_check: {args.dir}: backend {meta['backend']}, L={meta['L']} NH={meta['NH']} "
          f"C={meta['C']} maxT={meta['maxT']} V={meta['V']} (Vp {meta['Vp']}) B={meta['B']} "
          f"T={meta['T']}, init {meta.get('init', '?')}; torch {torch.__version__} on {device}, "
          f"{args.dtype}")
    print(f"{'tensor':<16} {'numel':>8} {'max|g_torch|':>13} {'max|diff|':>11} {'rel-L2':>11} "
          f"{'rel-max':>11}")
    failed = []
    worst_name, worst_rel = None, -1.0  # over rel-L2
    worst_max_name, worst_max = None, -1.0  # over rel-max
    rows = [(t["name"], t["offset"], t["numel"]) for t in meta["tensors"]]
    V, Vp, C = meta["V"], meta["Vp"], meta["C"]
    for name, offset, numel in rows:
        g_t = torch_grads[offset:offset + numel]
        g_o = ours[offset:offset + numel]
        diff = g_t - g_o
        rel = relative(np.linalg.norm(diff), np.linalg.norm(g_t))
        rel_max = relative(np.abs(diff).max(), np.abs(g_t).max())
        ok = rel <= args.tol_grad and rel_max <= args.tol_grad  # False for NaN too
        if not ok:
            failed.append(name)
        if nan_last(rel) > nan_last(worst_rel):
            worst_name, worst_rel = name, rel
        if nan_last(rel_max) > nan_last(worst_max):
            worst_max_name, worst_max = name, rel_max
        print(f"{name:<16} {numel:>8} {np.abs(g_t).max():>13.4e} {np.abs(diff).max():>11.3e} "
              f"{rel:>11.3e} {rel_max:>11.3e}{'' if ok else '  FAIL'}")
    # The padded rows of wte are outside the model: their gradient must be exactly zero.
    if Vp > V:
        pad = ours[rows[0][1] + V * C:rows[0][1] + Vp * C]
        pad_max = float(np.abs(pad).max())
        ok = pad_max == 0.0
        if not ok:
            failed.append("wte[V:Vp]")
        print(f"{'wte[V:Vp]':<16} {pad.size:>8} {'(must be 0)':>13} {pad_max:>11.3e}"
              f"{'' if ok else '  FAIL'}")

    loss_ours, loss_torch = float(meta["loss"]), float(loss.item())
    loss_rel = abs(loss_ours - loss_torch) / max(abs(loss_torch), 1e-30)
    loss_ok = loss_rel <= args.tol_loss
    passed = loss_ok and not failed
    print(f"torch_check: loss ours={loss_ours:.9g} torch={loss_torch:.9g} rel={loss_rel:.3e}; "
          f"worst grad rel-L2 {worst_rel:.3e} ({worst_name}), rel-max {worst_max:.3e} "
          f"({worst_max_name}); {'PASS' if passed else 'FAIL'}"
          + ("" if passed else
             f" (tolerances: loss {args.tol_loss:g}, grad {args.tol_grad:g}; failed: "
             f"{', '.join((['loss'] if not loss_ok else []) + failed)})"))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
