"""(a) float64 causal attention, (b) numpy port of src/backend/cpu/attention_bf16.cpp (fp32,
same loop orders, bf16 roundings): a forward in one pass over key tiles of 64 with a running max
(as kernels/attention_tc.cu), and the backward from the saved lse."""
import numpy as np

from ptx import bf16


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
