"""Emulation of the Hopper warpgroup products that kernels/attention_tc.cu's namespace wgmma uses
(MIXSIM_ATTENTION_WGMMA=1, written without a GPU), and a transcription of its forward kernel.

Layout facts relied on (the PTX ISA's "Asynchronous Warpgroup Level Matrix Multiply-Accumulate"
sections, and the canonical layouts as CUTLASS's cute/atom/mma_traits_sm90_gmma.hpp states them
in make_gmma_desc's comment; read through the search index, file id 372157919, and the
descriptor's bit fields from cute/arch/mma_sm90_desc.hpp, file id 4213945613):

Matrix descriptor (64 bits): start address >> 4 in bits 0-13, leading byte offset (LBO) >> 4 in
16-29, stride byte offset (SBO) >> 4 in 32-45, base offset in 49-51, layout type in 62-63
(0 none, 1 128-byte swizzle, 2 64-byte, 3 32-byte).

Canonical layouts with the 128-byte swizzle, in units of 16 bytes (T = 8 bf16):
  K-major  (the reduced dimension k contiguous):  ((8, m), 2) : ((8, SBO), 1)
     row i of the M (or N) dimension at (i % 8) * 128 bytes + (i // 8) * SBO; the k16 step's
     two 16-byte pieces (k // 8) at +16 bytes; LBO unused.
  MN-major (the M or N dimension contiguous):  ((8, n), (8, k)) : ((1, LBO), (8, SBO))
     n at (n // 8 % 8) * 16 bytes + (n // 64) * LBO (+ 2 (n % 8)); k at (k % 8) * 128 bytes +
     (k // 8) * SBO.
  The swizzle, Swizzle<3,4,3> on the byte address: bits 4-6 XOR bits 7-9 (of the address, so
  the pattern repeats every 1024 bytes: tiles start 1024-byte aligned, base offset 0).

wgmma.mma_async.sync.aligned.m64nNk16.f32.bf16.bf16: D (64 x N) = A (64 x 16) B (16 x N) (+ D
where scale-d); the warpgroup's warp w holds rows 16w..16w+15 of D: its register d_i is row
16w + groupID + 8 ((i >> 1) & 1), column 8 (i >> 2) + 2 tig + (i & 1) (groupID = lane >> 2,
tig = lane % 4): the C fragment of mma.m16n8 repeated for each 8 columns. A from registers:
warp w's rows 16w.. as the A fragment of mma.m16n8k16 (four .b32 registers). imm-trans-b 1:
B is MN-major (else K-major, B^T's rows = N).

A group of products (the kernels' begin() ... end(): wgmma.fence, the products, commit, wait
for all) is emulated by computing each product as it is issued: the products of one group write
different accumulators and read none of each other's, and nothing reads them before end().

Async proxy: wgmma reads shared memory through the async proxy; the cp.async copies are the
generic proxy's, so each thread fences them (fence.proxy.async) after its wait and before the
barrier that publishes them. WgSmem keeps, per warp, the elements copied and not so fenced; a
product's read of one is listed as an "async-proxy race".
"""
import numpy as np

import kernels
from kernels import (AsyncSmem, SharedMemoryError, commit_copies, finish_rows, grid_of, head_of,
                     kLog2e, kRows, kStages, kThreads, kWarps, key_major_p_ds, lane_row_terms,
                     launch, load_rows, online_softmax_tile, place_of, query_major_ds, store_rows,
                     to_fragments, wait_copies, zero)
from ptx import LANES, _A, bf16

kAtomBytes = kRows * 128  # a tile's 64 rows of one 128-byte atom


def tile_bytes(HS):
    return (HS // 64) * kAtomBytes


def forward_shared(HS):
    return (1 + 2 * kStages) * tile_bytes(HS) + 1024


class WgSmem(AsyncSmem):
    """AsyncSmem with the async proxy: copies not fenced by their warp (fence.proxy.async after
    they completed) are invisible to the products."""

    def __init__(self, n_bf16, n_f32=0, f32_byte_base=None):
        super().__init__(n_bf16, n_f32, f32_byte_base)
        self.generic = np.zeros((kWarps, self.bf.size), bool)

    def copy_bf(self, idx, vals, warp):
        super().copy_bf(idx, vals, warp)
        self.generic[warp, np.asarray(idx).ravel()] = True

    def fence_proxy(self, warp):  # the warp's completed copies become the async proxy's too
        self.generic[warp] &= self.unc["bf"][warp] | self.com["bf"][warp]

    def read_async(self, idx, warp):
        idx = np.asarray(idx)
        bad = self.generic[:, idx.ravel()].any(0)
        if bad.any():
            self.races.append(f"async-proxy race epoch {self.epoch} warp {warp}: a product reads "
                              f"a copy not fenced to the async proxy, idx {idx.ravel()[bad][:4]}")
        return self.read_bf(idx, warp)


def _decode(desc):
    desc = int(desc)
    start = (desc & 0x3FFF) << 4
    lbo = ((desc >> 16) & 0x3FFF) << 4
    sbo = ((desc >> 32) & 0x3FFF) << 4
    base_offset = (desc >> 49) & 7
    layout = desc >> 62
    if layout != 1 or base_offset != 0:
        raise SharedMemoryError(f"descriptor {desc:#x}: layout {layout}, base offset "
                                f"{base_offset} (the emulation knows the 128-byte swizzle only)")
    return start, lbo, sbo


def _swizzle(byte):
    return byte ^ (((byte >> 7) & 7) << 4)


def _elements(byte):
    byte = np.asarray(byte)
    if np.any(byte % 2):
        raise SharedMemoryError("an odd byte address for a bf16 element")
    return byte // 2


def k_major(desc, rows):
    """Element indices (rows x 16) of a K-major operand: rows of its M or N dimension, the 16 k
    of one step."""
    start, _, sbo = _decode(desc)
    i = np.arange(rows)[:, None]
    k = np.arange(16)[None, :]
    byte = start + (i % 8) * 128 + (i // 8) * sbo + (k // 8) * 16 + (k % 8) * 2
    return _elements(_swizzle(byte))


def mn_major(desc, n_size):
    """Element indices (16 x n_size) of an MN-major B: the 16 k of one step, n_size columns."""
    start, lbo, sbo = _decode(desc)
    k = np.arange(16)[:, None]
    n = np.arange(n_size)[None, :]
    byte = (start + (n // 8 % 8) * 16 + (n // 64) * lbo + (n % 8) * 2 + (k % 8) * 128 +
            (k // 8) * sbo)
    return _elements(_swizzle(byte))


def _d_coords(N):
    """(row of the warp's 16, column) of register d_i, i < N / 2: the PTX ISA's D fragment."""
    g, tig = LANES >> 2, LANES % 4
    return [(g + 8 * ((i >> 1) & 1), 8 * (i >> 2) + 2 * tig + (i & 1)) for i in range(N // 2)]


def _to_matrix(d, N):
    """The warp's registers d (N / 8, 4, 32) as its 16 x N rows."""
    D = np.full((16, N), np.nan, np.float64)
    for i, (r, c) in enumerate(_d_coords(N)):
        D[r, c] = d[i // 4][i % 4]
    assert not np.isnan(D).any(), "the D fragment does not cover the warp's rows"
    return D


def _from_matrix(d, D):
    for i, (r, c) in enumerate(_d_coords(D.shape[1])):
        d[i // 4][i % 4] = D[r, c].astype(np.float32)


def product_ss(ctx, d, a, b, add):
    """wgmma m64n64k16, A and B K-major from descriptors a and b; d: the warp's registers
    (8, 4, 32), assigned (add false) or added to. Each warp computes its own 16 rows (all four
    run the instruction: a warp that did not would diverge at the kernel's next barrier)."""
    w = ctx.warp
    A = ctx.smem.read_async(k_major(a, 64)[16 * w:16 * w + 16], w).astype(np.float64)
    Bt = ctx.smem.read_async(k_major(b, 64), w).astype(np.float64)  # (64 n, 16 k)
    D = A @ Bt.T
    if add:
        D = D + _to_matrix(d, 64)
    _from_matrix(d, D)


def product_rs(ctx, d, a, b):
    """wgmma m64n64k16 with A the warp's registers a (4, 2, 32) (mma.m16n8k16's A fragment) and B
    MN-major from descriptor b (imm-trans-b 1); d (8, 4, 32) += A B."""
    A = np.full((16, 16), np.nan, np.float64)
    for i in range(8):
        r, c = _A[i]
        A[r, c] = a[i // 2][i % 2]
    assert not np.isnan(A).any()
    B = ctx.smem.read_async(mn_major(b, 64), ctx.warp).astype(np.float64)  # (16 k, 64 n)
    _from_matrix(d, A @ B + _to_matrix(d, 64))


# ---- the kernel's code, transcribed (kernels/attention_tc.cu, namespace wgmma)
def swizzled(r, c):
    return (c // 8) * kAtomBytes + r * 128 + (((c % 8) ^ (r % 8)) << 4)


def load_tile(ctx, HS, tile, src_name, src, stride, first, T):
    kPieces = HS // 8
    kRowStep = kThreads // kPieces
    r0 = ctx.threadIdx // kPieces
    c = ctx.threadIdx % kPieces
    for i in range(kRows // kRowStep):
        r = r0 + i * kRowStep
        row = first + r
        ok = row < T
        addr = src + np.where(ok, row * stride + c * 8, 0)
        ctx.g.check(src_name, addr, width=8)
        v = np.zeros((32, 8), np.float32)
        if ok.any():
            v[ok] = ctx.g.load(src_name, addr[ok], width=8)
        dst = tile + swizzled(r, c)
        if np.any(dst % 16):
            raise SharedMemoryError("cp.async 16-byte destination misaligned")
        ctx.smem.copy_bf(np.concatenate([dst // 2 + e for e in range(8)]),
                         np.concatenate([v[:, e] for e in range(8)]), ctx.warp)


def descriptor(address, lbo, sbo):
    return ((address & 0x3FFFF) >> 4) | (lbo >> 4) << 16 | (sbo >> 4) << 32 | 1 << 62


def advance(ctx, t, tiles, load):
    """wgmma's advance (use with `yield from`): wait_copies, fence.proxy.async, __syncthreads,
    the next tile's copies, commit."""
    wait_copies(ctx)
    ctx.smem.fence_proxy(ctx.warp)
    yield  # __syncthreads
    if t + 1 < tiles:
        load(t + 1)
    commit_copies(ctx)


def issue_scores(ctx, HS, s, q, k):
    for kk in range(HS // 16):
        at = (kk // 4) * kAtomBytes + (kk % 4) * 32
        product_ss(ctx, s, descriptor(q + at, 16, 1024), descriptor(k + at, 16, 1024), kk > 0)


def issue_accumulate(ctx, HS, acc, p, v):
    for kk in range(4):
        for h in range(HS // 64):
            product_rs(ctx, acc[8 * h:8 * h + 8], p[kk],
                       descriptor(v + h * kAtomBytes + kk * 2048, kAtomBytes, 1024))


def forward_kernel(ctx, HS, T, C, NH, scale, has_lse=True, out_bf16=False, heavy_first=False):
    assert HS in (64, 128)
    qs = 0  # (shared_address(smem) + 1023) & ~1023: the emulated shared memory starts at 0

    def keys(t):
        return qs + (1 + 2 * (t % kStages)) * tile_bytes(HS)

    warp, lane = ctx.warp, ctx.lane
    place = place_of(ctx, heavy_first)
    head = head_of(ctx, HS, T, C, NH, place)
    block, _, _, blocks = place
    i0 = (blocks - 1 - block) * kRows
    tiles = (min(T, i0 + kRows) - 1) // kRows + 1
    iw = i0 + warp * 16
    sl = np.float32(scale) * kLog2e

    def load_stage(t):
        load_tile(ctx, HS, keys(t), "qkv16", head.q + C, head.qkv_stride, t * kRows, T)
        load_tile(ctx, HS, keys(t) + tile_bytes(HS), "qkv16", head.q + 2 * C, head.qkv_stride,
                  t * kRows, T)

    load_tile(ctx, HS, qs, "qkv16", head.q, head.qkv_stride, i0, T)
    load_stage(0)
    commit_copies(ctx)
    m = [np.full(32, -np.inf, np.float32), np.full(32, -np.inf, np.float32)]
    l = [np.zeros(32, np.float32), np.zeros(32, np.float32)]
    acc = zero(HS)
    s = np.zeros((8, 4, 32), np.float32)
    for t in range(tiles):
        yield from advance(ctx, t, tiles, load_stage)
        j0 = t * kRows
        issue_scores(ctx, HS, s, qs, keys(t))
        with np.errstate(invalid="ignore"):  # rows past T: every score masked
            online_softmax_tile(s, m, l, acc, j0 < i0 and iw + 16 <= T, iw, j0, T, sl, lane, HS)
        p = to_fragments(s)
        issue_accumulate(ctx, HS, acc, p, keys(t) + tile_bytes(HS))
    if iw < T:
        finish_rows(ctx, HS, head, iw, T, C, m, l, acc, has_lse, "bf16" if out_bf16 else "float")


def attention_forward(qkv, B, T, C, NH, out_bf16=False, heavy_first=False):
    """attention_forward_tc with wgmma (head sizes 64 and 128): returns (gmem, races)."""
    HS = C // NH
    scale = np.float32(1.0) / np.sqrt(np.float32(HS))
    grid = grid_of((T + kRows - 1) // kRows, NH, B, heavy_first)
    esize = {"qkv16": 2, "out": 2} if out_bf16 else {"qkv16": 2}
    g = kernels.Gmem(qkv16=bf16(np.asarray(qkv, dtype=np.float32)),
                     out=np.full(B * T * C, np.nan), lse=np.full(B * NH * T, np.nan), esize=esize)
    races = launch(forward_kernel, grid, forward_shared(HS) // 2, 0, None, g, HS, T, C, NH, scale,
                   out_bf16=out_bf16, heavy_first=heavy_first, smem_class=WgSmem)
    return g, races


def backward_shared(HS):
    return 6 * tile_bytes(HS) + 2 * kStages * kRows * 4 + 1024


def backward_dq_kernel(ctx, HS, T, C, NH, scale, Out="float", dout32=True, out_bf16=False,
                       heavy_first=False):
    tile = tile_bytes(HS)
    qs = 0
    gs = qs + tile

    def keys(t):
        return qs + (2 + 2 * (t % kStages)) * tile

    row_lse = 0  # the float region, after the six tiles
    row_d = row_lse + kRows
    warp, lane = ctx.warp, ctx.lane
    place = place_of(ctx, heavy_first)
    head = head_of(ctx, HS, T, C, NH, place)
    block, _, _, blocks = place
    i0 = (blocks - 1 - block) * kRows
    iw = i0 + warp * 16
    tiles = (min(T, i0 + kRows) - 1) // kRows + 1
    sl = np.float32(scale) * kLog2e

    def load_stage(t):
        load_tile(ctx, HS, keys(t), "qkv16", head.q + C, head.qkv_stride, t * kRows, T)
        load_tile(ctx, HS, keys(t) + tile, "qkv16", head.q + 2 * C, head.qkv_stride, t * kRows, T)

    load_tile(ctx, HS, qs, "qkv16", head.q, head.qkv_stride, i0, T)
    load_tile(ctx, HS, gs, "dout16", head.row_offset, C, i0, T)
    load_stage(0)
    commit_copies(ctx)
    li, di = lane_row_terms(ctx, HS, row_d + warp * 16, row_lse + warp * 16, head, iw, T, C,
                            dout32, out_bf16)
    dq = zero(HS)
    s = np.zeros((8, 4, 32), np.float32)
    dp = np.zeros((8, 4, 32), np.float32)
    for t in range(tiles):
        yield from advance(ctx, t, tiles, load_stage)
        j0 = t * kRows
        issue_scores(ctx, HS, s, qs, keys(t))
        issue_scores(ctx, HS, dp, gs, keys(t) + tile)
        query_major_ds(s, dp, j0 < i0 and iw + 16 <= T, iw, j0, T, sl, li, di, lane)
        ds = to_fragments(s)
        issue_accumulate(ctx, HS, dq, ds, keys(t))
    if iw < T:
        store_rows(ctx, HS, "dqkv", head.dqkv_offset, head.qkv_stride, iw, T, dq, (scale, scale),
                   Out)


def backward_dkdv_kernel(ctx, HS, T, C, NH, scale, Out="float", heavy_first=False):
    tile = tile_bytes(HS)
    ks = 0
    vs = ks + tile

    def queries(t):
        return ks + (2 + 2 * (t % kStages)) * tile

    rows = 0  # the float region: per stage (64) lse, (64) D
    warp = ctx.warp
    place = place_of(ctx, heavy_first)
    head = head_of(ctx, HS, T, C, NH, place)
    j0 = place[0] * kRows
    jw = j0 + warp * 16
    tiles = -(-(T - j0) // kRows)
    sl = np.float32(scale) * kLog2e

    def load_stage(t):
        t0 = j0 + t * kRows
        rt = rows + (t % kStages) * 2 * kRows
        load_tile(ctx, HS, queries(t), "qkv16", head.q, head.qkv_stride, t0, T)
        load_tile(ctx, HS, queries(t) + tile, "dout16", head.row_offset, C, t0, T)
        load_rows(ctx, rt, "lse", head.lse_offset, t0, T)
        load_rows(ctx, rt + kRows, "dvec", head.lse_offset, t0, T)

    load_tile(ctx, HS, ks, "qkv16", head.q + C, head.qkv_stride, j0, T)
    load_tile(ctx, HS, vs, "qkv16", head.q + 2 * C, head.qkv_stride, j0, T)
    load_stage(0)
    commit_copies(ctx)
    dk = zero(HS)
    dv = zero(HS)
    s = np.zeros((8, 4, 32), np.float32)
    dp = np.zeros((8, 4, 32), np.float32)
    for t in range(tiles):
        yield from advance(ctx, t, tiles, load_stage)
        t0 = j0 + t * kRows
        qt = queries(t)
        gt = qt + tile
        tile_lse = rows + (t % kStages) * 2 * kRows
        tile_d = tile_lse + kRows
        issue_scores(ctx, HS, s, ks, qt)
        issue_scores(ctx, HS, dp, vs, gt)
        key_major_p_ds(ctx, s, dp, t0 > j0 and t0 + kRows <= T, jw, t0, T, sl, tile_lse, tile_d)
        pt = to_fragments(s)
        dst = to_fragments(dp)
        issue_accumulate(ctx, HS, dv, pt, gt)
        issue_accumulate(ctx, HS, dk, dst, qt)
    if jw < T:
        store_rows(ctx, HS, "dqkv", head.dqkv_offset + C, head.qkv_stride, jw, T, dk,
                   (scale, scale), Out)
        store_rows(ctx, HS, "dqkv", head.dqkv_offset + 2 * C, head.qkv_stride, jw, T, dv,
                   (1.0, 1.0), Out)


def attention_backward(dout, qkv, out, lse, B, T, C, NH, Out="float", bf16_att_out=False,
                       heavy_first=False):
    """attention_backward_tc with wgmma (head sizes 64 and 128; not the fused dq): the two
    kernels on WgSmem, as kernels.attention_backward's default path. Returns (gmem, races)."""
    HS = C // NH
    scale = np.float32(1.0) / np.sqrt(np.float32(HS))
    grid = grid_of((T + kRows - 1) // kRows, NH, B, heavy_first)
    esize = {"qkv16": 2, "dout16": 2}
    if Out == "bf16":
        esize["dqkv"] = 2
    arrays = dict(qkv16=bf16(np.asarray(qkv, dtype=np.float32)), out=out, lse=lse,
                  dqkv=np.full(B * T * 3 * C, np.nan), dvec=np.full(B * NH * T, np.nan))
    if bf16_att_out:
        arrays["dout16"] = np.asarray(dout, dtype=np.float32)
        esize["out"] = 2
    else:
        arrays.update(dout16=bf16(np.asarray(dout, dtype=np.float32)), dout=dout)
    g = kernels.Gmem(esize=esize, **arrays)
    n_bf16, n_f32 = 6 * tile_bytes(HS) // 2, 2 * kStages * kRows
    races = launch(backward_dq_kernel, grid, n_bf16, n_f32, 2 * n_bf16, g, HS, T, C, NH, scale,
                   Out=Out, dout32=not bf16_att_out, out_bf16=bf16_att_out,
                   heavy_first=heavy_first, smem_class=WgSmem)
    races += launch(backward_dkdv_kernel, grid, n_bf16, n_f32, 2 * n_bf16, g, HS, T, C, NH, scale,
                    Out=Out, heavy_first=heavy_first, smem_class=WgSmem)
    return g, races


def _self_test():
    """The descriptor reads against a plain matrix stored through the kernel's own swizzled():
    K-major rows and MN-major columns come back as stored."""
    rng = np.random.default_rng(3)
    for HS in (64, 128):
        X = bf16(rng.standard_normal((kRows, HS)))
        mem = np.full(tile_bytes(HS) // 2, np.nan, np.float32)
        for r in range(kRows):
            for c in range(HS // 8):
                at = swizzled(r, c) // 2
                mem[at:at + 8] = X[r, 8 * c:8 * c + 8]
        assert not np.isnan(mem).any()
        for kk in range(HS // 16):  # K-major: X's rows, k = 16 kk..
            at = (kk // 4) * kAtomBytes + (kk % 4) * 32
            got = mem[k_major(descriptor(at, 16, 1024), kRows)]
            assert np.array_equal(got, X[:, 16 * kk:16 * kk + 16]), ("k-major", HS, kk)
        for kk in range(4):  # MN-major: X's rows 16 kk.. as k, 64 columns of each atom as n
            for h in range(HS // 64):
                got = mem[mn_major(descriptor(h * kAtomBytes + kk * 2048, kAtomBytes, 1024), 64)]
                assert np.array_equal(got, X[16 * kk:16 * kk + 16, 64 * h:64 * h + 64]), ("mn", HS)
    # the D fragment covers a 16 x 64 block once
    cnt = np.zeros((16, 64), int)
    for r, c in _d_coords(64):
        np.add.at(cnt, (r, c), 1)
    assert (cnt == 1).all()
    return True
