import run
src = open("kernels.py").read()
muts = {
 "scores B: matrix order (lane/16 <-> lane/8%2)": ("(n * 8 + lane // 16 * 8 + lane % 8) * LD + k + lane // 8 % 2 * 8", "(n * 8 + lane // 8 % 2 * 8 + lane % 8) * LD + k + lane // 16 * 8"),
 "scores A: lane%16 -> lane%8": ("(g * kRows + lane % 16) * LD", "(g * kRows + lane % 8) * LD"),
 "accumulate: lane/8%2 <-> lane/16": ("(k * 16 + lane // 8 % 2 * 8 + lane % 8) * LD + n * 8 + lane // 16 * 8", "(k * 16 + lane // 16 * 8 + lane % 8) * LD + n * 8 + lane // 8 % 2 * 8"),
 "store_rows: lane%4*2 -> lane%4": ("lane % 4 * 2\n", "lane % 4\n"),
 "dkdv mask i>=j -> i>j": ("(i < T) & (i >= j)", "(i < T) & (i > j)"),
 "wide: both groups' queries from the first 64 rows": ("load_tile(ctx, HS, qs + g * kRows * LD, \"qkv16\", head.q, head.qkv_stride, i0 + g * kRows, T)", "load_tile(ctx, HS, qs + g * kRows * LD, \"qkv16\", head.q, head.qkv_stride, i0, T)"),
 "wide: a group's full tiles judged by the block's first row": ("j0 < i0 + g * kRows and iw[g] + 16 <= T", "j0 < i0 + kBlockRows and iw[g] + 16 <= T"),
 "wide: a group skips the tile of its own diagonal": ("on = [live[g] and j0 <= iw[g] + 15", "on = [live[g] and j0 < iw[g]"),
 "forward grid not reversed (neutral: block order only, expected NOT CAUGHT)": ("i0 = (blocks - 1 - block) * kBlockRows", "i0 = block * kBlockRows"),
}
for name, (a, b) in muts.items():
    assert src.count(a) >= 1, name
    out, error = run.run_source(src.replace(a, b))
    if error:
        res = run.exception_verdict(error)
    else:
        res = "caught" if "MISMATCH" in out else "NOT CAUGHT"
    print(f"{name:76s} {res}")
