"""Mutation check of the bf16 attention output (MIXSIM_BF16_ATTENTION_OUT: the forward storing a
bf16 out, the dq kernel's D read from the bf16 out and the stored bf16 dout) and of the
heavy-first grid (MIXSIM_ATTENTION_HEAVY_FIRST: place_of on the grid (NH, B, row blocks)): each
mutant must be flagged by run.py's checks, which say by what: a load or store through a pointer
of the wrong type (TypeError), a missing fp32 dout (KeyError: the launcher passes none), a write
out of range or twice, or the bit-exact comparison with the default path. Shape 1 (HS 80, T 70)
for the first, shape 6 (B 3, NH 2: with B == NH a head and a batch element swapped would still
cover every pair once) for the grid."""
import run

src = open("kernels.py").read()
FINISH = "                        \"bf16\" if out_bf16 else \"float\")"
DOUT = "                  ctx.g.load(\"dout16\", at + d[act], esize=2))"
OUT = "        b[act] = ctx.g.load(\"out\", at + d[act], esize=2 if out_bf16 else 4)"
muts = {
    "forward ignores out_bf16 (float2 stores into the bf16 out)": [
        (FINISH, "                        \"float\")")],
    "forward rounds out before 1 / l (bf16(acc) * inv, then again)": [
        ("            lo = (f * acc[n][2 * half]).astype(np.float32)",
         "            lo = (f * (bf16(acc[n][2 * half]) if Out == \"bf16\" else acc[n][2 * half])).astype(np.float32)")],
    "D reads the fp32 dout though the launcher passes none": [
        (DOUT, "                  ctx.g.load(\"dout\", at + d[act], esize=4))")],
    "D reads a bf16 out through a float pointer": [
        (OUT, "        b[act] = ctx.g.load(\"out\", at + d[act], esize=4)")],
    "D reads the bf16 dout of the head before (at - HS)": [
        (DOUT, "                  ctx.g.load(\"dout16\", np.maximum(at - HS, 0) + d[act], esize=2))")],
    "dq kernel told dout32 though dout is bf16": [
        ("Out=Out, dout32=not bf16_att_out, out_bf16=bf16_att_out,",
         "Out=Out, dout32=True, out_bf16=bf16_att_out,")],
}
SHAPE = {name: run.SHAPES[1] for name in muts}
PLACE = "        return z, x, y, ctx.gridDim[2]"
grid_muts = {
    "heavy-first: head and batch element swapped": [(PLACE, "        return z, y, x, ctx.gridDim[2]")],
    "heavy-first: the row blocks counted from grid.x": [
        (PLACE, "        return z, x, y, ctx.gridDim[0]")],
    "heavy-first: the launcher's grid left (row blocks, NH, B)": [
        ("    return (NH, B, row_blocks) if heavy_first else (row_blocks, NH, B)",
         "    return (row_blocks, NH, B)")],
}
muts.update(grid_muts)
SHAPE.update({name: run.SHAPES[6] for name in grid_muts})
for name, edits in muts.items():
    out, error = run.run_source(run.mutant(src, name, edits), SHAPE[name])
    if error:
        res = run.exception_verdict(error)
    else:
        res = "caught" if "MISMATCH" in out else "NOT CAUGHT"
    print(f"{name:66s} {res}")
