"""Warp/lane-level emulation of namespace mma_sync in kernels/attention_tc.cu.

Each kernel is a Python generator per warp; `yield` = __syncthreads().  The block scheduler runs
the four warps of a block round-robin from barrier to barrier (warps of one barrier interval are
independent except through races, which Smem detects by epoch).  Per-lane values are numpy
arrays over the 32 lanes (last axis); index arithmetic is copied from the .cu lane by lane.

cp.async (copy_async16 / copy_async4, zero-filled past T) is modelled as a shared-memory store at
its issue point, in the barrier interval that issues it: conservative for the race checker (a
stage refilled while another warp may still read it in the same interval is flagged).  Besides,
AsyncSmem keeps every copy pending until its warp has committed it (commit_copies) and waited
for it (wait_copies = cp.async.wait_group 0): reading a pending element, from any warp, is listed
as a "cp.async race" (a missing wait or commit); reading another warp's copy without a barrier
after its wait is a race as for any store.

The fused dq's kernel (backward_dkdv_kernel with fused_dq) has blocks that wait for each other
through semaphores in global memory: launch_concurrent runs its blocks together (a wait is a
token warp 0 yields before the barrier that follows it), and Visibility checks that each read
of fused.acc is ordered after the write it reads by the semaphores' release and acquire.
"""
import numpy as np

from ptx import (LANES, Smem, SharedMemoryError, bf16, exp2f, fmaf, ldmatrix_x4,
                 ldmatrix_x4_trans, log2f, mma, pack, shfl_xor)

kRows = 64
kWarps = 4
kWarpSize = 32
kThreads = kWarps * kWarpSize
kStages = 2  # tiles of the other side: the next one is copied while this one is used
kDsLd = kRows + 8  # the fused dq's dS^T in bf16, (64 keys, kDsLd): as tile_ld, 16-byte rows
kLog2e = np.float32(1.4426950408889634)
kLn2 = np.float32(0.6931471805599453)
INF = np.float32(np.inf)


def tile_ld(HS):
    return HS + 8


class Gmem:
    """Global float arrays; element-indexed; alignment checked for vector accesses assuming the
    allocation itself is 16-byte aligned (cudaMalloc).  Write counts tracked per element.
    An array named in esize with 2 bytes is bf16 memory: it holds float32 values that bf16
    represents exactly, and a store into it must say it stores 2-byte elements (a float2 store
    into a bf16 dqkv is a type confusion, not a rounding) and store values already rounded."""

    def __init__(self, esize=None, **arrays):
        self.a = {k: np.asarray(v, dtype=np.float32).ravel().copy() for k, v in arrays.items()}
        self.esize = esize or {}  # bytes per element where not 4 (bf16 arrays hold bf16 values)
        self.wcount = {k: np.zeros(v.size, dtype=np.int64) for k, v in self.a.items()}
        self.misaligned = []

    def load(self, name, idx, width=1, esize=None):
        """esize: where given, the bytes of the element type the kernel reads name as (a load
        through a pointer of the wrong type, e.g. a bf16 out read as float, is a TypeError)."""
        idx = np.asarray(idx, dtype=np.int64)
        if esize is not None and esize != self.esize.get(name, 4):
            raise TypeError(f"{name} read as {esize}-byte elements, whose elements have "
                            f"{self.esize.get(name, 4)} bytes")
        if width > 1 and np.any(idx % width):
            self.misaligned.append(f"{name}: {width * self.esize.get(name, 4)}-byte load at element {idx[idx % width != 0][:4]}")
        arr = self.a[name]
        if idx.size and (idx.min() < 0 or idx.max() + width > arr.size):
            raise IndexError(f"global read out of range in {name}")
        if width == 1:
            return arr[idx]
        return arr[idx[..., None] + np.arange(width)]

    def check(self, name, idx, width=1):
        """An address that is formed (and must be valid and aligned) but not necessarily read."""
        idx = np.asarray(idx, dtype=np.int64)
        if width > 1 and np.any(idx % width):
            self.misaligned.append(f"{name}: {width * self.esize.get(name, 4)}-byte address at element {idx[idx % width != 0][:4]}")
        if idx.size and (idx.min() < 0 or idx.max() + width > self.a[name].size):
            raise IndexError(f"global address out of range in {name}")

    def store(self, name, idx, vals, width=1, esize=4):
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size == 0:
            return
        if esize != self.esize.get(name, 4):
            raise TypeError(f"{esize}-byte elements stored into {name}, whose elements have "
                            f"{self.esize.get(name, 4)} bytes")
        if esize == 2:
            v = np.asarray(vals, dtype=np.float32)
            if not np.array_equal(bf16(v), v, equal_nan=True):
                raise TypeError(f"a value that bf16 does not hold stored into {name}")
        # element index % width: the width * esize bytes are naturally aligned when the
        # allocation is 16-byte aligned (a float2 at an even float, a bf16x2 at an even bf16)
        if width > 1 and np.any(idx % width):
            self.misaligned.append(f"{name}: {width * esize}-byte store at element {idx[idx % width != 0][:4]}")
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


class AsyncSmem(Smem):
    """Smem with cp.async bookkeeping: per warp (its lanes commit and wait together), the
    elements of copies issued but not committed, and of committed groups not waited for."""

    def __init__(self, n_bf16, n_f32=0, f32_byte_base=None):
        super().__init__(n_bf16, n_f32, f32_byte_base)
        nb, nf = self.bf.size, self.f.size
        self.unc = {"bf": np.zeros((kWarps, nb), bool), "f": np.zeros((kWarps, nf), bool)}
        self.com = {"bf": np.zeros((kWarps, nb), bool), "f": np.zeros((kWarps, nf), bool)}
        self.copies = 0

    def copy_bf(self, idx, vals, warp):  # cp.async into the bf16 tiles: a store, pending
        self.write_bf(idx, vals, warp)
        self.unc["bf"][warp, np.asarray(idx).ravel()] = True
        self.copies += 1

    def copy_f(self, idx, vals, warp):
        self.write_f(idx, vals, warp)
        self.unc["f"][warp, np.asarray(idx).ravel()] = True
        self.copies += 1

    def commit(self, warp):  # cp.async.commit_group
        for k in ("bf", "f"):
            self.com[k][warp] |= self.unc[k][warp]
            self.unc[k][warp] = False

    def wait(self, warp):  # cp.async.wait_group 0: the committed groups (not uncommitted copies)
        for k in ("bf", "f"):
            self.com[k][warp] = False

    def _pending(self, k, idx, warp, what):  # a race with the copy itself: listed with races
        idx = np.asarray(idx).ravel()
        for pend, how in ((self.unc[k], "never committed"), (self.com[k], "not waited for")):
            bad = pend[:, idx].any(0)
            if bad.any():
                self.races.append(f"cp.async race {what} epoch {self.epoch} warp {warp}: read of "
                                  f"a copy {how}, idx {idx[bad][:4]}")

    def read_bf(self, idx, warp):
        self._pending("bf", idx, warp, "bf16")
        return super().read_bf(idx, warp)

    def read_f(self, idx, warp):
        self._pending("f", idx, warp, "f32")
        return super().read_f(idx, warp)


def commit_copies(ctx):
    ctx.smem.commit(ctx.warp)


def wait_copies(ctx):
    ctx.smem.wait(ctx.warp)


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


def place_at(ctx, idx, heavy_first):
    """place_at: (block, h, b, blocks) of the grid position idx. The grid is (row blocks, NH, B),
    or with heavy_first (MIXSIM_ATTENTION_HEAVY_FIRST) (NH, B, row blocks): the row block varies
    slowest."""
    x, y, z = idx
    if heavy_first:
        return z, x, y, ctx.gridDim[2]
    return x, y, z, ctx.gridDim[0]


def place_of(ctx, heavy_first):
    """place_of: place_at(blockIdx, heavy_first)."""
    return place_at(ctx, ctx.blockIdx, heavy_first)


def ticket_position(ctx):
    """ticket_position (fused dq; use with `yield from`): thread 0 takes the next ticket
    (atomicAdd(tickets, 1)) into a shared int, __syncthreads, and every thread reads the grid
    position of that ticket in launch order (x fastest)."""
    if ctx.warp == 0:  # threadIdx.x == 0 (lane 0 of warp 0)
        ctx.smem.ticket = int(ctx.g.a["tickets"][0])
        ctx.g.a["tickets"][0] += 1
    yield  # __syncthreads
    t = ctx.smem.ticket
    gx, gy, _ = ctx.gridDim
    return t % gx, t // gx % gy, t // (gx * gy)


def grid_of(row_blocks, NH, B, heavy_first):
    return (NH, B, row_blocks) if heavy_first else (row_blocks, NH, B)


def head_of(ctx, HS, T, C, NH, place):
    # const std::size_t b = place.b, h = place.h, stride = 3 * std::size_t(C);
    # return {qkv + b * T * stride + h * HS, stride, b * T * C + h * HS, (b * NH + h) * T,
    #         b * T * stride + h * HS};
    _, h, b, _ = place
    stride = 3 * C
    hd = Head()
    hd.q = b * T * stride + h * HS  # offset into "qkv"
    hd.qkv_stride = stride
    hd.row_offset = b * T * C + h * HS
    hd.lse_offset = (b * NH + h) * T
    hd.dqkv_offset = b * T * stride + h * HS
    return hd


def load_tile(ctx, HS, tile, src_name, src, stride, first, T):
    """Starts the copy; the sources are the launchers' bf16 copies (to_bf16 of qkv and dout):
       for (idx = threadIdx.x; idx < kRows * kOcts; idx += kThreads) {
         r = idx / kOcts, d = idx % kOcts * 8, row = first + r; valid = row < T;
         copy_async16(tile + r * tile_ld + d, src + (valid ? row * stride + d : 0), valid); }
       (16 bytes = 8 bf16 a copy, zeros when !valid)"""
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
        ok = row < T
        addr = src + np.where(ok, row * stride + d, 0)
        v = np.zeros((i.size, 8), dtype=np.float32)
        ctx.g.check(src_name, addr, width=8)  # a global, 16-byte aligned address even if !valid
        if ok.any():
            v[ok] = ctx.g.load(src_name, addr[ok], width=8)
        dst = tile + r * LD + d
        if np.any(dst % 8):
            raise SharedMemoryError("cp.async 16-byte destination misaligned")
        ctx.smem.copy_bf(np.concatenate([dst + e for e in range(8)]),
                         np.concatenate([v[:, e] for e in range(8)]), ctx.warp)
        idx = idx + kThreads


def load_rows(ctx, dst, src_name, src, first, T):
    """if (threadIdx.x < kRows) { row = first + threadIdx.x; valid = row < T;
         copy_async4(dst + threadIdx.x, src + (valid ? row : 0), valid); }   (dst: f32 region)"""
    tid = ctx.threadIdx
    w = tid < kRows
    if not w.any():
        return
    row = first + tid[w]
    ok = row < T
    addr = src + np.where(ok, row, 0)
    ctx.g.check(src_name, addr, width=1)
    v = np.zeros(row.size, np.float32)
    if ok.any():
        v[ok] = ctx.g.load(src_name, addr[ok])
    ctx.smem.copy_f(dst + tid[w], v, ctx.warp)


def stage_of(base, t, per_stage):
    """Stage t % kStages of a double-buffered region whose stages are per_stage elements apart."""
    return base + (t % kStages) * per_stage


def load_kv_stage(ctx, HS, kv, head, C, t, T):
    """Key tile t and its values into their stage of kv (forward and dq kernels)."""
    LD = tile_ld(HS)
    ks = stage_of(kv, t, 2 * kRows * LD)
    load_tile(ctx, HS, ks, "qkv16", head.q + C, head.qkv_stride, t * kRows, T)
    load_tile(ctx, HS, ks + kRows * LD, "qkv16", head.q + 2 * C, head.qkv_stride, t * kRows, T)


def advance(ctx, t, tiles, load):
    """The top of iteration t of a pipelined loop (use with `yield from`): wait_copies,
    __syncthreads, the next tile's copies, commit."""
    wait_copies(ctx)
    yield  # __syncthreads
    if t + 1 < tiles:
        load(t + 1)
    commit_copies(ctx)


def scores_groups(ctx, HS, a, on, b):
    """scores<HS, G>: s[g] for the groups that are on (a_g from a + g kRows rows); each b
    fragment loaded once for all groups."""
    LD = tile_ld(HS)
    lane = ctx.lane
    G = len(on)
    s = np.zeros((G, 8, 4, 32), dtype=np.float32)
    for k in range(0, HS, 16):
        fa = [ldmatrix_x4(ctx.smem, a + (g * kRows + lane % 16) * LD + k + lane // 16 * 8, ctx.warp)
              if on[g] else None for g in range(G)]
        for n in range(0, 8, 2):
            fb = ldmatrix_x4(ctx.smem, b + (n * 8 + lane // 16 * 8 + lane % 8) * LD + k + lane // 8 % 2 * 8,
                             ctx.warp)
            for g in range(G):
                if on[g]:
                    mma(s[g][n], fa[g], fb[0], fb[1])
                    mma(s[g][n + 1], fa[g], fb[2], fb[3])
    return s


def scores(ctx, HS, a, b):
    return scores_groups(ctx, HS, a, [True], b)[0]


def to_fragments(s):
    a = np.empty((4, 4, 2, 32), dtype=np.float32)
    for k in range(4):
        a[k][0] = pack(s[2 * k][0], s[2 * k][1])
        a[k][1] = pack(s[2 * k][2], s[2 * k][3])
        a[k][2] = pack(s[2 * k + 1][0], s[2 * k + 1][1])
        a[k][3] = pack(s[2 * k + 1][2], s[2 * k + 1][3])
    return a


def accumulate_groups(ctx, HS, acc, a, on, m):
    """accumulate<HS, G>: acc[g] += a[g] . m for the groups that are on; each m fragment loaded
    once for all groups."""
    LD = tile_ld(HS)
    lane = ctx.lane
    for k in range(4):
        for n in range(0, HS // 8, 2):
            fb = ldmatrix_x4_trans(ctx.smem,
                                   m + (k * 16 + lane // 8 % 2 * 8 + lane % 8) * LD + n * 8 + lane // 16 * 8,
                                   ctx.warp)
            for g in range(len(on)):
                if on[g]:
                    mma(acc[g][n], a[g][k], fb[0], fb[1])
                    mma(acc[g][n + 1], a[g][k], fb[2], fb[3])


def accumulate(ctx, HS, acc, a, m):
    accumulate_groups(ctx, HS, [acc], [a], [True], m)


def zero(HS):
    return np.zeros((HS // 8, 4, 32), dtype=np.float32)


def store_rows(ctx, HS, dst_name, dst, stride, first, T, acc, factor, Out="float"):
    """factor: (factor[0], factor[1]) for the lane's rows g and g + 8, each a scalar or per lane.
    Out: the template's element type of dst, "float" or "bf16".  The two branches share the
    element index arithmetic (at, n * 8) and the fp32 products lo, hi; only the store differs:
      float: *reinterpret_cast<float2*>(at + n * 8) = make_float2(lo, hi);
      bf16:  *reinterpret_cast<__nv_bfloat162*>(at + n * 8) = __floats2bfloat162_rn(lo, hi);
    so a bf16 element is the fp32 one rounded once to nearest even, after the factor (never
    the accumulator rounded and then scaled), and the pair is one 4-byte store whose .x (lo, the
    smaller column) is at the lower address."""
    lane = ctx.lane
    assert len(factor) == 2 and Out in ("float", "bf16")
    for half in range(2):
        f = np.broadcast_to(np.asarray(factor[half], dtype=np.float32), (32,))
        row = first + lane // 4 + 8 * half
        ok = row < T  # if (row >= T) continue;
        at = dst + row * stride + lane % 4 * 2
        for n in range(HS // 8):
            lo = (f * acc[n][2 * half]).astype(np.float32)
            hi = (f * acc[n][2 * half + 1]).astype(np.float32)
            if Out == "float":
                vals = np.stack([lo, hi], axis=-1)
                ctx.g.store(dst_name, (at + n * 8)[ok], vals[ok], width=2)
            else:
                pair = pack(lo, hi).T  # (lane, half): half 0 = .x = lo, at at + n * 8
                ctx.g.store(dst_name, (at + n * 8)[ok], pair[ok], width=2, esize=2)


def row_of(lane, v):
    return lane // 4 + (v // 2) * 8


def column_of(lane, n, v):
    return n * 8 + lane % 4 * 2 + v % 2


def warp_sum(v):
    for offset in (16, 8, 4, 2, 1):
        v = v + shfl_xor(v, offset)
    return v


# ------------------------------------------------------------------------------------------
def online_softmax_tile(s, m, l, acc, full, iw, j0, T, sl, lane, HS):
    """online_softmax_tile<HS>: masks and scales s (base 2), updates m, l (lists of two per-lane
    arrays) and acc in place, and leaves P = exp(scale s - m) in s."""
    tile_max = [np.full(32, -INF, np.float32), np.full(32, -INF, np.float32)]
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
        base = np.where(m_new == -INF, np.float32(0), m_new).astype(np.float32)
        rescale = exp2f(m[h] - base)  # 0 on the first tile
        sm = np.zeros(32, np.float32)
        for n in range(8):
            s[n][2 * h] = exp2f(s[n][2 * h] - base)
            s[n][2 * h + 1] = exp2f(s[n][2 * h + 1] - base)
            sm = sm + (s[n][2 * h] + s[n][2 * h + 1])
        sm = sm + shfl_xor(sm, 1)
        sm = sm + shfl_xor(sm, 2)
        l[h] = fmaf(l[h], rescale, sm)  # l * rescale + sum (contracted by nvcc)
        m[h] = m_new
        for n in range(HS // 8):
            acc[n][2 * h] *= rescale
            acc[n][2 * h + 1] *= rescale


def finish_rows(ctx, HS, head, iw, T, C, m, l, acc, has_lse, Out="float"):
    """finish_rows<HS>: lse, and out = acc / l, for a warp's 16 rows from iw (below T); Out:
    "bf16" where out_bf16 (MIXSIM_BF16_ATTENTION_OUT: store_rows<HS>(bf16*, ...))."""
    lane = ctx.lane
    inv = [None, None]
    for h in range(2):
        with np.errstate(divide="ignore"):
            inv[h] = (np.float32(1) / l[h]).astype(np.float32)
        i = iw + lane // 4 + 8 * h
        w = (lane % 4 == 0) & (i < T)
        if has_lse:
            with np.errstate(invalid="ignore", divide="ignore"):
                lse_h = ((m[h] + log2f(l[h])).astype(np.float32) * kLn2).astype(np.float32)
            ctx.g.store("lse", (head.lse_offset + i)[w], lse_h[w])
    with np.errstate(invalid="ignore"):  # rows past T: acc 0 times 1/0, never stored
        store_rows(ctx, HS, "out", head.row_offset, C, iw, T, acc, inv, Out)


def forward_kernel(ctx, HS, T, C, NH, scale, has_lse=True, G=1, out_bf16=False,
                   heavy_first=False):
    """forward_kernel<HS, G>: blocks of G * 64 rows, each warp G groups of 16 (G = 2: the wide
    forward, MIXSIM_TC_WIDE_FORWARD, head sizes up to 64); out_bf16: the kernel's uniform flag
    (a bf16 out)."""
    assert G == 1 or HS <= 64
    LD = tile_ld(HS)
    kBlockRows = G * kRows
    qs = 0
    kv = qs + kBlockRows * LD  # per stage: (64, LD) a key tile, then (64, LD) its values
    warp, lane = ctx.warp, ctx.lane
    place = place_of(ctx, heavy_first)
    head = head_of(ctx, HS, T, C, NH, place)
    block, _, _, blocks = place
    i0 = (blocks - 1 - block) * kBlockRows
    tiles = (min(T, i0 + kBlockRows) - 1) // kRows + 1  # key tiles up to the last row
    iw = [i0 + g * kRows + warp * 16 for g in range(G)]
    live = [iw[g] < T for g in range(G)]
    sl = np.float32(scale) * kLog2e
    qw = qs + warp * 16 * LD

    def load_stage(t):
        load_kv_stage(ctx, HS, kv, head, C, t, T)

    for g in range(G):
        load_tile(ctx, HS, qs + g * kRows * LD, "qkv16", head.q, head.qkv_stride, i0 + g * kRows, T)
    load_stage(0)
    commit_copies(ctx)

    m = [[np.full(32, -INF, np.float32), np.full(32, -INF, np.float32)] for _ in range(G)]
    l = [[np.zeros(32, np.float32), np.zeros(32, np.float32)] for _ in range(G)]
    acc = [zero(HS) for _ in range(G)]
    for t in range(tiles):
        yield from advance(ctx, t, tiles, load_stage)
        j0 = t * kRows
        on = [live[g] and j0 <= iw[g] + 15 for g in range(G)]
        if not any(on):
            continue
        ks = stage_of(kv, t, 2 * kRows * LD)
        s = scores_groups(ctx, HS, qw, on, ks)
        p = [None] * G
        for g in range(G):
            if on[g]:
                online_softmax_tile(s[g], m[g], l[g], acc[g],
                                    j0 < i0 + g * kRows and iw[g] + 16 <= T, iw[g], j0, T, sl,
                                    lane, HS)
                p[g] = to_fragments(s[g])
        accumulate_groups(ctx, HS, acc, p, on, ks + kRows * LD)
    for g in range(G):
        if live[g]:
            finish_rows(ctx, HS, head, iw[g], T, C, m[g], l[g], acc[g], has_lse,
                        "bf16" if out_bf16 else "float")


def row_dot_part(ctx, HS, at, dout32, out_bf16):
    """row_dot_part<HS>: the lane's part of D = dout . out for the row at `at`: every 32nd element
    from the lane's, fmaf in order (the dq kernel's row_terms and row_dots_kernel)."""
    lane = ctx.lane
    part = np.zeros(32, np.float32)
    d = lane.copy()
    while (d < HS).any():  # for (int d = lane; d < HS; d += kWarpSize)
        act = d < HS
        a = np.zeros(32, np.float32)
        b = np.zeros(32, np.float32)
        a[act] = (ctx.g.load("dout", at + d[act], esize=4) if dout32 else
                  ctx.g.load("dout16", at + d[act], esize=2))
        b[act] = ctx.g.load("out", at + d[act], esize=2 if out_bf16 else 4)
        part = np.where(act, fmaf(a, b, part), part)
        d = d + kWarpSize
    return part


def lane_row_terms(ctx, HS, row_d, row_lse, head, iw, T, C, dout32, out_bf16):
    """lane_row_terms<HS>: row_terms into the warp's 16 rows of row_d and row_lse (f32 region),
    __syncwarp, then each lane's li and di of its rows g and g + 8."""
    warp, lane = ctx.warp, ctx.lane
    for rr in range(16):
        row = iw + rr
        at = head.row_offset + row * C
        part = row_dot_part(ctx, HS, at, dout32, out_bf16) if row < T else np.zeros(32, np.float32)
        part = warp_sum(part)
        # if (lane == 0)
        ctx.smem.write_f(np.array([row_d + rr]), part[:1], warp)
        lv = ctx.g.load("lse", np.array([head.lse_offset + row]))[0] * kLog2e if row < T else np.float32(0)
        ctx.smem.write_f(np.array([row_lse + rr]), np.array([lv], np.float32), warp)
        if row < T:
            ctx.g.store("dvec", np.array([head.lse_offset + row]), part[:1])
    # __syncwarp()
    li = [ctx.smem.read_f(row_lse + lane // 4 + 8 * h, warp) for h in range(2)]
    di = [ctx.smem.read_f(row_d + lane // 4 + 8 * h, warp) for h in range(2)]
    return li, di


def query_major_ds(s, dp, full, iw, j0, T, sl, li, di, lane):
    """query_major_ds: dS = P (dP - D) into s (masked elements 0)."""
    for n in range(8):
        for v in range(4):
            i = iw + row_of(lane, v)
            j = j0 + column_of(lane, n, v)
            with np.errstate(invalid="ignore", over="ignore"):
                val = exp2f(fmaf(sl, s[n][v], -li[v // 2])) * (dp[n][v] - di[v // 2])
            s[n][v] = np.where(mask(full, (i < T) & (j <= i)), val, np.float32(0))


def key_major_p_ds(ctx, s, dp, full, jw, t0, T, sl, tile_lse, tile_d):
    """key_major_p_ds: P^T into s and dS^T = P^T (dP^T - D) into dp; tile_lse and tile_d index
    the f32 region."""
    warp, lane = ctx.warp, ctx.lane
    for n in range(8):
        for v in range(4):
            col = column_of(lane, n, v)
            i = t0 + col
            j = jw + row_of(lane, v)
            tl = ctx.smem.read_f(tile_lse + col, warp)
            lse2 = (tl * kLog2e).astype(np.float32)  # __fmul_rn(tile_lse[col], kLog2e)
            with np.errstate(invalid="ignore", over="ignore"):
                e = exp2f(fmaf(sl, s[n][v], -lse2))
            p = np.where(mask(full, (i < T) & (i >= j)), e, np.float32(0))
            s[n][v] = p
            dp[n][v] = p * (dp[n][v] - ctx.smem.read_f(tile_d + col, warp))


def backward_dq_kernel(ctx, HS, T, C, NH, scale, Out="float", dout32=True, out_bf16=False,
                       heavy_first=False):
    """dout32: the kernel's dout is the fp32 one (D reads it); False where dout is stored in bf16
    (MIXSIM_BF16_ATTENTION_OUT: dout null, D reads dout16, the stored bf16 dout itself); out_bf16:
    the kernel's uniform flag, out read through a bf16 pointer (widened, exact)."""
    LD = tile_ld(HS)
    qs = 0
    gs = qs + kRows * LD
    kv = gs + kRows * LD  # per stage: (64, LD) a key tile, (64, LD) its values
    row_lse = 0  # float region (after kv + kStages * 2 * kRows * LD)
    row_d = row_lse + kRows
    warp, lane = ctx.warp, ctx.lane
    place = place_of(ctx, heavy_first)
    head = head_of(ctx, HS, T, C, NH, place)
    block, _, _, blocks = place
    i0 = (blocks - 1 - block) * kRows
    iw = i0 + warp * 16
    tiles = (min(T, i0 + kRows) - 1) // kRows + 1
    live = iw < T
    sl = np.float32(scale) * kLog2e

    def load_stage(t):
        load_kv_stage(ctx, HS, kv, head, C, t, T)

    load_tile(ctx, HS, qs, "qkv16", head.q, head.qkv_stride, i0, T)
    load_tile(ctx, HS, gs, "dout16", head.row_offset, C, i0, T)
    load_stage(0)
    commit_copies(ctx)
    li, di = lane_row_terms(ctx, HS, row_d + warp * 16, row_lse + warp * 16, head, iw, T, C,
                            dout32, out_bf16)

    dq = zero(HS)
    qw = qs + warp * 16 * LD
    gw = gs + warp * 16 * LD
    for t in range(tiles):
        yield from advance(ctx, t, tiles, load_stage)
        if not live:
            continue
        ks = stage_of(kv, t, 2 * kRows * LD)
        vs = ks + kRows * LD
        j0 = t * kRows
        s = scores(ctx, HS, qw, ks)
        dp = scores(ctx, HS, gw, vs)
        query_major_ds(s, dp, j0 < i0 and iw + 16 <= T, iw, j0, T, sl, li, di, lane)
        ds = to_fragments(s)
        accumulate(ctx, HS, dq, ds, ks)
    if live:
        store_rows(ctx, HS, "dqkv", head.dqkv_offset, head.qkv_stride, iw, T, dq, (scale, scale),
                   Out)


def row_dots_kernel(ctx, HS, T, C, NH, rows, dout32=True, out_bf16=False):
    """row_dots_kernel<HS> (the fused dq's D = dout . out; the dq kernel's row_terms otherwise):
    one warp a row r of a head, rows = B NH T; summed as row_terms sums it (lane-strided fmaf
    over d, then warp_sum). dout32 / out_bf16 as for backward_dq_kernel. No barrier."""
    # r = (blockIdx.x * blockDim.x + threadIdx.x) / kWarpSize: uniform over the warp
    r = (ctx.blockIdx[0] * kThreads + ctx.threadIdx) // kWarpSize
    assert (r == r[0]).all()
    r = int(r[0])
    if r >= rows:  # if (r >= rows) return;
        return
    t, bh = r % T, r // T
    b, h = bh // NH, bh % NH
    at = b * T * C + h * HS + t * C
    part = row_dot_part(ctx, HS, at, dout32, out_bf16)
    part = warp_sum(part)
    # if (lane == 0) dvec[r] = part;
    ctx.g.store("dvec", np.array([r]), part[:1])
    return
    yield  # a generator for launch (the kernel has no barrier)


def block_id(ctx):
    """The block's linear index in launch order (x fastest, then y, then z)."""
    x, y, z = ctx.blockIdx
    return x + ctx.gridDim[0] * (y + ctx.gridDim[1] * z)


class Visibility:
    """The fused dq's ordering between blocks, of fused.acc through the semaphores (a vector clock
    per block). Each element of a tracked array keeps its last writer: (block, the writer's
    barrier epoch, warp). A block's clock says, per other block, up to which of that block's
    epochs (exclusive) its writes are ordered before this block's accesses. store_release saves
    the releasing block's clock with its own entry set to the current epoch (the writes before
    the barrier ahead of the release: __syncthreads, __threadfence, st.release); the block whose
    wait is satisfied by that value merges it into its own (ld.acquire, __syncthreads). A read
    of an element never written, or a read or an overwrite of an element whose last write is
    not ordered so (nor the block's own: an earlier epoch, or the same warp), is listed as an
    unordered access with the races."""

    def __init__(self, gmem, names):
        self.w = {n: np.full((3, gmem.a[n].size), -1, np.int64) for n in names}
        self.clock = {}  # block -> {writer block: epoch (exclusive)}
        self.released = {}  # (name, index) -> the clock saved by the release that stored it
        self.races = []

    def _ordered(self, ctx, name, idx):
        me, ep = block_id(ctx), ctx.smem.epoch
        wb, we, ww = self.w[name][:, idx]
        clk = self.clock.setdefault(me, {})
        ub, inv = np.unique(wb, return_inverse=True)
        lim = np.array([clk.get(int(b), -1) for b in ub], np.int64)[inv.ravel()].reshape(wb.shape)
        own = (wb == me) & ((we < ep) | (ww == ctx.warp))
        return wb < 0, own | ((wb >= 0) & (wb != me) & (we < lim))

    def read(self, ctx, name, idx):
        never, ok = self._ordered(ctx, name, idx)
        if never.any():
            self.races.append(f"block {ctx.blockIdx} warp {ctx.warp}: read of {name} never "
                              f"written, elements {idx[never][:4]}")
        elif not ok.all():
            wb = self.w[name][0, idx][~ok]
            self.races.append(f"block {ctx.blockIdx} warp {ctx.warp}: unordered read of {name} "
                              f"(written by block {wb[0]} after its last release this block "
                              f"acquired), elements {idx[~ok][:4]}")

    def write(self, ctx, name, idx):
        never, ok = self._ordered(ctx, name, idx)
        if not (ok | never).all():
            bad = ~(ok | never)
            self.races.append(f"block {ctx.blockIdx} warp {ctx.warp}: unordered overwrite of "
                              f"{name} (last written by block {self.w[name][0, idx][bad][0]}), "
                              f"elements {idx[bad][:4]}")
        self.w[name][:, idx] = np.array([block_id(ctx), ctx.smem.epoch, ctx.warp])[:, None]

    def release(self, ctx, name, i):
        me = block_id(ctx)
        snap = dict(self.clock.setdefault(me, {}))
        snap[me] = ctx.smem.epoch
        self.released[(name, i)] = snap

    def acquire(self, block, name, i):
        clk = self.clock.setdefault(block, {})
        for b, e in self.released.get((name, i), {}).items():
            clk[b] = max(clk.get(b, -1), e)


def ldcg(ctx, name, idx, width=1):
    """__ldcg (through L2): a load whose elements must be ordered after their last writes."""
    idx = np.asarray(idx, np.int64)
    v = ctx.g.load(name, idx, width)
    ctx.g.vis.read(ctx, name, (idx[..., None] + np.arange(width)).ravel() if width > 1 else idx)
    return v


def stcg(ctx, name, idx, vals, width=1):
    """__stcg: a store, its elements' last writer recorded."""
    idx = np.asarray(idx, np.int64)
    if idx.size == 0:
        return
    ctx.g.vis.write(ctx, name, (idx[..., None] + np.arange(width)).ravel() if width > 1 else idx)
    ctx.g.store(name, idx, vals, width)


def store_release(ctx, name, i, value):
    """__threadfence(); st.release.gpu: sem[i] = value, seen at once by the other blocks' waits,
    with the block's writes before this barrier interval (Visibility)."""
    ctx.g.store(name, np.array([i]), np.array([value], np.float32))
    ctx.g.vis.release(ctx, name, i)


def wait_for(name, i, value):
    """wait_for(sem + i, value) by thread 0 before a __syncthreads: the token that warp 0 yields
    just before that barrier; launch_concurrent lets the block past it once gmem name[i] ==
    value (ld.acquire: then Visibility.acquire)."""
    return ("wait", name, i, value)


def add_dq_part(ctx, HS, head, iw, T, part, first, last, scale, Out):
    """add_dq_part<HS, Out> (fused dq): the warp's 16 queries from iw (below T), part = dS K over
    the block's 64 keys: part += acc (fused.acc's fp32 sum so far, unless the block is the
    first), then dq = scale part into dqkv where the block is the last (the query tile's own), or
    acc = part otherwise."""
    lane = ctx.lane
    acc = head.lse_offset * HS  # fused.acc + head.lse_offset * HS: row t at acc + t HS
    for half in range(2):
        row = iw + lane // 4 + 8 * half
        ok = row < T  # if (row >= T || first) continue;
        if first or not ok.any():
            continue
        for n in range(HS // 8):
            # float2 prev = __ldcg(acc + row * HS + n * 8 + lane % 4 * 2)
            prev = ldcg(ctx, "acc", (acc + row * HS + n * 8 + lane % 4 * 2)[ok], width=2)
            part[n][2 * half][ok] += prev[:, 0]  # part[n][2 * half] += prev.x (fp32)
            part[n][2 * half + 1][ok] += prev[:, 1]
    if last:
        q_rows = head.dqkv_offset  # dqkv + head.qkv_offset
        store_rows(ctx, HS, "dqkv", q_rows, head.qkv_stride, iw, T, part, (scale, scale), Out)
        return
    for half in range(2):
        row = iw + lane // 4 + 8 * half
        ok = row < T  # if (row >= T) continue;
        for n in range(HS // 8):
            # __stcg(acc + row * HS + n * 8 + lane % 4 * 2, make_float2(part[n][2h], part[n][2h + 1]))
            vals = np.stack([part[n][2 * half], part[n][2 * half + 1]], axis=-1)
            stcg(ctx, "acc", (acc + row * HS + n * 8 + lane % 4 * 2)[ok], vals[ok], width=2)


def store_words(ctx, at, word, lo, hi):
    """A 4-byte store of a bf16 pair through std::uint32_t* (lo at the lower address) at the
    bf16 element at + 2 word, per lane."""
    at2 = at + 2 * np.asarray(word)
    ctx.smem.write_bf(np.concatenate([at2, at2 + 1]), np.concatenate([lo, hi]), ctx.warp)


def backward_dkdv_kernel(ctx, HS, T, C, NH, scale, Out="float", heavy_first=False,
                         fused_dq=False):
    """fused_dq: backward_dkdv_kernel<HS, Out, kFusedDq = true> (MIXSIM_ATTENTION_FUSED_DQ): dq
    too, through fused.acc ("acc") and the semaphores ("sem"); run it with launch_concurrent."""
    LD = tile_ld(HS)
    ks = 0
    vs = ks + kRows * LD
    qg = vs + kRows * LD  # per stage: (64, LD) a query tile, (64, LD) its dout
    rows = 0  # float region (after qg + kStages * 2 * kRows * LD): per stage (64) lse, (64) D
    # bf16* dss = reinterpret_cast<bf16*>(rows + 2 * kStages * kRows): (64, kDsLd) dS^T (fused
    # dq), after the float rows, whose bytes are bf16 elements qg + kStages * 2 * kRows * LD on
    dss = qg + kStages * 2 * kRows * LD + 2 * (2 * kStages * kRows)
    warp, lane = ctx.warp, ctx.lane
    # kFusedDq ? place_at(ticket_position(fused.tickets), heavy_first) : place_of(heavy_first)
    if fused_dq:
        place = place_at(ctx, (yield from ticket_position(ctx)), heavy_first)
    else:
        place = place_of(ctx, heavy_first)
    head = head_of(ctx, HS, T, C, NH, place)
    block, h, b, blocks = place
    j0 = place[0] * kRows
    jw = j0 + warp * 16
    tiles = -(-(T - j0) // kRows)  # CEIL_DIV(T - j0, kRows)
    live = jw < T
    sl = np.float32(scale) * kLog2e

    def tile_start(t):  # from j0 up, or (fused dq) from the last tile down
        return j0 + ((tiles - 1 - t) if fused_dq else t) * kRows

    # const int sem_base = (place.b * NH + place.h) * place.blocks (fused dq; at fused.sem)
    sem = (b * NH + h) * blocks if fused_dq else None

    def load_stage(t):  # query tile t of the walk, its dout, lse and D
        t0 = tile_start(t)
        qt = stage_of(qg, t, 2 * kRows * LD)
        rt = stage_of(rows, t, 2 * kRows)
        load_tile(ctx, HS, qt, "qkv16", head.q, head.qkv_stride, t0, T)
        load_tile(ctx, HS, qt + kRows * LD, "dout16", head.row_offset, C, t0, T)
        load_rows(ctx, rt, "lse", head.lse_offset, t0, T)
        load_rows(ctx, rt + kRows, "dvec", head.lse_offset, t0, T)

    load_tile(ctx, HS, ks, "qkv16", head.q + C, head.qkv_stride, j0, T)
    load_tile(ctx, HS, vs, "qkv16", head.q + 2 * C, head.qkv_stride, j0, T)
    load_stage(0)
    commit_copies(ctx)

    dk = zero(HS)
    dv = zero(HS)
    kw = ks + warp * 16 * LD
    vw = vs + warp * 16 * LD
    ds_rows = dss + warp * 16 * kDsLd  # std::uint32_t*: word w is bf16 elements 2w, 2w + 1
    if fused_dq and not live:  # keys past T: their dS rows are zeros (written once)
        e = lane.copy()
        while (e < 16 * kRows // 2).any():  # for (e = lane; e < 16 * kRows / 2; e += kWarpSize)
            act = e < 16 * kRows // 2
            word = (e // (kRows // 2) * (kDsLd // 2) + e % (kRows // 2))[act]
            store_words(ctx, ds_rows, word, np.zeros(word.size), np.zeros(word.size))
            e = e + kWarpSize
    for t in range(tiles):
        yield from advance(ctx, t, tiles, load_stage)
        t0 = tile_start(t)
        if fused_dq and t > 0 and warp == 0:  # threadIdx.x == 0 (thread 0 is warp 0's lane 0)
            # __threadfence(); store_release(sem + tile_start(t - 1) / kRows, place.block + 1)
            store_release(ctx, "sem", sem + tile_start(t - 1) // kRows, block + 1)
        if live:
            qs = stage_of(qg, t, 2 * kRows * LD)
            gs = qs + kRows * LD
            tile_lse = stage_of(rows, t, 2 * kRows)  # natural log
            tile_d = tile_lse + kRows
            s = scores(ctx, HS, kw, qs)
            dp = scores(ctx, HS, vw, gs)
            key_major_p_ds(ctx, s, dp, t0 > j0 and t0 + kRows <= T, jw, t0, T, sl, tile_lse,
                           tile_d)
            pt = to_fragments(s)
            dst = to_fragments(dp)
            accumulate(ctx, HS, dv, pt, gs)
            accumulate(ctx, HS, dk, dst, qs)
            if fused_dq:  # dS^T's fragments as stored: rows g, g + 8; columns 16k + 2 (l % 4)
                for k in range(4):
                    for r in range(4):
                        # ds_rows[(lane / 4 + r % 2 * 8) * (kDsLd / 2) + 8 * k + r / 2 * 4
                        #         + lane % 4] = dst[k][r]
                        word = (lane // 4 + r % 2 * 8) * (kDsLd // 2) + 8 * k + r // 2 * 4 + lane % 4
                        store_words(ctx, ds_rows, word, dst[k][r][0], dst[k][r][1])
        if fused_dq:
            tile = t0 // kRows  # the query tile's index in the head
            if block > 0 and warp == 0:  # threadIdx.x == 0: wait_for(sem + tile, place.block)
                yield wait_for("sem", sem + tile, block)
            yield  # __syncthreads: dS^T in shared memory; the keys' earlier parts of dq stored
            iw = t0 + warp * 16  # the warp's 16 queries
            if iw < T:
                # dS (queries x keys) by ldmatrix.trans of dS^T: A fragments
                a = np.stack([ldmatrix_x4_trans(
                    ctx.smem, dss + (k * 16 + lane // 16 * 8 + lane % 8) * kDsLd + warp * 16
                    + lane // 8 % 2 * 8, warp) for k in range(4)])
                part = zero(HS)
                accumulate(ctx, HS, part, a, ks)  # dS K
                add_dq_part(ctx, HS, head, iw, T, part, block == 0, tile == block, scale, Out)
    if live:
        out_rows = head.dqkv_offset
        store_rows(ctx, HS, "dqkv", out_rows + C, head.qkv_stride, jw, T, dk, (scale, scale), Out)
        store_rows(ctx, HS, "dqkv", out_rows + 2 * C, head.qkv_stride, jw, T, dv, (1.0, 1.0), Out)

# ------------------------------------------------------------------------------------------
def launch(kernel, grid, n_bf16, n_f32, f32_byte_base, gmem, *args, smem_class=AsyncSmem, **kw):
    """Runs kernel over the grid, each block's shared memory a smem_class (wgmma.py's kernels: its
    WgSmem); returns the list of races found."""
    races = []
    for bz in range(grid[2]):
        for by in range(grid[1]):
            for bx in range(grid[0]):
                smem = smem_class(n_bf16, n_f32, f32_byte_base)
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


class Deadlock(RuntimeError):
    pass


class Block:
    """A resident block of launch_concurrent: its warps' generators, each run to its next barrier
    (None), its end, or a wait token (wait_for) whose condition does not hold yet."""

    def __init__(self, kernel, idx, grid, smem, gmem, args, kw):
        self.idx, self.smem, self.g = idx, smem, gmem
        self.id = idx[0] + grid[0] * (idx[1] + grid[1] * idx[2])
        self.gens = [kernel(Ctx(idx, grid, w, smem, gmem), *args, **kw) for w in range(kWarps)]
        self.state = ["run"] * kWarps  # "run", "barrier", "done", or a wait token
        self.done = False
        self.waits = self.held = 0  # waits passed; turns spent held at one

    def step(self):
        """Runs the block through one barrier interval if it can; returns whether any warp moved."""
        moved = False
        for w in range(kWarps):
            while True:
                st = self.state[w]
                if st == "run":
                    try:
                        tok = next(self.gens[w])
                    except StopIteration:
                        self.state[w] = "done"
                        moved = True
                        break
                    moved = True
                    self.state[w] = "barrier" if tok is None else tok
                elif isinstance(st, tuple):  # ("wait", name, index, value)
                    _, name, i, value = st
                    if self.g.a[name][i] != value:
                        self.held += 1
                        break
                    self.g.vis.acquire(self.id, name, i)
                    self.waits += 1
                    self.state[w] = "run"
                    moved = True
                else:
                    break
        if any(isinstance(st, tuple) for st in self.state):
            return moved
        if set(self.state) == {"barrier"}:
            self.smem.epoch += 1
            self.state = ["run"] * kWarps
        elif set(self.state) == {"done"}:
            self.done = True
        else:
            raise RuntimeError(f"barrier divergence in block {self.idx}: {self.state}")
        return moved

    def waiting(self):
        return ", ".join(f"block {self.idx} waits for {st[1]}[{st[2]}] == {st[3]} (holds "
                         f"{self.g.a[st[1]][st[2]]:g}; warp {w})"
                         for w, st in enumerate(self.state) if isinstance(st, tuple))


def launch_concurrent(kernel, grid, resident, n_bf16, n_f32, f32_byte_base, gmem, *args,
                      dispatch="launch", **kw):
    """Runs kernel over the grid with blocks alive together, for kernels whose blocks wait for
    each other (the fused dq's semaphores): blocks start in `dispatch` order ("launch": x
    fastest, then y, then z; "reverse"; "shuffled": a fixed permutation; CUDA promises no order,
    and the fused kernel takes its grid position from a ticket as it starts, so that it needs
    none), at most `resident` at once (None: all of them), a new one only when one has finished;
    the alive blocks go round robin, one barrier interval each a turn. A wait (a wait_for token)
    holds its block before the barrier that follows it until the condition holds; stores, the
    semaphores' included, are seen at once. If no alive block can move: Deadlock, naming what
    each waits for. Returns the list of races found; gmem.waits: (waits passed, turns that
    blocks spent held at one)."""
    order = [(bx, by, bz) for bz in range(grid[2]) for by in range(grid[1]) for bx in range(grid[0])]
    if dispatch == "reverse":
        order.reverse()
    elif dispatch == "shuffled":
        order = [order[i] for i in np.random.default_rng(7).permutation(len(order))]
    else:
        assert dispatch == "launch", dispatch
    resident = len(order) if resident is None else resident
    races, alive, started = [], [], 0
    while started < len(order) or alive:
        while started < len(order) and len(alive) < resident:
            alive.append(Block(kernel, order[started], grid,
                               AsyncSmem(n_bf16, n_f32, f32_byte_base), gmem, args, kw))
            started += 1
        moved = False
        for blk in list(alive):
            moved |= blk.step()
            if blk.done:
                alive.remove(blk)
                gmem.waits = tuple(a + b for a, b in zip(getattr(gmem, "waits", (0, 0)),
                                                         (blk.waits, blk.held)))
                races += [f"block {blk.idx}: {r}" for r in blk.smem.races]
        if not moved:
            raise Deadlock("; ".join(blk.waiting() for blk in alive if blk.waiting())
                           + f" ({len(alive)} blocks alive, at most {resident}; "
                           f"{len(order) - started} not started)")
    return races


def smem_layout(kind, HS):
    """forward_shared / backward_shared: bf16 tiles, then (backward) the float rows; "bwdfused"
    (backward_shared<HS, true>): then the fused dq's dS^T, (64, kDsLd) bf16 after the float rows
    (the bf16 elements in the floats' bytes are a hole, which no bf16 access may touch)."""
    LD = tile_ld(HS)
    tiles = {"fwd": 1 + 2 * kStages, "fwdwide": 2 + 2 * kStages, "bwd": 2 + 2 * kStages,
             "bwdfused": 2 + 2 * kStages}[kind]
    n_bf16 = tiles * kRows * LD
    n_f32 = 0 if kind == "fwd" else 2 * kStages * kRows
    base = 2 * n_bf16
    if kind == "bwdfused":
        n_bf16 = (base + 4 * n_f32) // 2 + kRows * kDsLd
    return n_bf16, n_f32, base


def attention_forward(qkv, B, T, C, NH, wide=False, out_bf16=False, heavy_first=False):
    """wide: forward_kernel<HS, 2> (attention_forward_tc with wide, head sizes up to 64);
    out_bf16: a bf16 out (bf16 memory, NaN until written)."""
    HS = C // NH
    scale = np.float32(1.0) / np.sqrt(np.float32(HS))
    rows = 2 * kRows if wide else kRows
    grid = grid_of((T + rows - 1) // rows, NH, B, heavy_first)
    # the launcher's to_bf16 copy of qkv (round to nearest even), which the kernel reads
    esize = {"qkv16": 2, "out": 2} if out_bf16 else {"qkv16": 2}
    g = Gmem(qkv16=bf16(np.asarray(qkv, dtype=np.float32)), out=np.full(B * T * C, np.nan),
             lse=np.full(B * NH * T, np.nan), esize=esize)
    races = launch(forward_kernel, grid, *smem_layout("fwdwide" if wide else "fwd", HS), g, HS, T,
                   C, NH, scale, G=2 if wide else 1, out_bf16=out_bf16, heavy_first=heavy_first)
    return g, races


def attention_backward(dout, qkv, out, lse, B, T, C, NH, Out="float", bf16_att_out=False,
                       heavy_first=False, fused_dq=False, resident=None, dispatch="launch"):
    """Out: dqkv's type, "float" or "bf16" (the launcher's TensorOut dqkv: both kernels are
    instantiated for its type; the workspace, dvec included, stays fp32 either way).
    bf16_att_out (MIXSIM_BF16_ATTENTION_OUT): out and dout are stored in bf16 (dout and out hold
    bf16 values): the launcher passes dout16 = dout as it is (no rounding pass, dout32 null) and
    the dq kernel reads out as bf16.
    fused_dq (MIXSIM_ATTENTION_FUSED_DQ): row_dots_kernel for D, then backward_dkdv_kernel<HS,
    Out, true> by launch_concurrent with `resident` blocks at most (None: all), on fused.acc
    ("acc", (B, NH, T, HS) fp32, NaN: the workspace is never cleared) and the semaphores ("sem",
    (B, NH, query tiles), zeroed by cudaMemsetAsync, and the ticket counter after them, "tickets")
    whose blocks start in `dispatch` order (launch_concurrent); no dq kernel."""
    HS = C // NH
    scale = np.float32(1.0) / np.sqrt(np.float32(HS))
    grid = grid_of((T + kRows - 1) // kRows, NH, B, heavy_first)
    # the launcher's to_bf16 copies of qkv and dout (D still reads the fp32 dout)
    esize = {"qkv16": 2, "dout16": 2}
    if Out == "bf16":
        esize["dqkv"] = 2  # bf16 memory: 2-byte elements, NaN until written
    arrays = dict(qkv16=bf16(np.asarray(qkv, dtype=np.float32)), out=out, lse=lse,
                  dqkv=np.full(B * T * 3 * C, np.nan), dvec=np.full(B * NH * T, np.nan))
    if bf16_att_out:
        d = np.asarray(dout, dtype=np.float32)
        assert np.array_equal(bf16(d), d) and np.array_equal(bf16(out), np.asarray(out, np.float32))
        arrays["dout16"] = d  # no "dout": the kernels get a null fp32 dout
        esize["out"] = 2
    else:
        arrays.update(dout16=bf16(np.asarray(dout, dtype=np.float32)), dout=dout)
    if fused_dq:
        row_blocks = (T + kRows - 1) // kRows
        arrays.update(acc=np.full(B * T * C, np.nan), sem=np.zeros(B * NH * row_blocks),
                      tickets=np.zeros(1))
    g = Gmem(esize=esize, **arrays)
    if fused_dq:
        g.vis = Visibility(g, ("acc",))
        n = B * NH * T  # D: one warp a row
        races = launch(row_dots_kernel, (-(-n // (kThreads // kWarpSize)), 1, 1), 0, 0, None, g,
                       HS, T, C, NH, n, dout32=not bf16_att_out, out_bf16=bf16_att_out)
        races += launch_concurrent(backward_dkdv_kernel, grid, resident,
                                   *smem_layout("bwdfused", HS), g, HS, T, C, NH, scale, Out=Out,
                                   heavy_first=heavy_first, fused_dq=True, dispatch=dispatch)
        return g, races + g.vis.races
    races = launch(backward_dq_kernel, grid, *smem_layout("bwd", HS), g, HS, T, C, NH, scale,
                   Out=Out, dout32=not bf16_att_out, out_bf16=bf16_att_out,
                   heavy_first=heavy_first)
    races += launch(backward_dkdv_kernel, grid, *smem_layout("bwd", HS), g, HS, T, C, NH, scale,
                    Out=Out, heavy_first=heavy_first)
    return g, races
