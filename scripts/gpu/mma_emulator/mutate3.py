"""Mutation check of the cp.async pipeline (two stages, one __syncthreads per tile): each mutant
must be flagged, and says by what: the race checker by barrier epoch (RAW / WAR / WAW races), a
read of a copy not yet committed or waited for ("cp.async race"), a read of shared memory never
written (SharedMemoryError), or the numbers.
Shape 0 (T 150): the last query block walks three key tiles, so a stage is refilled."""
import re

import run

src = open("kernels.py").read()
ISSUE = ("    wait_copies(ctx)\n    yield  # __syncthreads\n"
         "    if t + 1 < tiles:\n        load(t + 1)\n")
ISSUE_EARLY = ("    wait_copies(ctx)\n    if t + 1 < tiles:\n        load(t + 1)\n"
               "    yield  # __syncthreads\n")
muts = {
    # tile t + 1 issued into stage t % 2, the one being read in this barrier interval (tile 0
    # into stage 0 in the prologue, and each tile read from where it was put): stage_of, which
    # every kernel's stages go through
    "all kernels: tile t+1 into stage t%2": (
        [("return base + (t % kStages) * per_stage",
          "return base + ((t - (t > 0)) % kStages) * per_stage")], 1),
    "all kernels: tile t+1 issued before the __syncthreads": ([(ISSUE, ISSUE_EARLY)], 1),
    "one stage (kStages = 1), one barrier a tile": (
        [("kStages = 2  #", "kStages = 1  #")], 1),
    "dkdv: lse and D rows in one buffer for both stages": (
        [("rt = stage_of(rows, t, 2 * kRows)", "rt = rows"),
         ("tile_lse = stage_of(rows, t, 2 * kRows)", "tile_lse = rows")], 1),
    "all kernels: no wait_copies before the barrier": (
        [("    wait_copies(ctx)\n    yield", "    yield")], 1),
    "forward: no commit_copies after the prologue": (
        [("    load_stage(0)\n    commit_copies(ctx)\n\n    m = ", "    load_stage(0)\n\n    m = ")],
        1),
    "load_tile: no zero-fill past T": (
        [("        ctx.smem.copy_bf(np.concatenate([dst + e for e in range(8)]),\n"
          "                         np.concatenate([v[:, e] for e in range(8)]), ctx.warp)",
          "        ctx.smem.copy_bf(np.concatenate([dst[ok] + e for e in range(8)]),\n"
          "                         np.concatenate([v[ok, e] for e in range(8)]), ctx.warp)")], 1),
    # the forward's semantics (the numbers only)
    "forward: acc not rescaled when the max grows": (
        [("            acc[n][2 * h] *= rescale\n            acc[n][2 * h + 1] *= rescale\n",
          "            pass\n")], 1),
    "forward: l summed from the bf16-rounded p": (
        [("sm = sm + (s[n][2 * h] + s[n][2 * h + 1])",
          "sm = sm + (bf16(s[n][2 * h]) + bf16(s[n][2 * h + 1]))")], 1),
    "dkdv: lse not converted to base 2": (
        [("lse2 = (tl * kLog2e).astype(np.float32)", "lse2 = tl")], 1),
}
for name, (edits, count) in muts.items():
    s = src
    for a, b in edits:  # the first `count` occurrences (the forward kernel comes first)
        assert s.count(a) >= count, (name, a, s.count(a))
        s = s.replace(a, b, count)
    out, error = run.run_source(s)
    if error:
        res = run.exception_verdict(error)
    else:
        lines = [l for l in out.splitlines() if " race " in l]
        by = []
        for kind in ("RAW race", "WAR race", "WAW race", "cp.async race"):
            n = sum(kind in l for l in lines)
            if n:
                by.append(f"{n} {kind}")
        worst = max(float(x) for x in re.findall(r"vs bf16-cpu ([0-9.e+-]+)", out))
        if "MISMATCH" in out:
            by.append(f"numbers (worst vs bf16-cpu {worst:.1e})")
        res = "caught by " + ", ".join(by) if by else f"NOT CAUGHT (worst vs bf16-cpu {worst:.1e})"
    print(f"{name:60s} {res}")
