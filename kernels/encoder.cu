// Token and position embedding. The backward pass adds rows of dout into the rows of dwte named
// by the tokens, which repeat; instead of atomics (whose order varies between runs) the positions
// are sorted by token with a stable radix sort, and one block per distinct token adds that
// token's rows in position order: the same order as the CPU backend, so the sums are identical.
#include <cub/device/device_radix_sort.cuh>

#include "launchers.cuh"

namespace mixsim::cuda {

namespace {

constexpr int kThreads = 256;

__global__ void encoder_forward_kernel(float* out, const int* tokens, const float* wte,
                                       const float* wpe, int T, int C, std::size_t n) {
  const std::size_t stride = std::size_t(gridDim.x) * blockDim.x;
  for (std::size_t i = std::size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const std::size_t bt = i / C;
    const std::size_t c = i % C;
    const std::size_t t = bt % T;
    out[i] = wte[std::size_t(tokens[bt]) * C + c] + wpe[t * C + c];
  }
}

__global__ void iota_kernel(int* values, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) values[i] = i;
}

constexpr int kRowsInFlight = 8;  // dout rows loaded before they are added (in order)

// Block x = one entry of the sorted (token, position) list; only the first entry of each token
// works: it adds the rows of all positions of that token, in position order, to the token's row.
// Block y = a slice of kThreads channels. A frequent token has a long run (a byte-level model's
// space: ~1,400 of 8,192 positions), so the block first finds the run's end, kThreads entries
// at a time, and then loads kRowsInFlight rows before adding them: the loads overlap, where a
// loop that tested each entry's token before its load waited on one load at a time. The adds
// stay one per row, in position order.
__global__ void __launch_bounds__(kThreads)
    encoder_backward_wte_kernel(float* dwte, const float* dout, const int* sorted_tokens,
                                const int* sorted_positions, int N, int C) {
  const int s = blockIdx.x;
  const int token = sorted_tokens[s];
  if (s > 0 && sorted_tokens[s - 1] == token) return;  // the whole block
  // The run is [s, end): the entries of a stride equal to the token are a prefix of it (sorted).
  int end = s + 1;
  for (int base = s + 1;; base += kThreads) {
    const int e = base + int(threadIdx.x);
    const int same = __syncthreads_count(e < N && sorted_tokens[e] == token);
    end = base + same;
    if (same < kThreads) break;
  }
  const int c = blockIdx.y * kThreads + threadIdx.x;
  if (c >= C) return;
  float* row = dwte + std::size_t(token) * C;
  float acc = row[c];
  int e = s;
  for (; e + kRowsInFlight <= end; e += kRowsInFlight) {
    float v[kRowsInFlight];
#pragma unroll
    for (int k = 0; k < kRowsInFlight; ++k)
      v[k] = dout[std::size_t(sorted_positions[e + k]) * C + c];
#pragma unroll
    for (int k = 0; k < kRowsInFlight; ++k) acc += v[k];
  }
  for (; e < end; ++e) acc += dout[std::size_t(sorted_positions[e]) * C + c];
  row[c] = acc;
}

// One thread per (t, c): dwpe[t, c] += dout[b, t, c] for b = 0..B-1 in order.
__global__ void encoder_backward_wpe_kernel(float* dwpe, const float* dout, int B, int T, int C) {
  const std::size_t i = std::size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= std::size_t(T) * C) return;
  float acc = dwpe[i];
  for (int b = 0; b < B; ++b) acc += dout[std::size_t(b) * T * C + i];
  dwpe[i] = acc;
}

std::size_t sort_temp_bytes(int N) {
  std::size_t bytes = 0;
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, bytes, static_cast<const int*>(nullptr), static_cast<int*>(nullptr),
      static_cast<const int*>(nullptr), static_cast<int*>(nullptr), N));
  return bytes;
}

void check_dims(const char* op, int B, int T, int C) {
  CUDA_REQUIRE(B > 0 && T > 0 && C > 0, op, dims({{"B", B}, {"T", T}, {"C", C}}));
}

}  // namespace

void encoder_forward(float* out, const int* tokens, const float* wte, const float* wpe, int B,
                     int T, int C, cudaStream_t stream) {
  check_dims("encoder_forward", B, T, C);
  const std::size_t n = std::size_t(B) * T * C;
  encoder_forward_kernel<<<elementwise_blocks(n, kThreads), kThreads, 0, stream>>>(out, tokens, wte,
                                                                                   wpe, T, C, n);
  CUDA_CHECK_LAUNCH(encoder_forward_kernel);
}

std::size_t encoder_backward_workspace(int B, int T) {
  const int N = B * T;
  return 3 * Workspace::aligned(std::size_t(N) * sizeof(int)) +
         Workspace::aligned(sort_temp_bytes(N));
}

void encoder_backward(float* dwte, float* dwpe, const float* dout, const int* tokens, int B, int T,
                      int C, Workspace ws, cudaStream_t stream) {
  check_dims("encoder_backward", B, T, C);
  const long long rows = static_cast<long long>(B) * T;
  CUDA_REQUIRE(rows < (1LL << 31) - 1, "encoder_backward", dims({{"B*T", rows}}));
  const int N = B * T;
  int* positions = ws.take<int>(N);
  int* sorted_tokens = ws.take<int>(N);
  int* sorted_positions = ws.take<int>(N);
  std::size_t temp_bytes = sort_temp_bytes(N);
  void* temp = ws.take<char>(temp_bytes);

  iota_kernel<<<CEIL_DIV(N, kThreads), kThreads, 0, stream>>>(positions, N);
  CUDA_CHECK_LAUNCH(iota_kernel);
  // Radix sort is stable: positions of one token stay in increasing order.
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, tokens, sorted_tokens, positions,
                                             sorted_positions, N, 0, int(sizeof(int) * 8), stream));
  const dim3 grid(N, CEIL_DIV(C, kThreads));
  CUDA_REQUIRE(grid.y <= 65535u, "encoder_backward (grid.y)", dims({{"C", C}}));
  encoder_backward_wte_kernel<<<grid, kThreads, 0, stream>>>(dwte, dout, sorted_tokens,
                                                             sorted_positions, N, C);
  CUDA_CHECK_LAUNCH(encoder_backward_wte_kernel);
  const std::size_t tc = std::size_t(T) * C;
  encoder_backward_wpe_kernel<<<unsigned(CEIL_DIV(tc, std::size_t(kThreads))), kThreads, 0,
                                stream>>>(dwpe, dout, B, T, C);
  CUDA_CHECK_LAUNCH(encoder_backward_wpe_kernel);
}

}  // namespace mixsim::cuda
