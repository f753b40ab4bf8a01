"""Mutation check of the wgmma kernels (MIXSIM_ATTENTION_WGMMA and _BACKWARD; wgmma.py's
transcription of kernels/attention_tc.cu's namespace wgmma): each mutant of the kernels' code
must be flagged by run.py's wgmma_forward and wgmma_backward checks (bit for bit mma.sync's
kernels, every element once, no race, the async proxy's included), on shape 0 (HS 64, T 150)
and shape 3 (HS 128, T 100), or by an exception; it says by what. About three minutes."""
import contextlib
import io
import types

import numpy as np

import kernels
import run

src = open("wgmma.py").read()
muts = {
    "no fence.proxy.async after the wait (advance)": [
        ("    wait_copies(ctx)\n    ctx.smem.fence_proxy(ctx.warp)\n", "    wait_copies(ctx)\n")],
    "the fence before the wait (advance)": [
        ("    wait_copies(ctx)\n    ctx.smem.fence_proxy(ctx.warp)\n",
         "    ctx.smem.fence_proxy(ctx.warp)\n    wait_copies(ctx)\n")],
    "copies stored unswizzled": [
        ("    return (c // 8) * kAtomBytes + r * 128 + (((c % 8) ^ (r % 8)) << 4)",
         "    return (c // 8) * kAtomBytes + r * 128 + ((c % 8) << 4)")],
    "swizzled by the row's pair (r // 2 % 8)": [
        ("(((c % 8) ^ (r % 8)) << 4)", "(((c % 8) ^ (r // 2 % 8)) << 4)")],
    "SBO 512 (eight-row groups)": [
        ("descriptor(q + at, 16, 1024), descriptor(k + at, 16, 1024), kk > 0)",
         "descriptor(q + at, 16, 512), descriptor(k + at, 16, 1024), kk > 0)")],
    "values' k-step at +1024 bytes": [
        ("descriptor(v + h * kAtomBytes + kk * 2048,", "descriptor(v + h * kAtomBytes + kk * 1024,")],
    "scores' k-step at +16 bytes": [
        ("    for kk in range(HS // 16):\n        at = (kk // 4) * kAtomBytes + (kk % 4) * 32",
         "    for kk in range(HS // 16):\n        at = (kk // 4) * kAtomBytes + (kk % 4) * 16")],
    "HS 128: the second atom of Q and K not skipped to": [
        ("    for kk in range(HS // 16):\n        at = (kk // 4) * kAtomBytes + (kk % 4) * 32",
         "    for kk in range(HS // 16):\n        at = kk * 32")],
    "HS 128: the values' second half from the first atom": [
        ("descriptor(v + h * kAtomBytes + kk * 2048,", "descriptor(v + kk * 2048,")],
    "scores add to the last tile's (scale-d always 1)": [
        ("descriptor(k + at, 16, 1024), kk > 0)", "descriptor(k + at, 16, 1024), True)")],
    "next stage loaded before the barrier (advance)": [
        ("    yield  # __syncthreads\n    if t + 1 < tiles:\n        load(t + 1)\n",
         "    if t + 1 < tiles:\n        load(t + 1)\n    yield  # __syncthreads\n")],
    "one stage (keys(t) ignores t)": [
        ("        return qs + (1 + 2 * (t % kStages)) * tile_bytes(HS)",
         "        return qs + tile_bytes(HS)")],
    "the diagonal tile taken as full": [
        ("acc, j0 < i0 and iw + 16 <= T", "acc, j0 <= i0 and iw + 16 <= T")],
    "dq kernel: the diagonal tile taken as full": [
        ("query_major_ds(s, dp, j0 < i0 and", "query_major_ds(s, dp, j0 <= i0 and")],
    "dq kernel: dP from the queries, not dout": [
        ("        issue_scores(ctx, HS, dp, gs, keys(t) + tile)", "        issue_scores(ctx, HS, dp, qs, keys(t) + tile)")],
    "dq kernel: dS V instead of dS K": [
        ("        issue_accumulate(ctx, HS, dq, ds, keys(t))", "        issue_accumulate(ctx, HS, dq, ds, keys(t) + tile)")],
    "dkdv kernel: dv from the queries (P^T Q)": [
        ("        issue_accumulate(ctx, HS, dv, pt, gt)", "        issue_accumulate(ctx, HS, dv, pt, qt)")],
    "dkdv kernel: S^T from the values": [
        ("        issue_scores(ctx, HS, s, ks, qt)", "        issue_scores(ctx, HS, s, vs, qt)")],
    "dkdv kernel: one query stage": [
        ("        return ks + (2 + 2 * (t % kStages)) * tile", "        return ks + 2 * tile")],
    "dkdv kernel: lse rows of the other stage": [
        ("        tile_lse = rows + (t % kStages) * 2 * kRows", "        tile_lse = rows + ((t + 1) % kStages) * 2 * kRows")],
}
SHAPES = (run.SHAPES[0], run.SHAPES[3])
reference = {}
for shape in SHAPES:
    B, T, C, NH = shape
    rng = np.random.default_rng(B * 1000 + T * 10 + NH)
    qkv = rng.standard_normal(B * T * 3 * C).astype(np.float32)
    dout = rng.standard_normal(B * T * C).astype(np.float32)
    g = kernels.attention_forward(qkv, B, T, C, NH)[0]
    g2 = kernels.attention_backward(dout, qkv, g.a["out"], g.a["lse"], B, T, C, NH)[0]
    reference[shape] = (qkv, dout, g, g2)
for name, edits in muts.items():
    module = types.ModuleType("wgmma")
    verdicts = []
    try:
        exec(compile(run.mutant(src, name, edits), "wgmma_mut", "exec"), module.__dict__)
        saved, run.wgmma = run.wgmma, module
        try:
            for shape in SHAPES:
                qkv, dout, g, g2 = reference[shape]
                buf = io.StringIO()
                with contextlib.redirect_stdout(buf):
                    good = (run.wgmma_forward(g, qkv, *shape) and
                            run.wgmma_backward(g, g2, qkv, dout, *shape))
                if not good:
                    text = buf.getvalue()
                    verdicts.append("caught at HS %d (%s)" % (
                        shape[2] // shape[3], "race" if "race" in text else "bits differ"
                        if "DIFFERS" in text else "write counts"))
        finally:
            run.wgmma = saved
        res = verdicts[0] if verdicts else "NOT CAUGHT"
    except Exception as e:
        res = run.exception_verdict(e)
    print(f"{name:56s} {res}")
