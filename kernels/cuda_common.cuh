// What every CUDA source of the backend shares: checks that turn CUDA errors and broken launcher
// assumptions into mixsim errors naming the source line, CEIL_DIV, grid sizes, and the warp
// reductions (butterflies, so that every lane holds the same, deterministic result).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "mixsim/core/error_types.hpp"

#define CEIL_DIV(a, b) (((a) + (b)-1) / (b))

namespace mixsim::cuda {

inline void cuda_check(cudaError_t rc, const char* what, const char* file, int line) {
  if (rc != cudaSuccess)
    throw Error(std::string("CUDA error in ") + what + " at " + file + ":" + std::to_string(line) +
                ": " + cudaGetErrorString(rc) + " (" + std::to_string(static_cast<int>(rc)) + ")");
}

// "B=2 T=37 C=72": the dimensions a failed check reports.
inline std::string dims(std::initializer_list<std::pair<const char*, long long>> values) {
  std::string s;
  for (const auto& [name, value] : values) {
    if (!s.empty()) s += ' ';
    s += std::string(name) + "=" + std::to_string(value);
  }
  return s;
}

// A launcher's assumption about its arguments; a failure is a bug in the caller (the model
// passes shapes the op cannot handle), reported with the op, the rule and the values.
inline void require(bool ok, const char* op, const char* rule, const std::string& values,
                    const char* file, int line) {
  if (!ok)
    throw Error(std::string(op) + ": needs " + rule + ", got " + values + " (" + file + ":" +
                std::to_string(line) + ")");
}

}  // namespace mixsim::cuda

#define CUDA_CHECK(call) ::mixsim::cuda::cuda_check((call), #call, __FILE__, __LINE__)
// After every launch: a bad configuration (grid, block, shared memory) is reported here.
#define CUDA_CHECK_LAUNCH(kernel) \
  ::mixsim::cuda::cuda_check(cudaGetLastError(), "launch of " #kernel, __FILE__, __LINE__)
#define CUDA_REQUIRE(cond, op, values) \
  ::mixsim::cuda::require((cond), op, #cond, (values), __FILE__, __LINE__)

namespace mixsim::cuda {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarpSize = 32;

// Sum over the 32 lanes. Each step adds the same two values on both lanes of a pair (addition
// commutes exactly), so all lanes end with the identical value.
__device__ inline float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

__device__ inline float warp_max(float v) {
  for (int offset = 16; offset > 0; offset >>= 1)
    v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset));
  return v;
}

// 2^x on the hardware's ex2 (MUFU.EX2, ~2 ulp): one instruction, results below 2^-126 flushed to
// zero. exp2f keeps those subnormal results, which on sm_90 costs a range test and two
// multiplies around the same ex2.
__device__ inline float exp2_ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Stores an fp32 value as the output's element type: as is, or rounded to bf16 (nearest even).
__device__ inline void store(float* p, float v) {
  *p = v;
}
__device__ inline void store(__nv_bfloat16* p, float v) {
  *p = __float2bfloat16_rn(v);
}
// Loads an element as fp32 (a bf16 one widened, exact).
__device__ inline float load(const float* p) {
  return *p;
}
__device__ inline float load(const __nv_bfloat16* p) {
  return __bfloat162float(*p);
}

// An element's value as fp32 (a bf16 one widened, exact), and an fp32 value as T (as is, or
// rounded to the nearest bf16, ties to even): by value, for elements held in registers (Pack).
__device__ inline float widen(float x) {
  return x;
}
__device__ inline float widen(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
template <class T>
__device__ inline T narrow(float x) {
  if constexpr (std::is_same_v<T, float>)
    return x;
  else
    return __float2bfloat16_rn(x);
}

// N elements of T moved as one access of N * sizeof(T) bytes (a 16-byte load of four floats or
// eight bf16, an 8-byte one of four bf16).
template <class T, int N>
struct alignas(sizeof(T) * N) Pack {
  T e[N];
};

// Whether every array is aligned to K of its elements, so that Pack<T, K> accesses at multiples
// of K elements from it are aligned.
template <int K, class... T>
__host__ __device__ bool aligned_to(const T*... arrays) {
  return ((reinterpret_cast<std::uintptr_t>(arrays) % (K * sizeof(T)) == 0) && ...);
}

// Elementwise kernels take four elements at a time (Pack<T, 4>: fewer, wider accesses, which a
// memory-bound loop needs to keep the memory busy) where every array is aligned to four of its
// elements, and the rest one at a time: groups4() is the number of groups of four (0 where some
// array is not so aligned); the kernel runs elements [4 groups, n) one by one.
template <class... T>
std::size_t groups4(std::size_t n, const T*... arrays) {
  return aligned_to<4>(arrays...) ? n / 4 : 0;
}

// The grid-stride loop of such a kernel: group(i) for each group of four i < n4 (elements 4 i to
// 4 i + 3), then one(i) for each element i of [4 n4, n).
template <class Group, class One>
__device__ void for_groups4(std::size_t n4, std::size_t n, Group&& group, One&& one) {
  const std::size_t stride = std::size_t(gridDim.x) * blockDim.x;
  const std::size_t first = std::size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  for (std::size_t i = first; i < n4; i += stride) group(i);
  for (std::size_t i = 4 * n4 + first; i < n; i += stride) one(i);
}

// Group i of four elements of an array (aligned_to<4>).
template <class T>
__device__ Pack<T, 4> load4(const T* p, std::size_t i) {
  return reinterpret_cast<const Pack<T, 4>*>(p)[i];
}

// out[i] = f(in[i]...) for i < n, each input widened to fp32 and the result stored as Out, by
// groups of four first (n4 of them, groups4() of out and every input): the same f, element by
// element, either way. Each element is read before it is written, by one thread, so out may
// alias an input of its type.
template <class Out, class F, class... In>
__device__ void map_elements(Out* out, std::size_t n4, std::size_t n, F&& f, const In*... in) {
  for_groups4(
      n4, n,
      [&](std::size_t i) {
        Pack<Out, 4> y;
        [&](const auto&... x) {
#pragma unroll
          for (int k = 0; k < 4; ++k) y.e[k] = narrow<Out>(f(widen(x.e[k])...));
        }(load4(in, i)...);
        reinterpret_cast<Pack<Out, 4>*>(out)[i] = y;
      },
      [&](std::size_t i) { out[i] = narrow<Out>(f(widen(in[i])...)); });
}

// Raises a function attribute of `kernel` on the current device to `value`, unless a call has
// already set it to `value` or more: attributes stay set, so each is set once per kernel, device
// and attribute (at its largest value asked), not at every launch.
template <class Kernel>
void raise_attribute(Kernel kernel, cudaFuncAttribute attribute, int value) {
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  static std::mutex mutex;
  static std::map<std::tuple<const void*, int, int>, int> set;  // per Kernel type
  const std::lock_guard<std::mutex> lock(mutex);
  const auto [at, fresh] =
      set.try_emplace({reinterpret_cast<const void*>(kernel), device, int(attribute)}, 0);
  if (!fresh && value <= at->second) return;
  CUDA_CHECK(cudaFuncSetAttribute(kernel, attribute, value));
  at->second = value;
}

// A kernel that takes more than the default 48 KiB of dynamic shared memory per block must opt
// in to it, per kernel (up to the device's limit, cudaDevAttrMaxSharedMemoryPerBlockOptin): to
// the largest size asked so far (the attention kernels launch three times a layer).
template <class Kernel>
void allow_dynamic_shared(Kernel kernel, std::size_t bytes) {
  if (bytes <= 48 * 1024) return;
  raise_attribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
}

// Asks for the largest split of L1 and shared memory for `kernel`, so that as many of its blocks
// as their shared memory allows are resident together.
template <class Kernel>
void prefer_shared_memory(Kernel kernel) {
  raise_attribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                  int(cudaSharedmemCarveoutMaxShared));
}

// Whether p can be read and written as float4 / uint4 (16-byte vectors).
__host__ __device__ inline bool aligned16(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p) % 16 == 0;
}

// Blocks for an elementwise grid-stride loop over n elements: enough to fill any GPU, capped so
// that the grid size fits every launch limit.
inline unsigned elementwise_blocks(std::size_t n, int threads) {
  const std::size_t blocks = CEIL_DIV(n, std::size_t(threads));
  const std::size_t cap = std::size_t(1) << 16;
  return static_cast<unsigned>(blocks < cap ? blocks : cap);
}

}  // namespace mixsim::cuda
