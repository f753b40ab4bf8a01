// Causal attention with the bf16 roundings of kernels/attention_tc.cu, for cpu-bf16 (unless
// MIXSIM_TC_ATTENTION=0): the CPU reference of the tensor-core kernels. q, k, v and dout are
// rounded to bf16; forward walks the keys in the kernel's tiles of 64 with a running max m (fp32
// scores from the rounded q, k), rounds P = exp(scale s - m) to bf16 before P v, rescales the
// sums when m grows and divides by the fp32 sum of P at the end; backward rounds dS = P (dP - D)
// and P to bf16 before their products, with dP from the rounded dout and v and D = dout . out in
// fp32. Sums are fp32, in a fixed order (rows, then keys), one (batch, head) per OpenMP iteration.
// A plain O(T^2 HS) loop per head: a reference, not a fast path.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

#include "mixsim/backend/cpu_kernels.hpp"
#include "parallel.hpp"

namespace mixsim::cpu {

namespace {

// The (T, HS) rows of one head of a (B,T,stride) tensor, rounded to bf16.
void rounded_rows(std::vector<float>& rows, const float* src, std::size_t stride, int T, int HS) {
  rows.resize(std::size_t(T) * HS);
  for (int t = 0; t < T; ++t)
    for (int d = 0; d < HS; ++d)
      rows[std::size_t(t) * HS + d] = round_to_bf16(src[std::size_t(t) * stride + d]);
}

float dot(const float* a, const float* b, int n) {
  float s = 0.f;
  for (int d = 0; d < n; ++d) s += a[d] * b[d];
  return s;
}

// The keys the tensor-core forward kernel takes at a time (kRows in attention_tc.cu): where its
// running max, and so the rounding of P, is updated.
constexpr int kKeyTile = 64;

}  // namespace

bool attention_bf16_supported(int C, int NH) {
  if (NH <= 0 || C % NH != 0) return false;
  const int HS = C / NH;
  return HS >= 16 && HS <= 128 && HS % 16 == 0;
}

void attention_bf16_forward(float* out, float* lse, const float* qkv, int B, int T, int C, int NH) {
  const int HS = C / NH;
  const float scale = 1.0f / std::sqrt(float(HS));
  const std::size_t stride = 3 * std::size_t(C);
#pragma omp parallel
  {
    std::vector<float> q, k, v, s(T), acc(HS);
#pragma omp for schedule(dynamic)
    for (int bh = 0; bh < B * NH; ++bh) {
      const int b = bh / NH, h = bh % NH;
      const float* base = qkv + std::size_t(b) * T * stride + std::size_t(h) * HS;
      rounded_rows(q, base, stride, T, HS);
      rounded_rows(k, base + C, stride, T, HS);
      rounded_rows(v, base + 2 * C, stride, T, HS);
      for (int i = 0; i < T; ++i) {
        // key tiles of kKeyTile, as the kernel walks them: running max m and sum l, and acc
        // rescaled by exp(m_old - m_new) whenever the max grows
        float m = -INFINITY, l = 0.f;
        std::fill(acc.begin(), acc.end(), 0.f);
        for (int j0 = 0; j0 <= i; j0 += kKeyTile) {
          const int j1 = std::min(i + 1, j0 + kKeyTile);
          float tile_max = -INFINITY;
          for (int j = j0; j < j1; ++j) {
            s[j] = scale * dot(&q[std::size_t(i) * HS], &k[std::size_t(j) * HS], HS);
            tile_max = std::max(tile_max, s[j]);
          }
          const float m_new = std::max(m, tile_max), rescale = std::exp(m - m_new);
          float sum = 0.f;
          for (float& a : acc) a *= rescale;
          for (int j = j0; j < j1; ++j) {
            const float p = std::exp(s[j] - m_new);
            sum += p;
            const float pb = round_to_bf16(p);
            for (int d = 0; d < HS; ++d) acc[d] += pb * v[std::size_t(j) * HS + d];
          }
          l = l * rescale + sum;
          m = m_new;
        }
        if (lse) lse[(std::size_t(b) * NH + h) * T + i] = m + std::log(l);
        const float inv = 1.f / l;
        float* dst = out + (std::size_t(b) * T + i) * C + std::size_t(h) * HS;
        for (int d = 0; d < HS; ++d) dst[d] = acc[d] * inv;
      }
    }
  }
}

void attention_bf16_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                             const float* lse, int B, int T, int C, int NH) {
  const int HS = C / NH;
  const float scale = 1.0f / std::sqrt(float(HS));
  const std::size_t stride = 3 * std::size_t(C);
#pragma omp parallel
  {
    std::vector<float> q, k, v, g, dq(std::size_t(T) * HS), dk(dq.size()), dv(dq.size());
#pragma omp for schedule(dynamic)
    for (int bh = 0; bh < B * NH; ++bh) {
      const int b = bh / NH, h = bh % NH;
      const float* base = qkv + std::size_t(b) * T * stride + std::size_t(h) * HS;
      const std::size_t row0 =
          std::size_t(b) * T * C + std::size_t(h) * HS;  // (b, 0, h) of (B,T,C)
      rounded_rows(q, base, stride, T, HS);
      rounded_rows(k, base + C, stride, T, HS);
      rounded_rows(v, base + 2 * C, stride, T, HS);
      rounded_rows(g, dout + row0, C, T, HS);
      std::fill(dq.begin(), dq.end(), 0.f);
      std::fill(dk.begin(), dk.end(), 0.f);
      std::fill(dv.begin(), dv.end(), 0.f);
      for (int i = 0; i < T; ++i) {
        const float* dout_i = dout + row0 + std::size_t(i) * C;
        const float D = dot(dout_i, out + row0 + std::size_t(i) * C, HS);
        const float row_lse = lse[(std::size_t(b) * NH + h) * T + i];
        const float* qi = &q[std::size_t(i) * HS];
        const float* gi = &g[std::size_t(i) * HS];
        for (int j = 0; j <= i; ++j) {
          const float* kj = &k[std::size_t(j) * HS];
          const float p = std::exp(scale * dot(qi, kj, HS) - row_lse);
          const float dp = dot(gi, &v[std::size_t(j) * HS], HS);
          const float ds = round_to_bf16(p * (dp - D)), pb = round_to_bf16(p);
          for (int d = 0; d < HS; ++d) {
            dq[std::size_t(i) * HS + d] += ds * kj[d];
            dk[std::size_t(j) * HS + d] += ds * qi[d];
            dv[std::size_t(j) * HS + d] += pb * gi[d];
          }
        }
      }
      for (int t = 0; t < T; ++t) {
        float* row = dqkv + (std::size_t(b) * T + t) * stride + std::size_t(h) * HS;
        for (int d = 0; d < HS; ++d) {
          row[d] = scale * dq[std::size_t(t) * HS + d];
          row[C + d] = scale * dk[std::size_t(t) * HS + d];
          row[2 * C + d] = dv[std::size_t(t) * HS + d];
        }
      }
    }
  }
}

}  // namespace mixsim::cpu
