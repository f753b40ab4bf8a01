"""Warp/lane-level emulation of namespace mma_sync in kernels/attention_tc.cu.

Each kernel is a Python generator per warp; `yield` = __syncthreads().  The block scheduler runs
the four warps of a block round-robin from barrier to barrier (warps of one barrier interval are
independent except through races, which Smem detects by epoch).  Per-lane values are numpy
arrays over the 32 lanes (last axis); index arithmetic is copied from the .cu lane by lane.
"""
import numpy as np

from ptx import (LANES, Smem, SharedMemoryError, bf16, exp2f, f32, fmaf, ldmatrix_x4,
                 ldmatrix_x4_trans, log2f, mma, pack, shfl_xor)

kRows = 64
kWarps = 4
kWarpSize = 32
kThreads = kWarps * kWarpSize
kLog2e = np.float32(1.4426950408889634)
kLn2 = np.float32(0.6931471805599453)
INF = np.float32(np.inf)


def tile_ld(HS):
    return HS + 8


class Gmem:
    """Global float arrays; element-indexed; alignment checked for vector accesses assuming the
    allocation itself is 16-byte aligned (cudaMalloc).  Write counts tracked per element."""

    def __init__(self, esize=None, **arrays):
        self.a = {k: np.asarray(v, dtype=np.float32).ravel().copy() for k, v in arrays.items()}
        self.esize = esize or {}  # bytes per element where not 4 (bf16 arrays hold bf16 values)
        self.wcount = {k: np.zeros(v.size, dtype=np.int64) for k, v in self.a.items()}
        self.misaligned = []

    def load(self, name, idx, width=1):
        idx = np.asarray(idx, dtype=np.int64)
        if width > 1 and np.any(idx % width):
            self.misaligned.append(f"{name}: {width * self.esize.get(name, 4)}-byte load at element {idx[idx % width != 0][:4]}")
        arr = self.a[name]
        if idx.size and (idx.min() < 0 or idx.max() + width > arr.size):
            raise IndexError(f"global read out of range in {name}")
        if width == 1:
            return arr[idx]
        return arr[idx[..., None] + np.arange(width)]

    def store(self, name, idx, vals, width=1):
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size == 0:
            return
        if width > 1 and np.any(idx % width):
            self.misaligned.append(f"{name}: {width * 4}-byte store at element {idx[idx % width != 0][:4]}")
        arr = self.a[name]
        if idx.min() < 0 or idx.max() + width > arr.size:
            raise IndexError(f"global write out of range in {name}")
        if width == 1:
            arr[idx] = vals
            np.add.at(self.wcount[name], idx, 1)
        else:
            full = idx[..., None] + np.arange(width)
            arr[full] = vals
            np.add.at(self.wcount[name], full.ravel(), 1)


class Ctx:
    def __init__(self, block, grid, warp, smem, gmem):
        self.blockIdx = block  # (x, y, z)
        self.gridDim = grid
        self.warp = warp
        self.lane = LANES
        self.threadIdx = warp * kWarpSize + LANES
        self.smem = smem
        self.g = gmem


class Head:
    pass


def mask(full, valid):
    """for_each_element: in a tile the kernel calls `full` (warp-uniform) it takes every element
    as valid without computing the mask; check that the predicate was right."""
    if full:
        if not np.all(valid):
            raise AssertionError("a tile taken as full has a masked element")
        return np.ones_like(valid, dtype=bool)
    return valid


def head_of(ctx, HS, T, C, NH):
    # const std::size_t b = blockIdx.z, h = blockIdx.y, stride = 3 * std::size_t(C);
    # return {qkv + b * T * stride + h * HS, stride, b * T * C + h * HS, (b * NH + h) * T,
    #         b * T * stride + h * HS};
    b, h, stride = ctx.blockIdx[2], ctx.blockIdx[1], 3 * C
    hd = Head()
    hd.q = b * T * stride + h * HS  # offset into "qkv"
    hd.qkv_stride = stride
    hd.row_offset = b * T * C + h * HS
    hd.lse_offset = (b * NH + h) * T
    hd.dqkv_offset = b * T * stride + h * HS
    return hd


def load_tile(ctx, HS, tile, src_name, src, stride, first, T):
    """The sources are the launchers' bf16 copies (to_bf16 of qkv and dout):
       for (idx = threadIdx.x; idx < kRows * kOcts; idx += kThreads) {
         r = idx / kOcts, d = idx % kOcts * 8, row = first + r;
         v = row < T ? *(uint4*)(src + row * stride + d) : 0;   // 8 bf16
         *(uint4*)(tile + r * tile_ld + d) = v; }"""
    kOcts = HS // 8
    LD = tile_ld(HS)
    idx = ctx.threadIdx.copy()
    while True:
        act = idx < kRows * kOcts
        if not act.any():
            break
        i = idx[act]
        r = i // kOcts
        d = i % kOcts * 8
        row = first + r
        v = np.zeros((i.size, 8), dtype=np.float32)
        ok = row < T
        if ok.any():
            v[ok] = ctx.g.load(src_name, src + row[ok] * stride + d[ok], width=8)
        dst = tile + r * LD + d
        if np.any(dst % 8):
            raise SharedMemoryError("uint4 store misaligned")
        ctx.smem.write_bf(np.concatenate([dst + e for e in range(8)]),
                          np.concatenate([v[:, e] for e in range(8)]), ctx.warp)
        idx = idx + kThreads


def scores(ctx, HS, a, b):
    LD = tile_ld(HS)
    lane = ctx.lane
    s = np.zeros((8, 4, 32), dtype=np.float32)
    for k in range(0, HS, 16):
        fa = ldmatrix_x4(ctx.smem, a + (lane % 16) * LD + k + lane // 16 * 8, ctx.warp)
        for n in range(0, 8, 2):
            fb = ldmatrix_x4(ctx.smem, b + (n * 8 + lane // 16 * 8 + lane % 8) * LD + k + lane // 8 % 2 * 8,
                             ctx.warp)
            mma(s[n], fa, fb[0], fb[1])
            mma(s[n + 1], fa, fb[2], fb[3])
    return s


def to_fragments(s):
    a = np.empty((4, 4, 2, 32), dtype=np.float32)
    for k in range(4):
        a[k][0] = pack(s[2 * k][0], s[2 * k][1])
        a[k][1] = pack(s[2 * k][2], s[2 * k][3])
        a[k][2] = pack(s[2 * k + 1][0], s[2 * k + 1][1])
        a[k][3] = pack(s[2 * k + 1][2], s[2 * k + 1][3])
    return a


def accumulate(ctx, HS, acc, a, m):
    LD = tile_ld(HS)
    lane = ctx.lane
    for k in range(4):
        for n in range(0, HS // 8, 2):
            fb = ldmatrix_x4_trans(ctx.smem,
                                   m + (k * 16 + lane // 8 % 2 * 8 + lane % 8) * LD + n * 8 + lane // 16 * 8,
                                   ctx.warp)
            mma(acc[n], a[k], fb[0], fb[1])
            mma(acc[n + 1], a[k], fb[2], fb[3])


def zero(HS):
    return np.zeros((HS // 8, 4, 32), dtype=np.float32)


def store_rows(ctx, HS, dst_name, dst, stride, first, T, acc, factor):
    lane = ctx.lane
    factor = np.float32(factor)
    for half in range(2):
        row = first + lane // 4 + 8 * half
        ok = row < T  # if (row >= T) continue;
        at = dst + row * stride + lane % 4 * 2
        for n in range(HS // 8):
            vals = np.stack([factor * acc[n][2 * half], factor * acc[n][2 * half + 1]], axis=-1)
            ctx.g.store(dst_name, (at + n * 8)[ok], vals[ok], width=2)


def row_of(lane, v):
    return lane // 4 + (v // 2) * 8


def column_of(lane, n, v):
    return n * 8 + lane % 4 * 2 + v % 2


def warp_sum(v):
    for offset in (16, 8, 4, 2, 1):
        v = v + shfl_xor(v, offset)
    return v


# ------------------------------------------------------------------------------------------
def forward_kernel(ctx, HS, T, C, NH, scale, has_lse=True):
    LD = tile_ld(HS)
    qs = 0
    ks = qs + kRows * LD
    vs = ks + kRows * LD
    warp, lane = ctx.warp, ctx.lane
    head = head_of(ctx, HS, T, C, NH)
    i0 = (ctx.gridDim[0] - 1 - ctx.blockIdx[0]) * kRows
    iw = i0 + warp * 16
    last = min(T, i0 + kRows) - 1
    live = iw < T
    sl = np.float32(scale) * kLog2e
    qw = qs + warp * 16 * LD
    load_tile(ctx, HS, qs, "qkv16", head.q, head.qkv_stride, i0, T)

    m = [np.full(32, -INF, np.float32), np.full(32, -INF, np.float32)]
    l = [np.zeros(32, np.float32), np.zeros(32, np.float32)]
    for j0 in range(0, last + 1, kRows):
        yield  # __syncthreads
        load_tile(ctx, HS, ks, "qkv16", head.q + C, head.qkv_stride, j0, T)
        yield
        if not live:
            continue
        s = scores(ctx, HS, qw, ks)
        tile_max = [np.full(32, -INF, np.float32), np.full(32, -INF, np.float32)]
        full = j0 < i0 and iw + 16 <= T
        for n in range(8):
            for v in range(4):
                i = iw + row_of(lane, v)
                j = j0 + column_of(lane, n, v)
                s[n][v] = np.where(mask(full, (i < T) & (j <= i)), sl * s[n][v], -INF)
                tile_max[v // 2] = np.fmax(tile_max[v // 2], s[n][v])
        for h in range(2):
            tile_max[h] = np.fmax(tile_max[h], shfl_xor(tile_max[h], 1))
            tile_max[h] = np.fmax(tile_max[h], shfl_xor(tile_max[h], 2))
            m_new = np.fmax(m[h], tile_max[h])
            sm = np.zeros(32, np.float32)
            live_row = m_new != -INF
            with np.errstate(invalid="ignore"):
                for n in range(8):
                    term = exp2f(s[n][2 * h] - m_new) + exp2f(s[n][2 * h + 1] - m_new)
                    sm = np.where(live_row, sm + term, sm)
            sm = sm + shfl_xor(sm, 1)
            sm = sm + shfl_xor(sm, 2)
            with np.errstate(invalid="ignore"):
                l[h] = np.where(m_new == -INF, np.float32(0), fmaf(l[h], exp2f(m[h] - m_new), sm))
            m[h] = m_new
    lse2 = [None, None]
    for h in range(2):
        with np.errstate(invalid="ignore", divide="ignore"):
            lse2[h] = (m[h] + log2f(l[h])).astype(np.float32)
        i = iw + lane // 4 + 8 * h
        w = (lane % 4 == 0) & (i < T)
        if live and has_lse:
            ctx.g.store("lse", (head.lse_offset + i)[w], (lse2[h] * kLn2)[w])

    acc = zero(HS)
    for j0 in range(0, last + 1, kRows):
        yield
        load_tile(ctx, HS, ks, "qkv16", head.q + C, head.qkv_stride, j0, T)
        load_tile(ctx, HS, vs, "qkv16", head.q + 2 * C, head.qkv_stride, j0, T)
        yield
        if not live:
            continue
        s = scores(ctx, HS, qw, ks)
        full = j0 < i0 and iw + 16 <= T
        for n in range(8):
            for v in range(4):
                i = iw + row_of(lane, v)
                j = j0 + column_of(lane, n, v)
                with np.errstate(invalid="ignore"):
                    e = exp2f(fmaf(sl, s[n][v], -lse2[v // 2]))
                s[n][v] = np.where(mask(full, (i < T) & (j <= i)), e, np.float32(0))
        p = to_fragments(s)
        accumulate(ctx, HS, acc, p, vs)
    if live:
        store_rows(ctx, HS, "out", head.row_offset, C, iw, T, acc, 1.0)


def backward_dq_kernel(ctx, HS, T, C, NH, scale):
    LD = tile_ld(HS)
    qs = 0
    gs = qs + kRows * LD
    ks = gs + kRows * LD
    vs = ks + kRows * LD
    row_lse = 0  # float region (after vs + kRows*LD)
    row_d = row_lse + kRows
    warp, lane = ctx.warp, ctx.lane
    head = head_of(ctx, HS, T, C, NH)
    i0 = (ctx.gridDim[0] - 1 - ctx.blockIdx[0]) * kRows
    iw = i0 + warp * 16
    last = min(T, i0 + kRows) - 1
    live = iw < T
    sl = np.float32(scale) * kLog2e
    load_tile(ctx, HS, qs, "qkv16", head.q, head.qkv_stride, i0, T)
    load_tile(ctx, HS, gs, "dout16", head.row_offset, C, i0, T)
    for rr in range(16):
        row = iw + rr
        at = head.row_offset + row * C
        part = np.zeros(32, np.float32)
        if row < T:
            d = lane.copy()
            while (d < HS).any():
                act = d < HS
                a = np.zeros(32, np.float32)
                b = np.zeros(32, np.float32)
                a[act] = ctx.g.load("dout", at + d[act])
                b[act] = ctx.g.load("out", at + d[act])
                part = np.where(act, fmaf(a, b, part), part)
                d = d + kWarpSize
        part = warp_sum(part)
        # if (lane == 0)
        ctx.smem.write_f(np.array([row_d + warp * 16 + rr]), part[:1], warp)
        lv = ctx.g.load("lse", np.array([head.lse_offset + row]))[0] * kLog2e if row < T else np.float32(0)
        ctx.smem.write_f(np.array([row_lse + warp * 16 + rr]), np.array([lv], np.float32), warp)
        if row < T:
            ctx.g.store("dvec", np.array([head.lse_offset + row]), part[:1])
    # __syncwarp()
    li = [None, None]
    di = [None, None]
    for h in range(2):
        li[h] = ctx.smem.read_f(row_lse + warp * 16 + lane // 4 + 8 * h, warp)
        di[h] = ctx.smem.read_f(row_d + warp * 16 + lane // 4 + 8 * h, warp)

    dq = zero(HS)
    qw = qs + warp * 16 * LD
    gw = gs + warp * 16 * LD
    for j0 in range(0, last + 1, kRows):
        yield
        load_tile(ctx, HS, ks, "qkv16", head.q + C, head.qkv_stride, j0, T)
        load_tile(ctx, HS, vs, "qkv16", head.q + 2 * C, head.qkv_stride, j0, T)
        yield
        if not live:
            continue
        s = scores(ctx, HS, qw, ks)
        dp = scores(ctx, HS, gw, vs)
        full = j0 < i0 and iw + 16 <= T
        for n in range(8):
            for v in range(4):
                i = iw + row_of(lane, v)
                j = j0 + column_of(lane, n, v)
                with np.errstate(invalid="ignore", over="ignore"):
                    val = exp2f(fmaf(sl, s[n][v], -li[v // 2])) * (dp[n][v] - di[v // 2])
                s[n][v] = np.where(mask(full, (i < T) & (j <= i)), val, np.float32(0))
        ds = to_fragments(s)
        accumulate(ctx, HS, dq, ds, ks)
    if live:
        store_rows(ctx, HS, "dqkv", head.dqkv_offset, head.qkv_stride, iw, T, dq, scale)


def backward_dkdv_kernel(ctx, HS, T, C, NH, scale):
    LD = tile_ld(HS)
    ks = 0
    vs = ks + kRows * LD
    qs = vs + kRows * LD
    gs = qs + kRows * LD
    tile_lse = 0
    tile_d = tile_lse + kRows
    warp, lane = ctx.warp, ctx.lane
    head = head_of(ctx, HS, T, C, NH)
    j0 = ctx.blockIdx[0] * kRows
    jw = j0 + warp * 16
    live = jw < T
    sl = np.float32(scale) * kLog2e
    load_tile(ctx, HS, ks, "qkv16", head.q + C, head.qkv_stride, j0, T)
    load_tile(ctx, HS, vs, "qkv16", head.q + 2 * C, head.qkv_stride, j0, T)

    dk = zero(HS)
    dv = zero(HS)
    kw = ks + warp * 16 * LD
    vw = vs + warp * 16 * LD
    for t0 in range(j0, T, kRows):
        yield
        load_tile(ctx, HS, qs, "qkv16", head.q, head.qkv_stride, t0, T)
        load_tile(ctx, HS, gs, "dout16", head.row_offset, C, t0, T)
        tid = ctx.threadIdx
        w = tid < kRows
        if w.any():
            row = t0 + tid[w]
            okr = row < T
            lv = np.zeros(row.size, np.float32)
            dvv = np.zeros(row.size, np.float32)
            lv[okr] = ctx.g.load("lse", head.lse_offset + row[okr]) * kLog2e
            dvv[okr] = ctx.g.load("dvec", head.lse_offset + row[okr])
            ctx.smem.write_f(tile_lse + tid[w], lv, warp)
            ctx.smem.write_f(tile_d + tid[w], dvv, warp)
        yield
        if not live:
            continue
        s = scores(ctx, HS, kw, qs)
        dp = scores(ctx, HS, vw, gs)
        full = t0 > j0 and t0 + kRows <= T
        for n in range(8):
            for v in range(4):
                col = column_of(lane, n, v)
                i = t0 + col
                j = jw + row_of(lane, v)
                tl = ctx.smem.read_f(tile_lse + col, warp)
                with np.errstate(invalid="ignore", over="ignore"):
                    e = exp2f(fmaf(sl, s[n][v], -tl))
                p = np.where(mask(full, (i < T) & (i >= j)), e, np.float32(0))
                s[n][v] = p
                dp[n][v] = p * (dp[n][v] - ctx.smem.read_f(tile_d + col, warp))
        pt = to_fragments(s)
        dst = to_fragments(dp)
        accumulate(ctx, HS, dv, pt, gs)
        accumulate(ctx, HS, dk, dst, qs)
    if live:
        rows = head.dqkv_offset
        store_rows(ctx, HS, "dqkv", rows + C, head.qkv_stride, jw, T, dk, scale)
        store_rows(ctx, HS, "dqkv", rows + 2 * C, head.qkv_stride, jw, T, dv, 1.0)


# ------------------------------------------------------------------------------------------
def launch(kernel, grid, n_bf16, n_f32, f32_byte_base, gmem, *args, **kw):
    """Runs kernel over the grid; returns the list of races found."""
    races = []
    for bz in range(grid[2]):
        for by in range(grid[1]):
            for bx in range(grid[0]):
                smem = Smem(n_bf16, n_f32, f32_byte_base)
                gens = [kernel(Ctx((bx, by, bz), grid, w, smem, gmem), *args, **kw)
                        for w in range(kWarps)]
                alive = [True] * kWarps
                while any(alive):
                    states = []
                    for w, g in enumerate(gens):
                        if not alive[w]:
                            states.append("done")
                            continue
                        try:
                            next(g)
                            states.append("barrier")
                        except StopIteration:
                            alive[w] = False
                            states.append("done")
                    if len(set(states)) != 1:
                        raise RuntimeError(f"barrier divergence in block {(bx, by, bz)}: {states}")
                    smem.epoch += 1
                races += [f"block {(bx, by, bz)}: {r}" for r in smem.races]
    return races


def smem_layout(kind, HS):
    LD = tile_ld(HS)
    tiles = {"fwd": 3, "bwd": 4}[kind]
    n_bf16 = tiles * kRows * LD
    n_f32 = 0 if kind == "fwd" else 2 * kRows
    return n_bf16, n_f32, 2 * n_bf16


def attention_forward(qkv, B, T, C, NH):
    HS = C // NH
    scale = np.float32(1.0) / np.sqrt(np.float32(HS))
    grid = ((T + kRows - 1) // kRows, NH, B)
    # the launcher's to_bf16 copy of qkv (round to nearest even), which the kernel reads
    g = Gmem(qkv16=bf16(np.asarray(qkv, dtype=np.float32)), out=np.full(B * T * C, np.nan),
             lse=np.full(B * NH * T, np.nan), esize={"qkv16": 2})
    races = launch(forward_kernel, grid, *smem_layout("fwd", HS), g, HS, T, C, NH, scale)
    return g, races


def attention_backward(dout, qkv, out, lse, B, T, C, NH):
    HS = C // NH
    scale = np.float32(1.0) / np.sqrt(np.float32(HS))
    grid = ((T + kRows - 1) // kRows, NH, B)
    # the launcher's to_bf16 copies of qkv and dout (D still reads the fp32 dout)
    g = Gmem(qkv16=bf16(np.asarray(qkv, dtype=np.float32)),
             dout16=bf16(np.asarray(dout, dtype=np.float32)), dout=dout, out=out, lse=lse,
             dqkv=np.full(B * T * 3 * C, np.nan), dvec=np.full(B * NH * T, np.nan),
             esize={"qkv16": 2, "dout16": 2})
    races = launch(backward_dq_kernel, grid, *smem_layout("bwd", HS), g, HS, T, C, NH, scale)
    races += launch(backward_dkdv_kernel, grid, *smem_layout("bwd", HS), g, HS, T, C, NH, scale)
    return g, races
