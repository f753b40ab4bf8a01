import io, contextlib, importlib, sys, types
import run
src = open("kernels.py").read()
muts = {
 "scores B: matrix order (lane/16 <-> lane/8%2)": ("(n * 8 + lane // 16 * 8 + lane % 8) * LD + k + lane // 8 % 2 * 8", "(n * 8 + lane // 8 % 2 * 8 + lane % 8) * LD + k + lane // 16 * 8"),
 "scores A: lane%16 -> lane%8": ("a + (lane % 16) * LD", "a + (lane % 8) * LD"),
 "accumulate: lane/8%2 <-> lane/16": ("(k * 16 + lane // 8 % 2 * 8 + lane % 8) * LD + n * 8 + lane // 16 * 8", "(k * 16 + lane // 16 * 8 + lane % 8) * LD + n * 8 + lane // 8 % 2 * 8"),
 "store_rows: lane%4*2 -> lane%4": ("lane % 4 * 2\n", "lane % 4\n"),
 "dkdv mask i>=j -> i>j": ("(i < T) & (i >= j)", "(i < T) & (i > j)"),
 "forward grid not reversed": ("i0 = (ctx.gridDim[0] - 1 - ctx.blockIdx[0]) * kRows\n    iw = i0 + warp * 16\n    last = min(T, i0 + kRows) - 1\n    live = iw < T\n    sl = np.float32(scale) * kLog2e\n    qw", "i0 = ctx.blockIdx[0] * kRows\n    iw = i0 + warp * 16\n    last = min(T, i0 + kRows) - 1\n    live = iw < T\n    sl = np.float32(scale) * kLog2e\n    qw"),
}
for name, (a, b) in muts.items():
    assert src.count(a) >= 1, name
    m = types.ModuleType("kernels"); exec(compile(src.replace(a, b), "kernels_mut", "exec"), m.__dict__)
    run.kernels = m
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            run.main([run.SHAPES[0]])
        out = buf.getvalue()
        res = "caught" if "MISMATCH" in out else "NOT CAUGHT"
    except Exception as e:
        res = f"caught (exception: {type(e).__name__}: {str(e)[:70]})"
    print(f"{name:48s} {res}")
