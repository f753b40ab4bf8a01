"""Mutation check of the fused dq (MIXSIM_ATTENTION_FUSED_DQ: backward_dkdv_kernel<HS, Out, true>,
its blocks run together by kernels.launch_concurrent): each mutant of the semaphore protocol or
of the dS^T staging must be flagged by run.py's fused_dq check, which says by what: a deadlock
(kernels.Deadlock: no alive block can pass its barrier), an access of fused.acc out of the
semaphores' order or never written (kernels.Visibility, listed with the races), a shared-memory
race or a read of shared memory never written, dqkv elements written other than once, bits that
differ between runs (resident counts, grids) or from the numpy reference of the key-block order,
or the error bounds. Each runs on one shape with the resident sweep (1, 2, 3 and all blocks,
both grids, blocks started in launch order; 1 and 2 resident started in reverse and shuffled
order, which (xi), blockIdx in place of the ticket, cannot survive): shape 1 (T 70, HS 80: two
key blocks, the second with three warps of keys past T)
and, where three blocks in a chain matter, shape 0 (T 150: three query tiles, two heads); the
row_dots_kernel mutant on shape 2 (B 2, NH 2).

The walk upward (from the block's own tile) keeping the wait deadlocks as it stands, since the
loop releases the tile before the current one and so never the walk's last tile, which the next
block waits for; with that release added after the loop it is neutral (NOT CAUGHT): the sum
order of dq is the semaphores' (key blocks ascending) whatever the walk, and dk and dv, summed
over the query tiles upward, are then the default path's own bits. What it costs is waiting:
block b needs tile i after block b - 1 has finished it, one step later in an upward walk, so
more turns are spent held at a wait (printed beside the verdict, against the kernel's)."""
import re
import time

import run

src = open("kernels.py").read()
WAIT = "                yield wait_for(\"sem\", sem + tile, block)\n"
RELEASE = "            store_release(ctx, \"sem\", sem + tile_start(t - 1) // kRows, block + 1)\n"
WALK = "        return j0 + ((tiles - 1 - t) if fused_dq else t) * kRows\n"
LOAD = ("                    ctx.smem, dss + (k * 16 + lane // 16 * 8 + lane % 8) * kDsLd + warp * 16\n"
        "                    + lane // 8 % 2 * 8, warp) for k in range(4)])\n")
PART = "                add_dq_part(ctx, HS, head, iw, T, part, block == 0, tile == block, scale, Out)\n"
BARRIER = "            yield  # __syncthreads: dS^T in shared memory; the keys' earlier parts of dq stored\n"
END = "    if live:\n        out_rows = head.dqkv_offset\n"
S0, S1 = run.SHAPES[0], run.SHAPES[1]
muts = [
    ("(i) wait for sem == b - 1, not b", [(WAIT, WAIT.replace("block)", "block - 1)"))], S0),
    ("(ii) release b, not b + 1", [(RELEASE, RELEASE.replace("block + 1)", "block)"))], S1),
    ("(iii) walk upward from the own tile, keeping the wait", [
        (WALK, "        return j0 + t * kRows\n")], S0),
    ("(iii') the same, the walk's last tile released after the loop (neutral)", [
        (WALK, "        return j0 + t * kRows\n"),
        (END, "    if fused_dq:\n        yield  # __syncthreads\n        if warp == 0:\n"
              "            store_release(ctx, \"sem\", sem + tile_start(tiles - 1) // kRows, block + 1)\n"
              + END)], S0),
    ("(iv) dS fragments: ldmatrix row and column swapped (lane/16 <-> lane/8%2)", [
        (LOAD, LOAD.replace("lane // 16 * 8 + lane % 8", "lane // 8 % 2 * 8 + lane % 8")
         .replace("+ lane // 8 % 2 * 8, warp)", "+ lane // 16 * 8, warp)"))], S1),
    ("(v) the last contributor taken as b == 0, not tile == b", [
        (PART, PART.replace("tile == block", "block == 0"))], S1),
    ("(vi) the sum so far (__ldcg) not added for b > 0", [
        ("        if first or not ok.any():\n", "        if True:\n")], S1),
    ("(vii) release at the end of the tile's work, before the barrier", [
        (RELEASE, "            pass\n"),
        (PART, PART + "            if warp == 0 and tile != block:\n"
                      "                store_release(ctx, \"sem\", sem + tile, block + 1)\n")], S0),
    ("(viii) no __syncthreads after the wait", [(BARRIER, "")], S1),
    ("(ix) warps whose keys are past T leave their dS^T rows unwritten", [
        ("    if fused_dq and not live:", "    if False:")], S1),
    ("(x) row_dots_kernel: batch element and head swapped (b = bh % NH)", [
        ("    b, h = bh // NH, bh % NH\n", "    b, h = bh % NH, bh // NH\n")], run.SHAPES[2]),
    ("(xi) the grid position from blockIdx, not from a ticket", [
        ("        place = place_at(ctx, (yield from ticket_position(ctx)), heavy_first)\n",
         "        yield\n        place = place_of(ctx, heavy_first)\n")], S0),
]


def held(out):
    m = re.search(r"fused dq \[.*\((\d+) waits, (\d+) turns held at one\)", out)
    return f"{m.group(1)} waits, {m.group(2)} turns held" if m else "?"


def verdict(out):
    lines = out.splitlines()
    k = next(i for i, l in enumerate(lines) if "fused dq [" in l)
    default_bad = any("BAD" in l for l in lines[:k])
    fused = "\n".join(lines[k:])
    by = []
    for kind in ("unordered read", "unordered overwrite", "never written", "RAW race",
                 "WAR race", "WAW race", "cp.async race"):
        n = fused.count(kind)
        if n:
            by.append(f"{n} {kind}")
    if "write counts wrong" in fused:
        by.append("write counts")
    if "bits differ from the first run" in fused:
        by.append("bits differ between runs")
    m = re.search(r"vs key-block order ref (\d+) differ", fused)
    if m:
        by.append(f"dq vs the key-block order ref ({m.group(1)} differ)")
    for l in lines[k:]:
        b = re.search(r"^\s+(d[qkv])\s+rel L2.*max \|diff\| / bound (\S+)", l)
        if b and "BAD" in l and float(b.group(2)) > 1:
            by.append(f"{b.group(1)} bound vs default x{float(b.group(2)):.0f}")
    if "D (row_dots_kernel) DIFFERS" in fused:
        by.append("D")
    if "Out = bf16 run: DIFFERS" in fused:
        by.append("bf16 run")
    if "MISMATCH" not in out:
        res = "NOT CAUGHT"
    else:
        res = "caught by " + (", ".join(by) if by else "the numbers")
    if default_bad:
        res += "   (but the default path changed too)"
    return res


t_all = time.time()
out, error = run.run_source(src, S0, sweep=True, fused_only=True)
assert error is None and out.rstrip().endswith("ALL OK"), (error, out[-2000:])
print(f"{'the kernel as it is (shape 0: for the waits of (iii))':74s} ALL OK   ({held(out)})")
for name, edits, shape in muts:
    t = time.time()
    out, error = run.run_source(run.mutant(src, name, edits), shape, sweep=True,
                                fused_only=True)
    if error:
        res = run.exception_verdict(error)
    else:
        res = verdict(out)
        if name.startswith("(iii"):
            res += f"   ({held(out)})"
    print(f"{name:74s} {res}   [{time.time() - t:.0f}s]")
print(f"[{time.time() - t_all:.0f}s]")
