"""Emulation of the PTX warp primitives used by kernels/attention_tc.cu (namespace mma_sync).

Layout facts relied on, and where they were confirmed (PTX ISA, not the kernel's own comments):

mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32  -- PTX ISA 9.7.14.5.8 (v9.2 numbering;
"Matrix Fragments for mma.m16n8k16 with floating point type"), read from a markdown copy of the
ISA section (search index file id 56803012830) and the ptx.poole.ai mirror
(ptx.poole.ai/docs/09-instruction-set/14-warp-level-mma/mma/mma-fragments/m16n8k16):
    groupID = %laneid >> 2 ; threadID_in_group = %laneid % 4
  A (16x16, four .b32 regs = bf16 pairs a0..a7, low half = lower index):
    row = groupID      for ai, 0 <= i < 2 || 4 <= i < 6 ; groupID + 8 otherwise
    col = 2*tig + (i & 1)      for i < 4 ; 2*tig + (i & 1) + 8 for i >= 4
    -> reg0=(a0,a1): row g,   cols 2t,2t+1 ; reg1=(a2,a3): row g+8, cols 2t,2t+1
       reg2=(a4,a5): row g,   cols 2t+8,+9 ; reg3=(a6,a7): row g+8, cols 2t+8,+9
  B (16x8 = K x N, two .b32 regs = b0..b3):
    row(k) = 2*tig + (i & 1) for i < 2 ; 2*tig + (i & 1) + 8 for i >= 2 ; col(n) = groupID
  C/D (16x8 f32, c0..c3):
    row = groupID for i < 2 ; groupID + 8 for i >= 2 ; col = 2*tig + (i & 1)

ldmatrix.sync.aligned.m8n8.x4{.trans}.shared.b16 -- PTX ISA 9.7.14.5.15 ("Warp-level matrix
load instruction: ldmatrix"), description text (search index file id 45970063600, and the
ptx.poole.ai mirror .../mma/ldmatrix):
  * "The eight addresses required for each matrix are provided by eight threads ...
    addr0-addr7 correspond to the rows of the first matrix, addr8-addr15 ... the second", i.e.
    for .x4 lane 8*m + r supplies the address of row r of matrix m. Each row is 16 bytes
    (8 b16) and must be 16-byte aligned ("naturally aligned").
  * "Each thread in a warp loads fragments of a row, with thread 0 receiving the first fragment
    ... A group of four threads loads an entire row" (Figure 104), and "the second matrix ... in
    the next destination register": destination register m of lane l holds, of matrix m,
    row l/4, columns 2(l%4) (low half) and 2(l%4)+1 (high half).  Cross-checked with the TVM
    docs (tvm.apache.org/docs/tirx/tile_ops/ldmatrix_stmatrix.html: "Lane 8*matrix+row provides
    that row's shared address"; "Register word (matrix,row,word) belongs to lane 4*row+word").
  * ".trans indicates that the matrix is loaded in column-major format": the 8 supplied rows are
    read as columns, so register m of lane l holds stored element (row 2(l%4), col l/4) in the
    low half and (row 2(l%4)+1, col l/4) in the high half.  Cross-checked with the linear-layout
    table of an ldmatrix layout visualiser (search index file id 55180960685,
    ldmatrix_m8n8_x4_b16: no-trans R bits->T 4,8,16, C bits->(half),T1,T2; trans R bits ->
    (half),T1,T2, C bits -> T 4,8,16).

Registers are modelled per lane as (low, high) pairs of bf16 values held in float32.
Per-lane arrays have the lane as LAST axis (length 32).
"""
import numpy as np

LANES = np.arange(32)


def bf16(x):
    """Round float32 (array) to bf16, round-to-nearest-even, returned as float32."""
    a = np.asarray(x, dtype=np.float32)
    u = a.view(np.uint32).astype(np.uint64)
    nan = np.isnan(a)
    r = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    out = r.astype(np.uint32).view(np.float32)
    out = np.where(nan, np.float32(np.nan), out)
    return out.astype(np.float32)


def f32(x):
    return np.asarray(x, dtype=np.float32)


def fmaf(a, b, c):
    """fmaf in float32: exact product (float64 holds the 48-bit product), one final rounding
    (double rounding through float64 is possible but irrelevant at this precision)."""
    return (np.float64(1) * f32(a) * f32(b) + f32(c)).astype(np.float32)


def exp2f(x):
    with np.errstate(all="ignore"):
        return np.exp2(f32(x).astype(np.float64)).astype(np.float32)


def log2f(x):
    with np.errstate(all="ignore"):
        return np.log2(f32(x).astype(np.float64)).astype(np.float32)


def shfl_xor(x, k):
    return x[..., LANES ^ k]


def pack(lo, hi):
    """__floats2bfloat162_rn(lo, hi): low half = lo. Shape (2, 32)."""
    return np.stack([bf16(lo), bf16(hi)])


class SharedMemoryError(Exception):
    pass


class Smem:
    """bf16 shared memory (element-addressed), NaN = never written; with race tracking by
    barrier epoch: a read of an element written in the same epoch by another warp, or a write
    of an element read in the same epoch by another warp, is a race."""

    def __init__(self, n_bf16, n_f32=0, f32_byte_base=None):
        self.bf = np.full(n_bf16, np.nan, dtype=np.float32)
        self.w_epoch = np.full(n_bf16, -1, dtype=np.int64)
        self.w_warp = np.full(n_bf16, -1, dtype=np.int64)
        self.r_epoch = np.full(n_bf16, -1, dtype=np.int64)
        self.r_mask = np.zeros(n_bf16, dtype=np.int64)
        self.f = np.full(max(n_f32, 1), np.nan, dtype=np.float32)
        self.fw_epoch = np.full(max(n_f32, 1), -1, dtype=np.int64)
        self.fw_warp = np.full(max(n_f32, 1), -1, dtype=np.int64)
        self.fr_epoch = np.full(max(n_f32, 1), -1, dtype=np.int64)
        self.fr_mask = np.zeros(max(n_f32, 1), dtype=np.int64)
        # bf16 elements that are the float region's bytes: none where the floats follow the bf16
        # elements; a hole in them where bf16 elements follow the floats (the fused dq's dS^T
        # after the backward's float rows), which no bf16 access may touch
        self.hole = (0, 0)
        if n_f32:
            assert f32_byte_base % 4 == 0
            lo, hi = f32_byte_base // 2, f32_byte_base // 2 + 2 * n_f32
            assert lo >= n_bf16 or hi <= n_bf16, "the float region overlaps the bf16 elements' end"
            if lo < n_bf16:
                self.hole = (lo, hi)
        self.epoch = 0
        self.races = []

    # --- bf16 region
    def _track_read(self, idx, warp, W, R, RE, RM, name):
        idx = np.unique(idx)
        bad = (W[0][idx] == self.epoch) & (W[1][idx] != warp)
        if bad.any():
            self.races.append(f"RAW race {name} epoch {self.epoch} warp {warp} idx {idx[bad][:4]}")
        same = RE[idx] == self.epoch
        RM[idx] = np.where(same, RM[idx] | (1 << warp), 1 << warp)
        RE[idx] = self.epoch

    def _track_write(self, idx, warp, W, RE, RM, name):
        idx = np.unique(idx)
        bad = (RE[idx] == self.epoch) & ((RM[idx] & ~(1 << warp)) != 0)
        if bad.any():
            self.races.append(f"WAR race {name} epoch {self.epoch} warp {warp} idx {idx[bad][:4]}")
        badw = (W[0][idx] == self.epoch) & (W[1][idx] != warp)
        if badw.any():
            self.races.append(f"WAW race {name} epoch {self.epoch} warp {warp} idx {idx[badw][:4]}")
        W[0][idx] = self.epoch
        W[1][idx] = warp

    def _not_in_hole(self, idx):
        lo, hi = self.hole
        if hi > lo and ((idx >= lo) & (idx < hi)).any():
            raise SharedMemoryError("a bf16 access to the float region's bytes")

    def read_bf(self, idx, warp):
        idx = np.asarray(idx)
        if idx.min() < 0 or idx.max() >= self.bf.size:
            raise SharedMemoryError(f"smem bf16 read out of range {idx.min()}..{idx.max()}")
        self._not_in_hole(idx)
        self._track_read(idx.ravel(), warp, (self.w_epoch, self.w_warp), None, self.r_epoch,
                         self.r_mask, "bf16")
        v = self.bf[idx]
        if np.isnan(v).any():
            raise SharedMemoryError("read of never-written shared memory (bf16)")
        return v

    def write_bf(self, idx, vals, warp):
        idx = np.asarray(idx)
        if idx.size == 0:
            return
        if idx.min() < 0 or idx.max() >= self.bf.size:
            raise SharedMemoryError("smem bf16 write out of range")
        self._not_in_hole(idx)
        self._track_write(idx.ravel(), warp, (self.w_epoch, self.w_warp), self.r_epoch,
                          self.r_mask, "bf16")
        self.bf[idx] = bf16(vals)  # stored values must be bf16 (they are rounded already)

    def read_f(self, idx, warp):
        idx = np.asarray(idx)
        if idx.min() < 0 or idx.max() >= self.f.size:
            raise SharedMemoryError("smem f32 read out of range")
        self._track_read(idx.ravel(), warp, (self.fw_epoch, self.fw_warp), None, self.fr_epoch,
                         self.fr_mask, "f32")
        v = self.f[idx]
        if np.isnan(v).any():
            raise SharedMemoryError("read of never-written shared memory (f32)")
        return v

    def write_f(self, idx, vals, warp):
        idx = np.asarray(idx)
        if idx.size == 0:
            return
        self._track_write(idx.ravel(), warp, (self.fw_epoch, self.fw_warp), self.fr_epoch,
                          self.fr_mask, "f32")
        self.f[idx] = vals


def _ldmatrix_rows(smem, addr, warp):
    """addr: (32,) bf16-element addresses, one per lane (lane 8m+r -> row r of matrix m).
    Returns rows[m, r, c] (4, 8, 8)."""
    addr = np.asarray(addr, dtype=np.int64)
    assert addr.shape == (32,)
    if np.any((addr * 2) % 16 != 0):
        raise SharedMemoryError(f"ldmatrix row address not 16-byte aligned: {addr * 2}")
    idx = addr[:, None] + np.arange(8)[None, :]  # (32, 8)
    vals = smem.read_bf(idx, warp)  # (32, 8)
    return vals.reshape(4, 8, 8)  # [m, r, c] since lane = 8m + r


def ldmatrix_x4(smem, addr, warp):
    """Returns regs (4, 2, 32): [matrix m, half, lane]: lane l gets row l/4, cols 2(l%4)+half."""
    rows = _ldmatrix_rows(smem, addr, warp)
    out = np.empty((4, 2, 32), dtype=np.float32)
    for m in range(4):
        for h in range(2):
            out[m, h] = rows[m, LANES // 4, 2 * (LANES % 4) + h]
    return out


def ldmatrix_x4_trans(smem, addr, warp):
    """.trans: lane l gets stored (row 2(l%4)+half, col l/4) of matrix m."""
    rows = _ldmatrix_rows(smem, addr, warp)
    out = np.empty((4, 2, 32), dtype=np.float32)
    for m in range(4):
        for h in range(2):
            out[m, h] = rows[m, 2 * (LANES % 4) + h, LANES // 4]
    return out


# Fragment coordinate tables straight from the PTX formulas (built per element index i).
_g = LANES >> 2
_t = LANES % 4


def _a_coord(i):
    row = _g if (0 <= i < 2 or 4 <= i < 6) else _g + 8
    col = (_t * 2) + (i & 1) if i < 4 else (_t * 2) + (i & 1) + 8
    return row, col


def _b_coord(i):
    row = (_t * 2) + (i & 1) if i < 2 else (_t * 2) + (i & 1) + 8
    return row, _g


def _c_coord(i):
    row = _g if i < 2 else _g + 8
    return row, (_t * 2) + (i & 1)


def _check_cover(coords, shape):
    cnt = np.zeros(shape, dtype=int)
    for r, c in coords:
        np.add.at(cnt, (r, c), 1)
    assert (cnt == 1).all(), "fragment layout does not cover the matrix exactly once"


_A = [_a_coord(i) for i in range(8)]
_B = [_b_coord(i) for i in range(4)]
_C = [_c_coord(i) for i in range(4)]
_check_cover(_A, (16, 16))
_check_cover(_B, (16, 8))
_check_cover(_C, (16, 8))


def mma(d, a, b0, b1):
    """d (4, 32) f32, modified in place: D = A B + C.  a (4, 2, 32): four .b32 regs, element
    a_i = a[i // 2][i % 2].  b0, b1 (2, 32): element b_i = (b0, b1)[i // 2][i % 2]."""
    A = np.zeros((16, 16), dtype=np.float64)
    B = np.zeros((16, 8), dtype=np.float64)
    C = np.zeros((16, 8), dtype=np.float64)
    for i in range(8):
        r, c = _A[i]
        A[r, c] = a[i // 2][i % 2]
    bregs = (b0, b1)
    for i in range(4):
        r, c = _B[i]
        B[r, c] = bregs[i // 2][i % 2]
    for i in range(4):
        r, c = _C[i]
        C[r, c] = d[i]
    assert not np.isnan(A).any() and not np.isnan(B).any()
    D = (A @ B + C).astype(np.float32)
    for i in range(4):
        r, c = _C[i]
        d[i] = D[r, c]


def _self_test():
    rng = np.random.default_rng(0)
    # A 16x16 row-major and B^T (8 rows n x 16 k) in a fake smem with row stride 24.
    LD = 24
    sm = Smem(64 * LD)
    A = bf16(rng.standard_normal((16, 16)))
    Bt = bf16(rng.standard_normal((8, 16)))
    Bkn = bf16(rng.standard_normal((16, 8)))  # k-major B (rows = k)
    for r in range(16):
        sm.bf[r * LD:r * LD + 16] = A[r]
    for r in range(8):
        sm.bf[16 * LD + r * LD:16 * LD + r * LD + 16] = Bt[r]
    for r in range(16):
        sm.bf[32 * LD + r * LD:32 * LD + r * LD + 8] = Bkn[r]
        sm.bf[32 * LD + r * LD + 8:32 * LD + r * LD + 16] = 0
    sm.w_epoch[:] = -1
    lane = LANES
    # A via ldmatrix: matrices (rows 0-7,k0) (rows 8-15,k0) (rows 0-7,k8) (rows 8-15,k8)
    fa = ldmatrix_x4(sm, (lane % 16) * LD + lane // 16 * 8, 0)
    # B (= Bt^T) via non-trans ldmatrix of Bt rows: (cols k0..7) then (k8..15)
    fb = ldmatrix_x4(sm, 16 * LD + (lane % 8) * LD + (lane // 8 % 2) * 8, 0)
    d = np.zeros((4, 32), dtype=np.float32)
    mma(d, fa, fb[0], fb[1])
    D = np.zeros((16, 8), dtype=np.float32)
    for i in range(4):
        r, c = _C[i]
        D[r, c] = d[i]
    ref = A.astype(np.float64) @ Bt.astype(np.float64).T
    assert np.allclose(D, ref, rtol=1e-6, atol=1e-6), "ldmatrix/mma self test (n-major) failed"
    # k-major B via ldmatrix.trans: rows 0-7 then 8-15 of Bkn
    fbt = ldmatrix_x4_trans(sm, 32 * LD + (lane % 8 + (lane // 8 % 2) * 8) * LD, 0)
    d = np.zeros((4, 32), dtype=np.float32)
    mma(d, fa, fbt[0], fbt[1])
    for i in range(4):
        r, c = _C[i]
        D[r, c] = d[i]
    ref = A.astype(np.float64) @ Bkn.astype(np.float64)
    assert np.allclose(D, ref, rtol=1e-6, atol=1e-6), "ldmatrix.trans/mma self test failed"
    # bf16 rounding: ties to even
    x = np.array([1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, -1.0 - 2 ** -9, 3.0e38], dtype=np.float32)
    y = bf16(x)
    assert y[0] == 1.0 and y[1] == 1.0 + 2 ** -6 and y[2] == -1.0, y
    return True


if __name__ == "__main__":
    print("self test:", _self_test())
