import run
src = open("kernels.py").read()
muts = {
 "scores B: matrix order (lane/16 <-> lane/8%2)": ("(n * 8 + lane // 16 * 8 + lane % 8) * LD + k + lane // 8 % 2 * 8", "(n * 8 + lane // 8 % 2 * 8 + lane % 8) * LD + k + lane // 16 * 8"),
 "scores A: lane%16 -> lane%8": ("a + (lane % 16) * LD", "a + (lane % 8) * LD"),
 "accumulate: lane/8%2 <-> lane/16": ("(k * 16 + lane // 8 % 2 * 8 + lane % 8) * LD + n * 8 + lane // 16 * 8", "(k * 16 + lane // 16 * 8 + lane % 8) * LD + n * 8 + lane // 8 % 2 * 8"),
 "store_rows: lane%4*2 -> lane%4": ("lane % 4 * 2\n", "lane % 4\n"),
 "dkdv mask i>=j -> i>j": ("(i < T) & (i >= j)", "(i < T) & (i > j)"),
 "forward grid not reversed (neutral: block order only, expected NOT CAUGHT)": ("i0 = (ctx.gridDim[0] - 1 - ctx.blockIdx[0]) * kRows\n    iw = i0 + warp * 16\n    tiles = (min(T, i0 + kRows) - 1) // kRows + 1  # key tiles up to the last row", "i0 = ctx.blockIdx[0] * kRows\n    iw = i0 + warp * 16\n    tiles = (min(T, i0 + kRows) - 1) // kRows + 1  # key tiles up to the last row"),
}
for name, (a, b) in muts.items():
    assert src.count(a) >= 1, name
    out, error = run.run_source(src.replace(a, b))
    if error:
        res = f"caught (exception: {type(error).__name__}: {str(error)[:70]})"
    else:
        res = "caught" if "MISMATCH" in out else "NOT CAUGHT"
    print(f"{name:76s} {res}")
