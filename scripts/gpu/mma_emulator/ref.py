"""(a) float64 causal attention, (b) numpy port of src/backend/cpu/attention_bf16.cpp (fp32,
same loop orders, bf16 roundings): a forward in one pass over key tiles of 64 with a running max
(as kernels/attention_tc.cu), and the backward from the saved lse."""
import numpy as np

from ptx import bf16, exp2f, fmaf


def split(qkv, B, T, C, NH):
    HS = C // NH
    x = qkv.reshape(B, T, 3, NH, HS)
    return x[:, :, 0].transpose(0, 2, 1, 3), x[:, :, 1].transpose(0, 2, 1, 3), x[:, :, 2].transpose(0, 2, 1, 3)


def f64_forward_backward(qkv, dout, B, T, C, NH):
    HS = C // NH
    q, k, v = (a.astype(np.float64) for a in split(qkv, B, T, C, NH))
    g = dout.reshape(B, T, NH, HS).transpose(0, 2, 1, 3).astype(np.float64)
    sc = 1.0 / np.sqrt(HS)
    s = np.einsum("bhid,bhjd->bhij", q, k) * sc
    mask = np.tril(np.ones((T, T), bool))
    s = np.where(mask, s, -np.inf)
    mx = s.max(-1, keepdims=True)
    e = np.exp(s - mx)
    lse = (mx + np.log(e.sum(-1, keepdims=True)))[..., 0]
    p = np.exp(s - lse[..., None])
    o = p @ v
    dp = g @ v.transpose(0, 1, 3, 2)
    D = (g * o).sum(-1, keepdims=True)
    ds = p * (dp - D)
    dq = ds @ k * sc
    dk = ds.transpose(0, 1, 3, 2) @ q * sc
    dv = p.transpose(0, 1, 3, 2) @ g
    out = o.transpose(0, 2, 1, 3).reshape(B, T, C)
    dqkv = np.stack([dq, dk, dv], 2).transpose(0, 3, 2, 1, 4).reshape(B, T, 3 * C)
    return out, lse, dqkv


def _seqdot(a, b):
    """a (I, HS), b (J, HS) -> (I, J): fp32 sequential sum over d, s += a[d]*b[d]."""
    s = np.zeros((a.shape[0], b.shape[0]), np.float32)
    for d in range(a.shape[1]):
        s = (s + a[:, d][:, None] * b[:, d][None, :]).astype(np.float32)
    return s


def _expf(x):
    with np.errstate(all="ignore"):
        return np.exp(x.astype(np.float64)).astype(np.float32)


KEY_TILE = 64  # kRows of attention_tc.cu, kKeyTile of attention_bf16.cpp


def bf16_cpu_forward(qkv, B, T, C, NH):
    """One pass over the key tiles of 64 (flash attention), per row i over the tiles j0 <= i:
    m_new = max(m, tile max of the scaled scores), rescale = exp(m - m_new) (0 on the first tile),
    p_j = exp(s_j - m_new) (fp32), l = l rescale + sum_j p_j (the fp32 p), acc = acc rescale +
    sum_j bf16(p_j) v_j, m = m_new; then lse = m + log l, out = acc (1 / l)."""
    HS = C // NH
    scale = np.float32(1.0) / np.sqrt(np.float32(HS))
    stride = 3 * C
    qkv = qkv.reshape(B, T, stride)
    out = np.zeros((B, T, C), np.float32)
    lse = np.zeros((B, NH, T), np.float32)
    mask = np.tril(np.ones((T, T), bool))
    rows = np.arange(T)
    for b in range(B):
        for h in range(NH):
            q = bf16(qkv[b, :, h * HS:(h + 1) * HS])
            k = bf16(qkv[b, :, C + h * HS:C + (h + 1) * HS])
            v = bf16(qkv[b, :, 2 * C + h * HS:2 * C + (h + 1) * HS])
            s = (scale * _seqdot(q, k)).astype(np.float32)
            s = np.where(mask, s, -np.inf).astype(np.float32)
            m = np.full(T, -np.inf, np.float32)
            l = np.zeros(T, np.float32)
            acc = np.zeros((T, HS), np.float32)
            for j0 in range(0, T, KEY_TILE):
                j1 = min(T, j0 + KEY_TILE)
                act = rows >= j0  # the rows that reach this tile (they all see key j0)
                tile_max = s[:, j0:j1].max(1)
                m_new = np.maximum(m, tile_max).astype(np.float32)
                rescale = _expf((m - m_new).astype(np.float32))
                acc = np.where(act[:, None], (acc * rescale[:, None]).astype(np.float32), acc)
                tsum = np.zeros(T, np.float32)
                for j in range(j0, j1):
                    p = _expf((s[:, j] - m_new).astype(np.float32))
                    on = act & mask[:, j]
                    tsum = np.where(on, (tsum + p).astype(np.float32), tsum)
                    pb = np.where(on, bf16(p), 0).astype(np.float32)
                    acc = (acc + pb[:, None] * v[j][None, :]).astype(np.float32)
                l = np.where(act, ((l * rescale).astype(np.float32) + tsum).astype(np.float32), l)
                m = np.where(act, m_new, m)
            lse[b, h] = (m + np.log(l.astype(np.float64)).astype(np.float32)).astype(np.float32)
            inv = (np.float32(1) / l).astype(np.float32)
            out[b, :, h * HS:(h + 1) * HS] = (acc * inv[:, None]).astype(np.float32)
    return out.ravel(), lse.ravel()


def bf16_cpu_backward(dout, qkv, out, lse, B, T, C, NH):
    HS = C // NH
    scale = np.float32(1.0) / np.sqrt(np.float32(HS))
    stride = 3 * C
    qkv = qkv.reshape(B, T, stride)
    dout = dout.reshape(B, T, C)
    out = out.reshape(B, T, C)
    lse = lse.reshape(B, NH, T)
    dqkv = np.zeros((B, T, stride), np.float32)
    mask = np.tril(np.ones((T, T), bool))
    for b in range(B):
        for h in range(NH):
            sl = slice(h * HS, (h + 1) * HS)
            q = bf16(qkv[b, :, sl])
            k = bf16(qkv[b, :, C + h * HS:C + (h + 1) * HS])
            v = bf16(qkv[b, :, 2 * C + h * HS:2 * C + (h + 1) * HS])
            g = bf16(dout[b, :, sl])
            D = np.zeros(T, np.float32)
            for d in range(HS):
                D = (D + dout[b, :, sl][:, d] * out[b, :, sl][:, d]).astype(np.float32)
            p = _expf((scale * _seqdot(q, k)).astype(np.float32) - lse[b, h][:, None])
            dp = _seqdot(g, v)
            ds = bf16((p * (dp - D[:, None])).astype(np.float32))
            pb = bf16(p)
            ds = np.where(mask, ds, 0).astype(np.float32)
            pb = np.where(mask, pb, 0).astype(np.float32)
            dq = np.zeros((T, HS), np.float32)
            dk = np.zeros((T, HS), np.float32)
            dv = np.zeros((T, HS), np.float32)
            for j in range(T):  # dq[i] += ds[i,j] k[j], j ascending
                dq = (dq + ds[:, j][:, None] * k[j][None, :]).astype(np.float32)
            for i in range(T):  # dk[j] += ds[i,j] q[i], i ascending
                dk = (dk + ds[i][:, None] * q[i][None, :]).astype(np.float32)
                dv = (dv + pb[i][:, None] * g[i][None, :]).astype(np.float32)
            dqkv[b, :, sl] = scale * dq
            dqkv[b, :, C + h * HS:C + (h + 1) * HS] = scale * dk
            dqkv[b, :, 2 * C + h * HS:2 * C + (h + 1) * HS] = dv
    return dqkv.ravel()


def _mma_chain(a, b):
    """a (I, K), b (K, J), bf16 values: the fp32 accumulator of mma.m16n8k16 over K in slices of
    16 ascending, d = fp32(a[:, c] . b[c] + d) from d = 0 (the emulator's model of mma: the 16
    products and the accumulator summed in float64, which holds them exactly unless their
    exponents spread over ~30 binades, then rounded once to fp32)."""
    d = np.zeros((a.shape[0], b.shape[1]), np.float32)
    for c in range(0, a.shape[1], 16):
        d = (a[:, c:c + 16].astype(np.float64) @ b[c:c + 16].astype(np.float64) + d).astype(np.float32)
    return d


def fused_dq_order(qkv, dout, lse, dvec, B, T, C, NH):
    """The fused dq's intended sum, from numpy alone (no emulated kernel): per head, dS^T as the
    key-major kernel forms it (S^T = K Q^T and dP^T = V dout^T in mma slices of 16 over the head
    size, P = exp2(scale log2e s - fp32(lse log2e)) where i >= j, i < T, dS = P (dP - D) in fp32,
    rounded to bf16); then for each query tile i, over key blocks b = 0..i in order,
    part_b = dS[tile i, block b] K[block b] (mma slices of 16 over the 64 keys), acc = part_0,
    acc = part_b + acc (fp32), dq = fp32(scale acc). lse and dvec: the kernels' (fp32).
    Returns dq (B, T, C) and, per output element, sum |terms| of dq, dk and dv (float64: the
    exact products' absolute sums |dS| |K|, |dS|^T |Q|, |bf16(P)|^T |dout16|) for error bounds."""
    HS = C // NH
    scale = np.float32(1.0) / np.sqrt(np.float32(HS))
    sl = scale * np.float32(1.4426950408889634)
    nt = -(-T // KEY_TILE)
    Tp = nt * KEY_TILE  # zero rows past T, as the tiles are loaded
    x = np.asarray(qkv, np.float32).reshape(B, T, 3, NH, HS)
    gd = np.asarray(dout, np.float32).reshape(B, T, NH, HS)
    lse = np.asarray(lse, np.float32).reshape(B, NH, T)
    dvec = np.asarray(dvec, np.float32).reshape(B, NH, T)
    dq = np.zeros((B, T, NH, HS), np.float32)
    absum = {n: np.zeros((B, T, NH, HS)) for n in ("dq", "dk", "dv")}
    i = np.arange(Tp)[None, :]  # queries (columns of the transposed tiles)
    j = np.arange(Tp)[:, None]  # keys
    valid = (i < T) & (i >= j)
    pad = ((0, Tp - T), (0, 0))
    for b in range(B):
        for h in range(NH):
            q, k, v = (np.pad(bf16(x[b, :, p, h]), pad) for p in range(3))
            g = np.pad(bf16(gd[b, :, h]), pad)
            lse2 = np.pad((lse[b, h] * np.float32(1.4426950408889634)).astype(np.float32), (0, Tp - T))
            d = np.pad(dvec[b, h], (0, Tp - T))
            st = _mma_chain(k, q.T)  # (keys, queries)
            dpt = _mma_chain(v, g.T)
            e = exp2f(fmaf(sl, st, -lse2[None, :]))  # the kernels' fp32 fmaf and exp2f
            p = np.where(valid, e, np.float32(0)).astype(np.float32)
            dst = (p * (dpt - d[None, :]).astype(np.float32)).astype(np.float32)
            ds = bf16(dst).T  # (queries, keys)
            for ti in range(nt):
                r = slice(ti * KEY_TILE, (ti + 1) * KEY_TILE)
                acc = None
                for kb in range(ti + 1):
                    c = slice(kb * KEY_TILE, (kb + 1) * KEY_TILE)
                    part = _mma_chain(ds[r, c], k[c])
                    acc = part if acc is None else (part + acc).astype(np.float32)
                rows = min(T, (ti + 1) * KEY_TILE) - ti * KEY_TILE
                dq[b, ti * KEY_TILE:ti * KEY_TILE + rows, h] = (scale * acc[:rows]).astype(np.float32)
            a = np.abs(ds.astype(np.float64))
            absum["dq"][b, :, h] = (a @ np.abs(k.astype(np.float64)))[:T]
            absum["dk"][b, :, h] = (a.T @ np.abs(q.astype(np.float64)))[:T]
            absum["dv"][b, :, h] = (np.abs(bf16(p).astype(np.float64)) @ np.abs(g.astype(np.float64)))[:T]
    return dq.reshape(B, T, C), {n: a.reshape(B, T, C) for n, a in absum.items()}
