"""Mutation check: each mutant (a typical index/layout bug) must be flagged by the comparison."""
import io, contextlib, re
import numpy as np
import kernels, run, ptx

orig = {n: getattr(kernels, n) for n in ("to_fragments", "column_of", "row_of", "ldmatrix_x4_trans", "ldmatrix_x4")}

def tofrag_swapped(s):
    a = orig["to_fragments"](s); a[:, [1, 2]] = a[:, [2, 1]]; return a
def tofrag_halves(s):
    a = orig["to_fragments"](s); return a[:, :, ::-1].copy()
mutants = {
  "to_fragments regs 1<->2 swapped": ("to_fragments", tofrag_swapped),
  "pack order hi/lo swapped": ("to_fragments", tofrag_halves),
  "column_of without v%2": ("column_of", lambda lane, n, v: n * 8 + lane % 4 * 2),
  "row_of with v%2 instead of v/2": ("row_of", lambda lane, v: lane // 4 + (v % 2) * 8),
  "accumulate without .trans": ("ldmatrix_x4_trans", lambda sm, addr, w: orig["ldmatrix_x4"](sm, addr, w)),
  "scores with .trans": ("ldmatrix_x4", lambda sm, addr, w: orig["ldmatrix_x4_trans"](sm, addr, w)),
}
for name, (attr, fn) in mutants.items():
    setattr(kernels, attr, fn)
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            run.main([run.SHAPES[1]])
        res = "caught" if "MISMATCH" in buf.getvalue() else "NOT CAUGHT"
    except Exception as e:
        res = f"caught (exception: {type(e).__name__}: {str(e)[:60]})"
    setattr(kernels, attr, orig[attr])
    print(f"{name:40s} {res}")
