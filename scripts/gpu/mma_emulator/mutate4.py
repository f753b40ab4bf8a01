"""Mutation check of the bf16 dqkv store (store_rows with Out = bf16, the backward kernels'
__floats2bfloat162_rn pairs): each mutant edits only the bf16 branch, must leave the fp32 run as
it was, and must be flagged by the bf16 run, which says by what: misaligned 4-byte stores,
elements unwritten or written twice, a value that bf16 memory cannot hold (TypeError), the
bit-exact comparison with the fp32 run rounded to nearest even, or the tolerance against
float64 rounded to bf16.  Shape 1 (HS 80, T 70): its second block has rows past T, which store
nothing, and its scale 1 / sqrt(80) is no power of two (at HS 16 and 64 it is, and rounding
before the factor then changes nothing: the last mutant, expected NOT CAUGHT)."""
import re

import run

src = open("kernels.py").read()
STORE = "        ctx.g.store(dst_name, (at + n * 8)[ok], pair[ok], width=2, esize=2)\n"
PAIR = "                pair = pack(lo, hi).T  #"
DQ_STORE = "store_rows(ctx, HS, \"dqkv\", head.dqkv_offset, head.qkv_stride"
muts = {
    # the pair one element on: 4-byte stores at odd bf16 elements, each overlapping the next;
    # the last one (dv's last column) runs past the end of dqkv
    "bf16 pair one column right (at + n * 8 + 1)": [
        (STORE, STORE.replace("(at + n * 8)", "(at + n * 8 + 1)"))],
    # the same in dq's rows only, which stays inside dqkv (dq's last column lands on dk's
    # first): what the alignment and write checks see
    "bf16 dq rows one column right (dst + 1)": [
        (DQ_STORE, DQ_STORE.replace("head.dqkv_offset", "head.dqkv_offset + (Out == \"bf16\")"))],
    # the lane's column in the float2 pair's bytes / 2 rather than in elements: aligned, but
    # quads overlap and skip columns
    "bf16 pair at column lane % 4 * 4": [
        (STORE, STORE.replace("(at + n * 8)", "(at + lane % 4 * 2 + n * 8)"))],
    "bf16 halves swapped (hi at the lower address)": [
        (PAIR, PAIR.replace("pack(lo, hi)", "pack(hi, lo)"))],
    "bf16 rounded by truncation, not to nearest even": [
        (PAIR, PAIR.replace("pack(lo, hi)",
                            "np.stack([(x.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)"
                            " for x in (lo, hi)])"))],
    # bf16(bf16(acc) * factor): a second rounding (dq and dk; dv's factor is 1)
    "bf16 rounded before the factor, then again": [
        (PAIR, PAIR.replace("pack(lo, hi)",
                            "pack(bf16(acc[n][2 * half]) * f, bf16(acc[n][2 * half + 1]) * f)"))],
    "bf16 last pair of each row not stored": [
        ("            else:\n" + PAIR, "            elif n < HS // 8 - 1:\n" + PAIR)],
    "bf16 only the low half stored (a 2-byte store of lo)": [
        (STORE, STORE.replace("pair[ok], width=2", "pair[ok, 0], width=1"))],
    "bf16 store of the unrounded fp32 values": [
        (PAIR, PAIR.replace("pack(lo, hi).T", "np.stack([lo, hi], axis=-1)"))],
}
NEUTRAL = "bf16 rounded before the factor, then again"
runs = [(name, edits, run.SHAPES[1]) for name, edits in muts.items()]
runs.append((NEUTRAL + " at HS 64 (neutral, expected NOT CAUGHT)", muts[NEUTRAL],
             run.SHAPES[0]))
width = max(len(r[0]) for r in runs)
for name, edits, shape in runs:
    out, error = run.run_source(run.mutant(src, name, edits), shape)
    if error:
        print(f"{name:{width}s} {run.exception_verdict(error)}")
        continue
    lines = out.splitlines()
    fp32_bad = any("vs bf16-cpu" in l and "BAD" in l for l in lines)
    head = next(l for l in lines if "bf16 dqkv" in l)
    part = [l for l in lines if "vs bf16(f64)" in l]
    by = []
    mis = int(re.search(r"misaligned=(\d+)", head).group(1))
    if mis:
        by.append(f"misaligned bf16x2 stores ({mis} warp-wide stores)")
    writes = re.search(r"(\d+) elements unwritten, (\d+) written more than once", head)
    if writes:
        by.append(f"writes ({writes.group(1)} unwritten, {writes.group(2)} twice or more)")
    differ = [l.split()[0] for l in part if " differ" in l]
    if differ:
        by.append("bits vs the fp32 run (" + " ".join(differ) + ")")
    tol = []
    for l in part:
        m = re.search(r"vs bf16\(f64\) (\S+) \(tol (\S+)\)", l)
        if m.group(1) != "n/a" and not float(m.group(1)) < float(m.group(2)):
            tol.append(f"{l.split()[0]} {float(m.group(1)):.1e}")
    if tol:
        by.append("tolerance vs bf16(f64) (" + ", ".join(tol) + ")")
    res = "caught by " + ", ".join(by) if by and "MISMATCH" in out else "NOT CAUGHT"
    if fp32_bad:
        res += "   (but the fp32 run changed too: the mutant is not bf16-only)"
    print(f"{name:{width}s} {res}")
