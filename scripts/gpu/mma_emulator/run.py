import contextlib
import io
import sys
import time
import types

import numpy as np

import kernels
import ptx
import ref
import wgmma

SHAPES = [(1, 150, 128, 2), (1, 70, 80, 1), (2, 65, 96, 2), (1, 100, 128, 1), (1, 1, 32, 2),
          (1, 300, 64, 1),  # many tiles wholly below the diagonal (full)
          (3, 70, 64, 2)]  # B != NH: a head and a batch element swapped in a grid show


def rel(a, b):
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    if not np.isfinite(a).all():
        return float("nan")
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def parts(dqkv, B, T, C):
    x = dqkv.reshape(B, T, 3, C)
    return x[:, :, 0], x[:, :, 1], x[:, :, 2]


def bf16_of_f64(x):
    """float64 rounded to bf16 (8 significant bits, to nearest even) directly: through float32
    first (ptx.bf16) it would be rounded twice.  Normal numbers only, as these outputs are."""
    m, e = np.frexp(np.asarray(x, np.float64))  # x = m 2^e, 0.5 <= |m| < 1
    return np.ldexp(np.round(np.ldexp(m, 8)), e - 8).astype(np.float32)  # np.round: half to even


# Relative L2 error of the fp32 outputs against float64 (rel_f64 below), and what that allows
# a bf16 dqkv against float64 rounded to bf16: with E the fp32 result, R the float64 one and
# |bf16(x) - x| <= 2^-9 |x| per element, |bf16(E) - bf16(R)| <= |E - R| + 2^-9 (|E| + |R|) and
# |E| <= (1 + r) |R|, so r_bf16 <= r + 2^-9 (2 + r).  The bound is all the rounding of the
# output can add; the bit-exact comparison with the fp32 run (below) is what sees a store that
# rounds otherwise (truncation moves r_bf16 by about 2^-9 / sqrt(3), well inside this bound).
TOL_F64 = 1e-2
TOL_CPU = 5e-4  # fp32 against cpu-bf16's roundings (main: measured and the subtlest bugs)
TOL_BF16 = TOL_F64 + 2 ** -9 * (2 + TOL_F64)


def bf16_dqkv(g2, races, dout, qkv, out, lse, d64, B, T, C, NH):
    """The backward with a bf16 dqkv (the kernels' Out = bf16), beside the fp32 run g2: every
    element written once, no misaligned 4-byte store, each of dq, dk, dv bit for bit the fp32
    run's value rounded to nearest even (both runs form the same fp32 products, and
    __floats2bfloat162_rn rounds each once), and within TOL_BF16 of float64 rounded to bf16.
    Prints its lines; returns whether all held."""
    t = time.time()
    g3, races3 = kernels.attention_backward(dout, qkv, out, lse, B, T, C, NH, Out="bf16")
    d16 = g3.a["dqkv"]
    w = g3.wcount["dqkv"]
    unwritten, twice = int((w == 0).sum()), int((w > 1).sum())
    written = ("every element once" if unwritten == twice == 0 else
               f"{unwritten} elements unwritten, {twice} written more than once")
    ok = unwritten == twice == 0 and not g3.misaligned
    # the same shared-memory code as the fp32 run: list only races that run did not have
    fresh = [r for r in races3 if r not in races]
    print(f"   bf16 dqkv  [{time.time() - t:.1f}s]  races={len(races3)} "
          f"misaligned={len(g3.misaligned)}  {written}{'' if ok else '   <-- BAD'}")
    for r in fresh:
        print("   ", r)
    for m in g3.misaligned[:5]:
        print("   ", m)
    if not np.array_equal(g3.a["dvec"], g2.a["dvec"]):  # D is fp32 in both runs
        print("   dvec differs from the fp32 run's   <-- BAD")
        ok = False
    E16 = parts(d16, B, T, C)
    E32 = parts(ptx.bf16(g2.a["dqkv"]), B, T, C)
    R16 = parts(bf16_of_f64(d64), B, T, C)
    for n, e, e32, r in zip(("dq", "dk", "dv"), E16, E32, R16):
        a = np.ascontiguousarray(e, np.float32).view(np.uint32)
        b = np.ascontiguousarray(e32, np.float32).view(np.uint32)
        differ = int((a != b).sum())
        if np.linalg.norm(r) < 1e-6 * np.linalg.norm(dout):  # degenerate (T=1: dS = 0), as above
            err, err_s = 0.0, "n/a (f64 ref ~0)"
        else:
            err = rel(e, r)
            err_s = f"{err:.2e}"
        good = differ == 0 and err < TOL_BF16
        ok &= good
        exact = "exact" if differ == 0 else f"{differ} of {a.size} differ"
        print(f"   {n:4s} rel L2 vs bf16(f64) {err_s} (tol {TOL_BF16:.2e})   "
              f"vs bf16(fp32 run) {exact}{'' if good else '   <-- BAD'}")
    return ok


def same_bits(a, b):
    return np.array_equal(np.asarray(a, np.float32).view(np.uint32),
                          np.asarray(b, np.float32).view(np.uint32))


def matches(got, races, want):
    """Whether the run `got` (a Gmem, with its races) holds each array of `want` (name -> values)
    bit for bit, wrote each element of them exactly once, and had no race and no misaligned
    access: (same, once, all of it)."""
    same = all(same_bits(got.a[k], v) for k, v in want.items())
    once = all((got.wcount[k] == 1).all() for k in want)
    return same, once, same and once and not races and not got.misaligned


def bf16_attention_out(g, qkv, dout, B, T, C, NH):
    """MIXSIM_BF16_ATTENTION_OUT: the forward with a bf16 out (out_bf16) beside the fp32 run g,
    and the backward from a bf16 out and dout (the launcher passes the bf16 dout as dout16 and a
    null fp32 dout; the dq kernel reads out through a bf16 pointer), with an fp32 and a bf16
    dqkv. Wants: out bit for bit g's out rounded to nearest even and lse unchanged; the backward
    bit for bit the default path's on the same values held in fp32 (D = dout . out summed from the
    same widened values in the same order; dout16 = the rounding of a value bf16 holds = itself),
    dvec too; every element written once, no races, no misaligned access, no load through a
    pointer of the wrong type. Prints its lines; returns whether all held."""
    t = time.time()
    ga, races = kernels.attention_forward(qkv, B, T, C, NH, out_bf16=True)
    out16, lse = ga.a["out"], ga.a["lse"]
    fwd_same, once, ok = matches(ga, races, {"out": ptx.bf16(g.a["out"]), "lse": g.a["lse"]})
    print(f"   bf16 attention out [{time.time() - t:.1f}s]: forward "
          f"{'out = bf16(fp32 out), lse the same' if fwd_same else 'DIFFERS'}, "
          f"{'every element once' if once else 'write counts wrong'}, races={len(races)} "
          f"misaligned={len(ga.misaligned)}{'' if ok else '   <-- BAD'}")
    d16 = ptx.bf16(np.asarray(dout, np.float32))
    for Out in ("float", "bf16"):
        gb, races_b = kernels.attention_backward(d16, qkv, out16, lse, B, T, C, NH, Out=Out,
                                                 bf16_att_out=True)
        gc, races_c = kernels.attention_backward(d16, qkv, out16, lse, B, T, C, NH, Out=Out)
        same, once, good = matches(gb, races_b, {k: gc.a[k] for k in ("dqkv", "dvec")})
        ok &= good
        print(f"     backward, {Out} dqkv: "
              f"{'bit-identical to the fp32 path on the same values' if same else 'DIFFERS'}, "
              f"{'every element once' if once else 'write counts wrong'}, races={len(races_b)} "
              f"misaligned={len(gb.misaligned)}{'' if good else '   <-- BAD'}")
        for r in races + races_b:
            print("   ", r)
    return ok


def wgmma_note(name, run, races, same, once):
    """The wgmma checks' note on one run (a Gmem and its races), its races printed."""
    for r in races[:5]:
        print("   ", r)
    return (f"{name} {'same' if same else 'DIFFERS'}{'' if once else ' (write counts wrong)'}"
            f"{'' if not races and not run.misaligned else ' (races or misaligned)'}")


def wgmma_forward(g, qkv, B, T, C, NH):
    """MIXSIM_ATTENTION_WGMMA (head sizes 64 and 128): the forward on wgmma (wgmma.py), beside the
    mma.sync run g, on the default and the heavy-first grid and with a bf16 out. The emulated
    products sum each 16-term step in float64 and round once, as the mma emulation does, so out
    and lse must be g's bit for bit: what differs is where operands come from (the swizzled
    tiles read through descriptors, the D fragments), which a wrong index shows. Also: every
    element written once, no race (the async proxy's included), no misaligned access."""
    t = time.time()
    ok, notes = True, []
    for hf, out_bf16 in ((False, False), (True, False), (False, True)):
        gw, races = wgmma.attention_forward(qkv, B, T, C, NH, out_bf16=out_bf16, heavy_first=hf)
        want_out = ptx.bf16(g.a["out"]) if out_bf16 else g.a["out"]
        same, once, good = matches(gw, races, {"out": want_out, "lse": g.a["lse"]})
        ok &= good
        what = ("heavy-first grid" if hf else "bf16 out" if out_bf16 else "default grid")
        notes.append(wgmma_note(what, gw, races, same, once))
    print(f"   wgmma forward [{time.time() - t:.1f}s]: {', '.join(notes)} as mma.sync's"
          f"{'' if ok else '   <-- BAD'}")
    return ok


def wgmma_backward(g, g2, qkv, dout, B, T, C, NH):
    """MIXSIM_ATTENTION_WGMMA_BACKWARD (head sizes 64 and 128): the backward's two kernels on
    wgmma (wgmma.py) from g's out and lse, beside the mma.sync backward g2: dqkv and dvec bit for
    bit (fp32 dqkv on both grids, a bf16 dqkv, and a bf16 out and dout against the mma.sync path
    on the same values), every element once, no race, no misaligned access."""
    t = time.time()
    ok, notes = True, []
    out, lse = g.a["out"], g.a["lse"]
    d16 = ptx.bf16(np.asarray(dout, np.float32))
    o16 = ptx.bf16(out)
    runs = (("default grid", dict(), g2, (dout, out)),
            ("heavy-first grid", dict(heavy_first=True), g2, (dout, out)),
            ("bf16 dqkv", dict(Out="bf16"), None, (dout, out)),
            ("bf16 out and dout", dict(bf16_att_out=True), None, (d16, o16)))
    for name, kw, want, (dd, oo) in runs:
        if want is None:
            want, _ = kernels.attention_backward(dd, qkv, oo, lse, B, T, C, NH, **kw)
        gw, races = wgmma.attention_backward(dd, qkv, oo, lse, B, T, C, NH, **kw)
        same, once, good = matches(gw, races, {k: want.a[k] for k in ("dqkv", "dvec")})
        ok &= good
        notes.append(wgmma_note(name, gw, races, same, once))
    print(f"   wgmma backward [{time.time() - t:.1f}s]: {', '.join(notes)} as mma.sync's"
          f"{'' if ok else '   <-- BAD'}")
    return ok


def heavy_first(g, g2, qkv, dout, B, T, C, NH):
    """MIXSIM_ATTENTION_HEAVY_FIRST: the grid (NH, B, row blocks), each block's place read from
    it by place_of. Wants the forward (and the wide forward, where it runs) and the backward (fp32
    dqkv) bit for bit the default grid's g and g2, every element written once, no races, no
    misaligned access. Prints its line; returns whether all held."""
    t = time.time()
    ok = True
    notes = []
    for wide in ((False, True) if C // NH <= 64 else (False,)):
        gf, races = kernels.attention_forward(qkv, B, T, C, NH, wide=wide, heavy_first=True)
        good = matches(gf, races, {k: g.a[k] for k in ("out", "lse")})[2]
        ok &= good
        notes.append(f"{'wide ' if wide else ''}forward {'same' if good else 'DIFFERS'}")
    gb, races = kernels.attention_backward(dout, qkv, g.a["out"], g.a["lse"], B, T, C, NH,
                                           heavy_first=True)
    good = matches(gb, races, {k: g2.a[k] for k in ("dqkv", "dvec")})[2]
    ok &= good
    notes.append(f"backward {'same' if good else 'DIFFERS'}")
    print(f"   heavy-first grid [{time.time() - t:.1f}s]: {', '.join(notes)} as the default grid's,"
          f" bit for bit{'' if ok else '   <-- BAD'}")
    return ok


# The fused dq (MIXSIM_ATTENTION_FUSED_DQ): the blocks of the fused kernel run together
# (kernels.launch_concurrent), with at most `resident` alive (None: all). Every fused run holds
# the same bits whatever the interleaving; the resident sweep (1, 2, 3 and all, both grids) runs
# on FUSED_SWEEP only (shapes with several heads and blocks that wait: T 150 with three query
# tiles, and B 3 NH 2), the other shapes with all blocks resident.
FUSED_SWEEP = (SHAPES[0], SHAPES[6])
U32 = 2.0 ** -24  # the unit roundoff of fp32
SWEPT = ", resident 1, 2, 3 and all; blocks started in launch, reverse and shuffled order"


def gamma(m):
    return m * U32 / (1 - m * U32)


def fused_dq(g, g2, qkv, dout, R64, RB, B, T, C, NH, sweep):
    """MIXSIM_ATTENTION_FUSED_DQ: row_dots_kernel, then backward_dkdv_kernel<HS, Out, true> with
    its blocks alive together (no dq kernel), beside the default backward g2. Wants, of every
    run (fp32 and bf16 dqkv, both grids, and with sweep resident 1, 2, 3 and all, the blocks
    started in launch order, and 1 resident in reverse, 2 in shuffled order): no race
    (shared memory, or fused.acc read or overwritten out of the semaphores' order, or never
    written), no misaligned access, every dqkv and dvec element written once, and the same bits
    as the first run of its dqkv type (the protocol fixes dq's sum order whatever the
    interleaving). Of the fp32 run:
    - dq, dk, dv within the default backward's bounds against float64 and cpu-bf16;
    - D (dvec) bit for bit the dq kernel's (row_dots_kernel sums as row_terms does);
    - dq bit for bit ref.fused_dq_order's (numpy: over key blocks 0..i in order, part_b =
      bf16(dS) K in mma slices, acc = part_b + acc);
    - dq, dk, dv against the default path's: the same exact terms summed in another order (dk
      and dv over the query tiles in reverse, dq per key block), each order a recursive sum of
      at most m = 4 (query or key tiles) terms rounded once each (one per mma slice of 16, or
      per add), so |fused - default| <= scale 2 gamma_m sum |terms| + 2^-24 (|fused| +
      |default|) per element (the second term: the two roundings of scale times the sums).
    The bf16 runs: bit for bit the fp32 run rounded to nearest even (as the default path's).
    Prints its lines; returns whether all held."""
    t = time.time()
    HS = C // NH
    scale = np.float32(1.0) / np.sqrt(np.float32(HS))
    out, lse = g.a["out"], g.a["lse"]
    runs = [(Out, hf, None, "launch") for Out in ("float", "bf16") for hf in (False, True)]
    if sweep:  # blocks started in launch order, and in others (the tickets make any order safe)
        runs += [("float", hf, r, "launch") for hf in (False, True) for r in (1, 2, 3)]
        runs += [("float", hf, r, d) for hf in (False, True)
                 for r, d in ((1, "reverse"), (2, "shuffled"))]
    ok = True
    first = {}
    bad_runs = []
    waits = held = 0
    for Out, hf, resident, dispatch in runs:
        gf, races = kernels.attention_backward(dout, qkv, out, lse, B, T, C, NH, Out=Out,
                                               heavy_first=hf, fused_dq=True, resident=resident,
                                               dispatch=dispatch)
        name = (f"{Out} dqkv, {'heavy-first' if hf else 'default'} grid, resident "
                f"{'all' if resident is None else resident}, started in {dispatch} order")
        w = getattr(gf, "waits", (0, 0))
        waits, held = waits + w[0], held + w[1]
        first.setdefault(Out, gf)  # the first run of its type: the same as itself
        same, once, good = matches(gf, races, {k: first[Out].a[k] for k in ("dqkv", "dvec")})
        if not good:
            ok = False
            bad_runs.append(f"{name}: races={len(races)} misaligned={len(gf.misaligned)}"
                            f"{'' if once else ', write counts wrong'}"
                            f"{'' if same else ', bits differ from the first run'}")
            for r in races[:5]:
                bad_runs.append("  " + r)
            for m in gf.misaligned[:5]:
                bad_runs.append("  " + m)
    f32, f16 = first["float"], first["bf16"]
    print(f"   fused dq [{time.time() - t:.1f}s]: {len(runs)} runs (fp32 and bf16 dqkv, both "
          f"grids{SWEPT if sweep else ', all blocks resident'}): "
          f"{'no races, no misaligned access, every element once, the same bits in every run' if not bad_runs else 'BAD RUNS'}"
          f" ({waits} waits, {held} turns held at one){'' if ok else '   <-- BAD'}")
    for line in bad_runs:
        print("     " + line)
    good = same_bits(f32.a["dvec"], g2.a["dvec"])
    ok &= good
    print(f"     D (row_dots_kernel) {'bit for bit' if good else 'DIFFERS from'} the dq kernel's"
          f"{'' if good else '   <-- BAD'}")
    good = same_bits(ptx.bf16(f32.a["dqkv"]), f16.a["dqkv"]) and same_bits(f16.a["dvec"], f32.a["dvec"])
    ok &= good
    print(f"     Out = bf16 run: {'bit for bit' if good else 'DIFFERS from'} the fp32 run rounded "
          f"to nearest even{'' if good else '   <-- BAD'}")
    dq_ref, absum = ref.fused_dq_order(qkv, dout, lse, f32.a["dvec"], B, T, C, NH)
    E = parts(f32.a["dqkv"], B, T, C)
    D = parts(g2.a["dqkv"], B, T, C)
    m = 4 * (-(-T // kernels.kRows))
    for n, e, d, a, b in zip(("dq", "dk", "dv"), E, D, R64, RB):
        err64, errcpu = rel(e, a), rel(e, b)
        if np.linalg.norm(a) < 1e-6 * np.linalg.norm(dout):  # degenerate (T=1: dS = 0), as above
            err64 = 0.0
        good = err64 < TOL_F64 and errcpu < TOL_CPU  # the default backward's bounds
        f = np.float64(1.0 if n == "dv" else scale)
        bound = f * 2 * gamma(m + 1) * absum[n] + U32 * (np.abs(e) + np.abs(d))
        diff = np.abs(e.astype(np.float64) - d)
        within = bool((diff <= bound).all())
        worst = float((diff / np.where(bound > 0, bound, 1)).max())
        differ = int((e != d).sum())
        good &= within
        line = (f"     {n:4s} rel L2 vs f64 {err64:.2e}   vs bf16-cpu {errcpu:.2e}   vs default "
                f"path {differ} of {e.size} differ, max |diff| / bound {worst:.2f}")
        if n == "dq":
            exact = same_bits(e, dq_ref.reshape(B, T, C))
            good &= exact
            line += (f"   vs key-block order ref "
                     f"{'exact' if exact else str(int((e != dq_ref).sum())) + ' differ'}")
        ok &= good
        print(line + ("" if good else "   <-- BAD"))
    return ok


def main(shapes, sweep=FUSED_SWEEP, fused_only=False):
    """sweep: the shapes whose fused dq runs the resident sweep (run_source: none). fused_only:
    of the checks beside the default path's errors, the fused dq's only (mutate6.py: its mutants
    edit the fused path alone)."""
    assert ptx._self_test()
    assert wgmma._self_test()
    ok = True
    for (B, T, C, NH) in shapes:
        t = time.time()
        rng = np.random.default_rng(B * 1000 + T * 10 + NH)
        qkv = rng.standard_normal(B * T * 3 * C).astype(np.float32)
        dout = rng.standard_normal(B * T * C).astype(np.float32)
        g, races = kernels.attention_forward(qkv, B, T, C, NH)
        out, lse = g.a["out"], g.a["lse"]
        assert (g.wcount["out"] == 1).all() and (g.wcount["lse"] == 1).all(), "fwd write count"
        g2, races2 = kernels.attention_backward(dout, qkv, out, lse, B, T, C, NH)
        dqkv = g2.a["dqkv"]
        assert (g2.wcount["dqkv"] == 1).all() and (g2.wcount["dvec"] == 1).all(), "bwd write count"
        mis = g.misaligned + g2.misaligned
        if C // NH <= 64 and not fused_only:  # the wide forward (MIXSIM_TC_WIDE_FORWARD): the same
            gw, racesw = kernels.attention_forward(qkv, B, T, C, NH, wide=True)
            same, once, good = matches(gw, racesw, {k: g.a[k] for k in ("out", "lse")})
            ok &= good
            print(f"   wide forward: {'bit-identical' if same else 'DIFFERS'}, "
                  f"{'every element once' if once else 'write counts wrong'}, "
                  f"races={len(racesw)} misaligned={len(gw.misaligned)}"
                  f"{'' if good else '   <-- BAD'}")
            for r in racesw:
                print("   ", r)
        o64, l64, d64 = ref.f64_forward_backward(qkv, dout, B, T, C, NH)
        ob, lb = ref.bf16_cpu_forward(qkv, B, T, C, NH)
        db = ref.bf16_cpu_backward(dout, qkv, ob, lb, B, T, C, NH)
        E = parts(dqkv, B, T, C)
        R64 = parts(d64, B, T, C)
        RB = parts(db, B, T, C)
        row = {"out": (rel(out, o64), rel(out, ob)), "lse": (rel(lse, l64), rel(lse, lb))}
        for n, e, a, b in zip(("dq", "dk", "dv"), E, R64, RB):
            row[n] = (rel(e, a), rel(e, b))
        HS = C // NH
        print(f"(B,T,C,NH)=({B},{T},{C},{NH}) HS={HS}  [{time.time() - t:.1f}s]  races={len(races) + len(races2)} misaligned={len(mis)}")
        for r in races + races2:
            print("   ", r)
        for m in mis[:5]:
            print("   ", m)
        for n, e, a in zip(("dq", "dk", "dv"), E, R64):
            if np.linalg.norm(a) < 1e-6 * np.linalg.norm(dout):  # degenerate (T=1: dS = 0)
                row[n] = (0.0, row[n][1])
                print(f"   {n}: f64 ref ~0 (|ref|={np.linalg.norm(a):.1e}), |emulated|={np.linalg.norm(e):.1e}")
        for k, (a, b) in row.items():
            # vs bf16-cpu: fp32 sums in another order, up to 1.2e-4 measured; the subtlest
            # wrong roundings are 1.4e-3 (l summed from the bf16 p) to 2e-3 (the old two-pass P)
            flag = "" if (a < TOL_F64 and b < TOL_CPU) else "   <-- BAD"
            ok &= flag == ""
            print(f"   {k:4s} rel L2 vs f64 {a:.2e}   vs bf16-cpu {b:.2e}{flag}")
        if not fused_only:
            ok &= bf16_dqkv(g2, races2, dout, qkv, out, lse, d64, B, T, C, NH)
            ok &= bf16_attention_out(g, qkv, dout, B, T, C, NH)
            ok &= heavy_first(g, g2, qkv, dout, B, T, C, NH)
            if C // NH in (64, 128):
                ok &= wgmma_forward(g, qkv, B, T, C, NH)
                ok &= wgmma_backward(g, g2, qkv, dout, B, T, C, NH)
        ok &= fused_dq(g, g2, qkv, dout, R64, RB, B, T, C, NH, (B, T, C, NH) in sweep)
    print("ALL OK" if ok else "MISMATCH")


def mutant(source, name, edits):
    """source with each (old, new) of edits replaced, each old found exactly once: an edit of a
    mutation script that no longer matches kernels.py is an error, not a mutant that tests nothing."""
    for old, new in edits:
        assert source.count(old) == 1, (name, old, source.count(old))
        source = source.replace(old, new)
    return source


def exception_verdict(error):
    """A mutation script's verdict on a mutant whose emulation raised `error`."""
    return f"caught (exception: {type(error).__name__}: {str(error)[:70]})"


def run_source(source, shape=SHAPES[0], sweep=False, fused_only=False):
    """Runs kernels.py as edited into `source` (a mutant) on one shape: (printed output, None), or
    (None, the exception) when the emulation stopped. sweep: the fused dq's resident sweep too
    (by default the fused dq runs with all blocks resident only); fused_only: main's."""
    global kernels
    module = types.ModuleType("kernels")
    exec(compile(source, "kernels_mut", "exec"), module.__dict__)
    saved, kernels = kernels, module
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            main([shape], [shape] if sweep else [], fused_only)
        return buf.getvalue(), None
    except Exception as e:  # a mutant may break the emulation itself: that counts as caught
        return None, e
    finally:
        kernels = saved


if __name__ == "__main__":
    sel = SHAPES if len(sys.argv) < 2 else [SHAPES[int(i)] for i in sys.argv[1:]]
    main(sel)
