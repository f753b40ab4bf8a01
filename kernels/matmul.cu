// Matrix products through cuBLAS (cublasGemmEx): in full fp32 (no TF32: results compare to the
// CPU backend), or in bf16: both operands are rounded to bf16 into the workspace (one pass over
// each, a small cost next to the product) and multiplied on tensor cores with fp32 accumulation
// into the fp32 output. Explicit operands, because CUBLAS_COMPUTE_32F_FAST_16BF on fp32 matrices
// leaves the tensor-core format to cuBLAS (on an H100 its error was TF32's, 2.9e-4, not bf16's).
// cuBLAS is column-major: a row-major (R, K) matrix is its column-major (K, R) transpose, so
// out (N,OC) = inp (N,C) @ weight^T is computed as out^T (OC,N) = weight (OC,C) . inp^T (C,N).
//
// With MIXSIM_CUBLASLT on (an LtMatmul per backend; the default for cuda-bf16, =1 for cuda too),
// the products whose result goes through more work go through cuBLASLt instead, the work fused into
// the product's epilogue: the bias (forward with bias), bias then GELU keeping the GELU's input
// (matmul_gelu_forward), and the GELU's gradient (the dinp product of gelu_matmul_backward). Same
// operands, same fp32 accumulation and output; cuBLASLt's GELU is GPT-2's tanh form, in its own
// fp32 arithmetic. (A bf16 GELU output is left to the GELU kernel: cuBLASLt's aux matrix would be
// bf16 too.) Where cuBLASLt has no algorithm for a problem (its heuristic returns none), the
// product runs as without it, followed by the separate kernels, and LtMatmul counts the fallback
// (cublaslt_use).
#include <cublasLt.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <map>

#include "launchers.cuh"

namespace mixsim::cuda {

namespace {

void cublas_check(cublasStatus_t status, const char* what, const char* file, int line) {
  if (status != CUBLAS_STATUS_SUCCESS)
    throw Error(std::string("cuBLAS error in ") + what + " at " + file + ":" +
                std::to_string(line) + ": " + cublasGetStatusString(status));
}
#define CUBLAS_CHECK(call) cublas_check((call), #call, __FILE__, __LINE__)

constexpr int kThreads = 256;

// The most workspace a cuBLASLt algorithm may use (split-K partials and the like): what the
// heuristic is told, and what the workspace size functions add when cuBLASLt is on.
constexpr std::size_t kLtWorkspaceBytes = std::size_t(32) << 20;

template <class T>
__global__ void broadcast_bias_kernel(T* out, const T* bias, int OC, std::size_t n) {
  const std::size_t stride = std::size_t(gridDim.x) * blockDim.x;
  for (std::size_t i = std::size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    out[i] = bias[i % OC];
}

// An operand of a product as the products take it: in fp32 precision fp32, in bf16 precision
// bf16. A tensor stored that way is used as it is; otherwise it is converted into the workspace
// (rounded to bf16, or a bf16 tensor widened: exact).
struct Operand {
  const void* data;
  cudaDataType_t type;
};

Operand operand(MatmulPrecision precision, TensorIn x, std::size_t n, Workspace& ws,
                cudaStream_t stream) {
  if (precision == MatmulPrecision::fp32) {
    if (x.type == DType::fp32) return {x.data, CUDA_R_32F};
    float* wide = ws.take<float>(n);
    from_bf16(wide, static_cast<const __nv_bfloat16*>(x.data), n, stream);
    return {wide, CUDA_R_32F};
  }
  if (x.type == DType::bf16) return {x.data, CUDA_R_16BF};
  __nv_bfloat16* copy = ws.take<__nv_bfloat16>(n);
  to_bf16(copy, static_cast<const float*>(x.data), n, stream);
  return {copy, CUDA_R_16BF};
}

// The workspace operand() takes for n elements stored as `stored`.
std::size_t operand_bytes(MatmulPrecision precision, DType stored, std::size_t n) {
  if (precision == MatmulPrecision::fp32)
    return stored == DType::fp32 ? 0 : Workspace::aligned(n * sizeof(float));
  return stored == DType::bf16 ? 0 : Workspace::aligned(n * sizeof(__nv_bfloat16));
}

// A product's result: fp32, or bf16 (bf16 operands only), rounded from the fp32 accumulation.
struct Output {
  void* data;
  cudaDataType_t type;
};
Output output(float* p) {
  return {p, CUDA_R_32F};
}
Output output(TensorOut t) {
  return {t.data, t.type == DType::bf16 ? CUDA_R_16BF : CUDA_R_32F};
}

// C (m,n) = alpha op(A) op(B) + beta C, column-major; A and B fp32 or bf16 (both the same), C
// fp32 or (with bf16 operands) bf16, accumulated in fp32.
void gemm(cublasHandle_t handle, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
          float alpha, Operand A, int lda, Operand B, int ldb, float beta, Output C, int ldc) {
  CUBLAS_CHECK(cublasGemmEx(handle, ta, tb, m, n, k, &alpha, A.data, A.type, lda, B.data, B.type,
                            ldb, &beta, C.data, C.type, ldc, CUBLAS_COMPUTE_32F,
                            CUBLAS_GEMM_DEFAULT));
}

void check_dims(const char* op, int N, int C, int OC) {
  CUDA_REQUIRE(N > 0 && C > 0 && OC > 0, op, dims({{"N", N}, {"C", C}, {"OC", OC}}));
}

// Owner of one cuBLASLt descriptor object.
template <class Handle, cublasStatus_t (*Destroy)(Handle)>
class LtObject {
 public:
  LtObject() = default;
  ~LtObject() {
    if (handle_) Destroy(handle_);
  }
  LtObject(const LtObject&) = delete;
  LtObject& operator=(const LtObject&) = delete;
  Handle* out() { return &handle_; }
  Handle get() const { return handle_; }

 private:
  Handle handle_ = nullptr;
};
using LtDesc = LtObject<cublasLtMatmulDesc_t, cublasLtMatmulDescDestroy>;
using LtLayout = LtObject<cublasLtMatrixLayout_t, cublasLtMatrixLayoutDestroy>;
using LtPreference = LtObject<cublasLtMatmulPreference_t, cublasLtMatmulPreferenceDestroy>;

template <class T>
void set_attribute(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t what, const T& value) {
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, what, &value, sizeof(value)));
}
template <class T>
void set_attribute(cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t what,
                   const T& value) {
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, what, &value, sizeof(value)));
}

// The largest power of two up to 256 that divides the address: what the heuristic is told of each
// matrix (it assumes 256 otherwise), and part of the key of its answer.
std::uint32_t alignment(const void* p) {
  const auto address = reinterpret_cast<std::uintptr_t>(p);
  std::uint32_t align = 256;
  while (align > 1 && address % align != 0) align >>= 1;
  return align;
}

const char* epilogue_name(cublasLtEpilogue_t kind) {
  switch (kind) {
    case CUBLASLT_EPILOGUE_BIAS:
      return "BIAS";
    case CUBLASLT_EPILOGUE_GELU_AUX:
      return "GELU_AUX";
    case CUBLASLT_EPILOGUE_GELU_AUX_BIAS:
      return "GELU_AUX_BIAS";
    case CUBLASLT_EPILOGUE_DGELU:
      return "DGELU";
    default:
      return "DEFAULT";
  }
}

// A CUDA event for timing, destroyed with its scope.
class TimingEvent {
 public:
  TimingEvent() { CUDA_CHECK(cudaEventCreate(&e)); }
  ~TimingEvent() { cudaEventDestroy(e); }
  TimingEvent(const TimingEvent&) = delete;
  TimingEvent& operator=(const TimingEvent&) = delete;
  cudaEvent_t e = nullptr;
};

// What a product's epilogue does after the fp32 accumulation, with its vectors and matrices.
struct Epilogue {
  cublasLtEpilogue_t kind = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;  // BIAS variants: (m), of D's type
  void* aux = nullptr;         // GELU_AUX*: written (the GELU's input); DGELU: read; (m, n), of
                               // D's type
  std::int64_t aux_ld = 0;     // cuBLASLt requires a multiple of 8
};

}  // namespace

// cuBLASLt for one backend: its handle, and the algorithm its heuristic chose for each problem
// (shape, types, epilogue, alignments), so that the heuristic runs once per problem and the same
// problem always runs the same algorithm (deterministic results).
//
// With `tune` (MIXSIM_CUBLASLT_TUNE=1; an opt-in written without a GPU at hand) the heuristic
// names up to kCandidates algorithms, and a problem's first call times each on its own operands
// (beta 0: D and a GELU's aux matrix are written again by the call itself) and keeps the
// fastest. Run 10 (H200) timed the step's plain products at 8.87 ms with the best of eight
// candidates against 9.57 with the first; the epilogue products were not timed, and their
// first choice for the GELU's gradient (an xmma kernel, 93 us a call at GPT-2's fc layer) takes
// 1.6x the plain product's time. The plain products that assign their result (forward without a
// bias, the input gradient without the GELU's) go through cuBLASLt too with `tune`, where
// cublasGemmEx ran: run 10 timed the tied head's forward at 1.03 ms with cuBLAS's choice and 0.88
// with the best of cuBLASLt's eight. The choice stays fixed for the backend's life, so a run's
// results are the same from step to step, but timings decide it: another process may choose
// otherwise, and then a resumed run or another rank's products round differently. So `tune` also
// writes what it chose to a table (LtOptions::tune_out;
// include/mixsim/backend/cublaslt_choices.hpp) which, given back as LtOptions::choices, makes every
// later process run the same choices without timing anything: a choice is the candidate's place in
// the heuristic's answers, which are the same in every process on the same device and cuBLASLt
// version, and it runs only if that candidate still has the configuration the table saw (else the
// heuristic's first, counted as a mismatch). The plain products that assign their result go through
// cuBLASLt where the table names them, and stay with cublasGemmEx elsewhere.
class LtMatmul {
 public:
  explicit LtMatmul(LtOptions options)
      : tune_(options.tune),
        tune_out_(std::move(options.tune_out)),
        choices_(std::move(options.choices)) {
    use_.tune = tune_;
    int device = 0;
    cudaDeviceProp prop{};
    CUDA_CHECK(cudaGetDevice(&device));
    CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    device_ = cublaslt::device_field(prop.name);
    version_ = static_cast<long long>(cublasLtGetVersion());
    // The table that tune_out holds already (its choices kept unless timed again), written back
    // at once: an unreadable or malformed file, or one that cannot be written, stops here.
    if (!tune_out_.empty()) {
      if (std::filesystem::exists(tune_out_)) timed_ = cublaslt::Choices::read(tune_out_);
      timed_.write(tune_out_);
    }
    CUBLAS_CHECK(cublasLtCreate(&handle_));  // (last: nothing above leaks it when it throws)
  }
  ~LtMatmul() { cublasLtDestroy(handle_); }
  LtMatmul(const LtMatmul&) = delete;
  LtMatmul& operator=(const LtMatmul&) = delete;

  // D (m,n) = op(A) op(B), then the epilogue; D is fp32 or bf16 (then the bias and aux matrix
  // are bf16 too, as cuBLASLt requires), column-major with leading dimension ldd, and not read
  // (beta 0). Returns false, having run nothing, when cuBLASLt has no algorithm for the problem
  // or refuses it. `plain`: a product that cublasGemmEx runs as well (no epilogue), taken here
  // only with `tune` or where the choices table names it; false otherwise, and not a fallback.
  bool run(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, Operand A, int lda,
           Operand B, int ldb, Output D, int ldd, const Epilogue& ep, Workspace& ws,
           cudaStream_t stream, bool plain = false) {
    const Key key{m,
                  n,
                  k,
                  ta,
                  tb,
                  A.type,
                  ep.kind,
                  lda,
                  ldb,
                  ldd,
                  alignment(A.data),
                  alignment(B.data),
                  alignment(D.data),
                  ep.bias ? alignment(ep.bias) : 0,
                  ep.aux ? alignment(ep.aux) : 0,
                  ep.aux_ld,
                  D.type};
    // a plain product that the table does not name goes back before any descriptor is made
    if (plain && !tune_ && !table_choice(key)) return false;
    LtDesc desc;
    CUBLAS_CHECK(cublasLtMatmulDescCreate(desc.out(), CUBLAS_COMPUTE_32F, CUDA_R_32F));
    set_attribute(desc.get(), CUBLASLT_MATMUL_DESC_TRANSA, std::int32_t(ta));
    set_attribute(desc.get(), CUBLASLT_MATMUL_DESC_TRANSB, std::int32_t(tb));
    set_attribute(desc.get(), CUBLASLT_MATMUL_DESC_EPILOGUE, std::uint32_t(ep.kind));
    if (ep.bias)
      set_attribute(desc.get(), CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                    static_cast<const void*>(ep.bias));
    if (ep.aux) {
      set_attribute(desc.get(), CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER,
                    static_cast<void*>(ep.aux));
      set_attribute(desc.get(), CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, ep.aux_ld);
    }
    // Stored shapes, before op(): A is (m,k) or, transposed, (k,m); B is (k,n) or (n,k).
    LtLayout a, b, d;
    const bool ta_n = ta == CUBLAS_OP_N, tb_n = tb == CUBLAS_OP_N;
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(a.out(), A.type, ta_n ? m : k, ta_n ? k : m, lda));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(b.out(), B.type, tb_n ? k : n, tb_n ? n : k, ldb));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(d.out(), D.type, m, n, ldd));

    auto found = plans_.find(key);
    if (found == plans_.end())
      found = plans_.emplace(key, plan(desc.get(), a.get(), b.get(), d.get(), key)).first;
    Plan& p = found->second;
    if (!p.found) {
      ++use_.fallbacks;
      use_.last_fallback = p.reason;
      return false;
    }
    // every product, also one of a single candidate, so that its choice is in the table and a
    // process that replays it runs the same algorithm through cuBLASLt
    if (tune_ && !p.ran) choose(p, key, desc.get(), A, a.get(), B, b.get(), D, d.get(), ws, stream);
    // The scratch comes from a copy of ws: the caller's later takes may reuse those bytes (they
    // run after this product in stream order), so a refused call leaves nothing behind.
    Workspace local = ws;
    void* scratch = p.workspace ? local.take<char>(p.workspace) : nullptr;
    const float alpha = 1.f, beta = 0.f;
    const cublasStatus_t status =
        cublasLtMatmul(handle_, desc.get(), &alpha, A.data, a.get(), B.data, b.get(), &beta, D.data,
                       d.get(), D.data, d.get(), &p.algo, scratch, p.workspace, stream);
    // A combination the heuristic let through but the matmul refuses (it checks some rules only
    // here) is refused before anything runs: that problem falls back, now and from then on.
    if (!p.ran &&
        (status == CUBLAS_STATUS_NOT_SUPPORTED || status == CUBLAS_STATUS_INVALID_VALUE)) {
      p.found = false;
      p.reason = std::string("cuBLASLt refused to run ") + describe(key) + ": " +
                 cublasGetStatusString(status);
      ++use_.fallbacks;
      use_.last_fallback = p.reason;
      return false;
    }
    CUBLAS_CHECK(status);
    p.ran = true;
    if (ep.kind != CUBLASLT_EPILOGUE_DEFAULT) ++use_.fused;  // (a plain product: tune's)
    return true;
  }

  // A product that cannot go through cuBLASLt at all (the shape breaks one of its rules).
  void refuse(std::string reason) {
    ++use_.fallbacks;
    use_.last_fallback = std::move(reason);
  }

  const CublasLtUse& use() const { return use_; }

 private:
  using Key = cublaslt::Key;
  // the heuristic's answers asked for (every problem: the first is the same whatever the table or
  // `tune`), and timed with `tune`
  static constexpr int kCandidates = cublaslt::kMaxPick;
  struct Plan {
    bool found = false;
    cublasLtMatmulAlgo_t algo{};
    std::size_t workspace = 0;
    bool ran = false;    // cublasLtMatmul has accepted it once
    std::string reason;  // why not, when not found
    // the heuristic's answers in its order (up to kCandidates), and the count of them
    std::array<cublasLtMatmulHeuristicResult_t, kCandidates> candidates{};
    int count = 0;
  };

  // Times each candidate of p on this call's operands and makes the fastest p's algorithm: a
  // warm-up call of each, then kRounds rounds over all of them, each timing kReps calls, and each
  // candidate's best round counts (rounds, so that a clock still rising while the first
  // candidates run does not count against them). One that cuBLASLt refuses is passed over. The
  // calls write D (and a GELU_AUX epilogue's aux matrix) as the call that follows will again.
  // With tune_out, the choice goes into that file's table at once.
  void choose(Plan& p, const Key& key, cublasLtMatmulDesc_t desc, Operand A,
              cublasLtMatrixLayout_t a, Operand B, cublasLtMatrixLayout_t b, Output D,
              cublasLtMatrixLayout_t d, const Workspace& ws, cudaStream_t stream) {
    constexpr int kReps = 3, kRounds = 3;
    const float alpha = 1.f, beta = 0.f;
    const auto call = [&](int i) {
      const cublasLtMatmulHeuristicResult_t& c = p.candidates[i];
      Workspace local = ws;
      void* scratch = c.workspaceSize ? local.take<char>(c.workspaceSize) : nullptr;
      return cublasLtMatmul(handle_, desc, &alpha, A.data, a, B.data, b, &beta, D.data, d, D.data,
                            d, &c.algo, scratch, c.workspaceSize, stream);
    };
    // each candidate's best round in ms; negative where cuBLASLt refused it (nothing ran)
    std::array<float, kCandidates> best{};
    for (int i = 0; i < p.count; ++i)
      best[i] = call(i) == CUBLAS_STATUS_SUCCESS ? std::numeric_limits<float>::infinity() : -1.f;
    TimingEvent start, stop;
    for (int round = 0; round < kRounds; ++round)
      for (int i = 0; i < p.count; ++i) {
        if (best[i] < 0) continue;
        CUDA_CHECK(cudaEventRecord(start.e, stream));
        for (int r = 0; r < kReps; ++r) CUBLAS_CHECK(call(i));
        CUDA_CHECK(cudaEventRecord(stop.e, stream));
        CUDA_CHECK(cudaEventSynchronize(stop.e));
        float ms = 0.f;
        CUDA_CHECK(cudaEventElapsedTime(&ms, start.e, stop.e));
        best[i] = std::min(best[i], ms);
      }
    int chosen = -1;
    for (int i = 0; i < p.count; ++i)
      if (best[i] >= 0 && (chosen < 0 || best[i] < best[chosen])) chosen = i;
    if (chosen < 0) return;
    p.algo = p.candidates[chosen].algo;
    p.workspace = p.candidates[chosen].workspaceSize;
    ++use_.tuned;
    if (tune_out_.empty()) return;
    cublaslt::Choice c{device_, version_, key, chosen, config_of(p.algo)};
    c.us = 1e3 * best[chosen] / kReps;
    c.first_us = best[0] >= 0 ? 1e3 * best[0] / kReps : 0.f;  // (0: cuBLASLt refused it)
    timed_.put(std::move(c));
    timed_.write(tune_out_);
  }

  // The table's choice for this problem on this device and cuBLASLt version, or null (and null
  // when timing: `tune` chooses by itself).
  const cublaslt::Choice* table_choice(const Key& key) const {
    return tune_ || !choices_ ? nullptr : choices_->find(device_, version_, key);
  }

  // An algorithm's configuration, in cublaslt::kConfigFields' order (-1 where this cuBLASLt
  // does not report one).
  static cublaslt::Config config_of(const cublasLtMatmulAlgo_t& algo) {
    const auto get = [&](cublasLtMatmulAlgoConfigAttributes_t attr, auto value) -> long long {
      std::size_t written = 0;
      if (cublasLtMatmulAlgoConfigGetAttribute(&algo, attr, &value, sizeof value, &written) !=
              CUBLAS_STATUS_SUCCESS ||
          written != sizeof value)
        return -1;
      return static_cast<long long>(value);
    };
    return {get(CUBLASLT_ALGO_CONFIG_ID, std::int32_t{}),
            get(CUBLASLT_ALGO_CONFIG_TILE_ID, std::uint32_t{}),
            get(CUBLASLT_ALGO_CONFIG_STAGES_ID, std::uint32_t{}),
            get(CUBLASLT_ALGO_CONFIG_SPLITK_NUM, std::int32_t{}),
            get(CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, std::uint32_t{}),
            get(CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING, std::uint32_t{}),
            get(CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION, std::uint32_t{}),
            get(CUBLASLT_ALGO_CONFIG_INNER_SHAPE_ID, std::uint16_t{}),
            get(CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, std::uint16_t{})};
  }

  Plan plan(cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
            cublasLtMatrixLayout_t d, const Key& key) {
    LtPreference pref;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(pref.out()));
    set_attribute(pref.get(), CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                  std::uint64_t(kLtWorkspaceBytes));
    set_attribute(pref.get(), CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, std::uint32_t(key[10]));
    set_attribute(pref.get(), CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, std::uint32_t(key[11]));
    set_attribute(pref.get(), CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, std::uint32_t(key[12]));
    set_attribute(pref.get(), CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, std::uint32_t(key[12]));
    // A bf16 D's split-K parts are summed in fp32 in the workspace (as cuBLAS's are,
    // set_fp32_math): the in-place and output-type schemes would add them up in bf16, rounding each
    // part.
    if (key[16] == CUDA_R_16BF)
      set_attribute(pref.get(), CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                    std::uint32_t(CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE));
    std::array<cublasLtMatmulHeuristicResult_t, kCandidates> results{};
    int count = 0;
    const cublaslt::Choice* choice = table_choice(key);
    const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(
        handle_, desc, a, b, d, d, pref.get(), kCandidates, results.data(), &count);
    Plan p;
    if (status == CUBLAS_STATUS_SUCCESS)
      for (int i = 0; i < count; ++i)
        if (results[i].state == CUBLAS_STATUS_SUCCESS) p.candidates[p.count++] = results[i];
    if (p.count > 0) {
      p.found = true;
      int pick = 0;
      if (choice) {
        if (choice->pick >= p.count) {
          mismatch("the table's choice for " + describe(key) + " is answer " +
                   std::to_string(choice->pick) + ", and the heuristic gave " +
                   std::to_string(p.count));
        } else if (config_of(p.candidates[choice->pick].algo) != choice->config) {
          mismatch("the table's choice for " + describe(key) + " (answer " +
                   std::to_string(choice->pick) +
                   ") has another configuration now: " + cublaslt::Choices::format_line(*choice));
        } else {
          pick = choice->pick;
          ++use_.chosen;
        }
      }
      p.algo = p.candidates[pick].algo;
      p.workspace = p.candidates[pick].workspaceSize;
      return p;
    }
    p.reason = "cuBLASLt has no algorithm for " + describe(key) + ": " +
               (status == CUBLAS_STATUS_SUCCESS ? std::string("the heuristic returned none")
                                                : cublasGetStatusString(status));
    return p;
  }

  static std::string describe(const Key& key) {
    return "m=" + std::to_string(key[0]) + " n=" + std::to_string(key[1]) +
           " k=" + std::to_string(key[2]) + " (" + (key[5] == CUDA_R_16BF ? "bf16" : "fp32") +
           " operands, " + (key[16] == CUDA_R_16BF ? "bf16" : "fp32") + " result, epilogue " +
           epilogue_name(cublasLtEpilogue_t(key[6])) + ")";
  }

  // The heuristic's first answer runs instead of a table's choice that no longer fits.
  void mismatch(std::string reason) {
    ++use_.mismatched;
    use_.last_mismatch = std::move(reason);
  }

  bool tune_;
  std::string tune_out_;
  std::shared_ptr<const cublaslt::Choices> choices_;
  std::string device_;       // as the table names it
  long long version_ = 0;    // cublasLtGetVersion()
  cublaslt::Choices timed_;  // with tune_out: that file's table and this backend's choices
  cublasLtHandle_t handle_ = nullptr;
  std::map<Key, Plan> plans_;
  CublasLtUse use_;
};

void LtMatmulDeleter::operator()(LtMatmul* lt) const noexcept {
  delete lt;
}

LtMatmulPtr make_lt_matmul(LtOptions options) {
  return LtMatmulPtr(new LtMatmul(std::move(options)));
}

const CublasLtUse& lt_use(const LtMatmul& lt) {
  return lt.use();
}

namespace {

// A bf16 bias is the rounding that a bf16 out takes; an fp32 out adds the fp32 bias.
void check_bias(const char* op, TensorIn bias, DType out) {
  CUDA_REQUIRE(!bias.data || bias.type == DType::fp32 || out == DType::bf16, op,
               std::string("a bf16 bias needs a bf16 out (an fp32 out adds the fp32 bias)"));
}

// out = x @ w^T + bias from prepared operands: one fused cuBLASLt product where it can, else
// the bias written first and the product added to it (beta = 1), as on the CPU. A bf16 out takes
// the bias rounded to bf16 (into the workspace): cuBLASLt's bias has D's type. A bf16 bias (the
// model's bf16 weight copy: that rounding, made once a forward pass) is taken as it is where it
// starts 256-byte aligned, as a workspace copy does (so the cuBLASLt plan, keyed on the
// alignments, is the one a rounded copy got), else copied into the workspace. Without cuBLASLt a
// bf16 out with a bias goes through an fp32 result in the workspace, rounded once at the end:
// cuBLAS's own beta = 1 into a bf16 C left a quarter of the elements one bf16 step from the fp32
// sum rounded once, and 1.5% several steps (an H200 and an H100, 2026-11-27, Bf16ProductOutputs),
// as if it rounded the product before adding C.
// The bias of a bf16 out: a bf16 bias as it is where it starts 256-byte aligned, else rounded (or
// copied) into the workspace, 256-byte aligned (so that a second call takes it as it is).
const __nv_bfloat16* bf16_bias(TensorIn bias_t, int OC, Workspace& ws, cudaStream_t stream) {
  if (bias_t.type == DType::bf16 && alignment(bias_t.data) == 256)
    return static_cast<const __nv_bfloat16*>(bias_t.data);
  __nv_bfloat16* copy = ws.take<__nv_bfloat16>(OC);
  if (bias_t.type == DType::bf16)
    CUDA_CHECK(cudaMemcpyAsync(copy, bias_t.data, OC * sizeof(__nv_bfloat16),
                               cudaMemcpyDeviceToDevice, stream));
  else
    to_bf16(copy, static_cast<const float*>(bias_t.data), OC, stream);
  return copy;
}

void forward_product(cublasHandle_t handle, LtMatmul* lt, Output out, Operand w, Operand x,
                     TensorIn bias_t, int N, int C, int OC, Workspace& ws, cudaStream_t stream) {
  const auto* bias = bias_t.type == DType::fp32 ? static_cast<const float*>(bias_t.data) : nullptr;
  const void* b = bias_t.data;
  const __nv_bfloat16* rounded = nullptr;
  if (bias_t.data && out.type == CUDA_R_16BF) {
    rounded = bf16_bias(bias_t, OC, ws, stream);
    b = rounded;
  }
  if (lt && b &&
      lt->run(CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, w, C, x, C, out, OC,
              {CUBLASLT_EPILOGUE_BIAS, b, nullptr, 0}, ws, stream))
    return;
  const std::size_t n = std::size_t(N) * OC;
  const unsigned blocks = elementwise_blocks(n, kThreads);
  if (rounded) {  // fp32 = the bias as rounded (widened: exact) + the product, then bf16
    float* widened = ws.take<float>(OC);
    float* sum = ws.take<float>(n);
    from_bf16(widened, rounded, OC, stream);
    broadcast_bias_kernel<<<blocks, kThreads, 0, stream>>>(sum, widened, OC, n);
    CUDA_CHECK_LAUNCH(broadcast_bias_kernel);
    gemm(handle, CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, 1.f, w, C, x, C, 1.f, output(sum), OC);
    to_bf16(static_cast<__nv_bfloat16*>(out.data), sum, n, stream);
    return;
  }
  float beta = 0.f;
  if (bias) {
    broadcast_bias_kernel<<<blocks, kThreads, 0, stream>>>(static_cast<float*>(out.data), bias, OC,
                                                           n);
    CUDA_CHECK_LAUNCH(broadcast_bias_kernel);
    beta = 1.f;
  }
  if (lt && !bias &&
      lt->run(CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, w, C, x, C, out, OC, {}, ws, stream, true))
    return;
  gemm(handle, CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, 1.f, w, C, x, C, beta, out, OC);
}

// The gradient dout (N,OC) as the backward products' operand, and dbias += its column sums (of
// dout as stored: fp32, or bf16 widened). With an fp32 dout in bf16 precision one pass does both:
// the column sums' kernel writes the rounded copy as it reads dout (bit-identical to rounding it on
// its own).
Operand gradient_operand(MatmulPrecision precision, float* dbias, TensorIn dout, int N, int OC,
                         Workspace& ws, cudaStream_t stream) {
  if (!dbias) return operand(precision, dout, std::size_t(N) * OC, ws, stream);
  if (dout.type == DType::bf16) {  // the bias gradient sums the stored bf16 values
    column_sums_accumulate(dbias, dout, N, OC, ws, stream);
    return operand(precision, dout, std::size_t(N) * OC, ws, stream);
  }
  const auto* g = static_cast<const float*>(dout.data);
  if (precision == MatmulPrecision::fp32) {
    column_sums_accumulate(dbias, g, N, OC, ws, stream);
    return {g, CUDA_R_32F};
  }
  __nv_bfloat16* copy = ws.take<__nv_bfloat16>(std::size_t(N) * OC);
  column_sums_accumulate(dbias, g, N, OC, ws, stream, copy);
  return {copy, CUDA_R_16BF};
}

// dweight^T (C,OC) += inp^T (C,N) . dout (N,OC).
void weight_gradient(cublasHandle_t handle, MatmulPrecision precision, float* dweight, Operand g,
                     TensorIn inp, int N, int C, int OC, Workspace& ws, cudaStream_t stream) {
  const Operand x = operand(precision, inp, std::size_t(N) * C, ws, stream);
  gemm(handle, CUBLAS_OP_N, CUBLAS_OP_T, C, OC, N, 1.f, x, C, g, OC, 1.f, output(dweight), C);
}

}  // namespace

void set_fp32_math(cublasHandle_t handle) {
  // The default math mode keeps sgemm in full fp32 (TF32 only with CUBLAS_TF32_TENSOR_OP_MATH).
  // A bf16 result's split-K parts are summed in fp32, not in bf16, which cuBLAS otherwise allows
  // (this alone did not change the rounding that forward_product now avoids, on an H200,
  // 2026-11-27). Atomics stay off, the default, so that products are the same on every run.
  CUBLAS_CHECK(cublasSetMathMode(
      handle,
      cublasMath_t(CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)));
  CUBLAS_CHECK(cublasSetAtomicsMode(handle, CUBLAS_ATOMICS_NOT_ALLOWED));
}

std::size_t matmul_forward_workspace(MatmulPrecision precision, bool lt, DType inp, DType weight,
                                     int N, int C, int OC, DType out, bool bias) {
  const bool bf16_bias = precision == MatmulPrecision::bf16 && bias;
  // a bf16 out with a bias: the rounded bias, and without cuBLASLt (or where it falls back) the
  // widened bias and the fp32 result (forward_product)
  const std::size_t bf16_sum = bf16_bias && out == DType::bf16
                                   ? Workspace::aligned(OC * sizeof(float)) +
                                         Workspace::aligned(std::size_t(N) * OC * sizeof(float))
                                   : 0;
  return operand_bytes(precision, weight, std::size_t(OC) * C) +
         operand_bytes(precision, inp, std::size_t(N) * C) +
         (bf16_bias ? Workspace::aligned(OC * sizeof(__nv_bfloat16)) : 0) + bf16_sum +
         (lt ? kLtWorkspaceBytes : 0);
}

void matmul_forward(cublasHandle_t handle, LtMatmul* lt, MatmulPrecision precision, TensorOut out,
                    TensorIn inp, TensorIn weight, TensorIn bias, int N, int C, int OC,
                    Workspace ws, cudaStream_t stream) {
  check_dims("matmul_forward", N, C, OC);
  CUDA_REQUIRE(out.type == DType::fp32 || precision == MatmulPrecision::bf16, "matmul_forward",
               std::string("a bf16 out, which only bf16 products write (cuda-bf16)"));
  check_bias("matmul_forward", bias, out.type);
  CUBLAS_CHECK(cublasSetStream(handle, stream));
  const Operand w = operand(precision, weight, std::size_t(OC) * C, ws, stream);
  const Operand x = operand(precision, inp, std::size_t(N) * C, ws, stream);
  forward_product(handle, lt, output(out), w, x, bias, N, C, OC, ws, stream);
}

void matmul_gelu_forward(cublasHandle_t handle, LtMatmul* lt, MatmulPrecision precision,
                         TensorOut out, TensorOut pre, TensorIn inp, TensorIn weight, TensorIn bias,
                         int N, int C, int OC, bool gelu_exp2, bool bf16_epilogue, Workspace ws,
                         cudaStream_t stream) {
  check_dims("matmul_gelu_forward", N, C, OC);
  CUDA_REQUIRE(!bytes_overlap(out.data, std::size_t(N) * OC * element_bytes(out.type), pre.data,
                              std::size_t(N) * OC * element_bytes(pre.type)),
               "matmul_gelu_forward", std::string("out overlaps pre"));
  CUDA_REQUIRE(
      pre.type == DType::fp32 || (precision == MatmulPrecision::bf16 && out.type == DType::bf16),
      "matmul_gelu_forward",
      std::string("a bf16 pre needs bf16 products (cuda-bf16) and a bf16 out"));
  check_bias("matmul_gelu_forward", bias, pre.type);
  CUBLAS_CHECK(cublasSetStream(handle, stream));
  const Operand w = operand(precision, weight, std::size_t(OC) * C, ws, stream);
  const Operand x = operand(precision, inp, std::size_t(N) * C, ws, stream);
  // With a bf16 out, the GELU epilogue is not asked: its aux matrix (pre) has D's type in
  // cuBLASLt except in fp8 kernels (cublasLt.h, EPILOGUE_AUX_DATA_TYPE), so an fp32 pre cannot be
  // its aux, and a bf16 pre is what the GELU must read (the epilogue would take the GELU of the
  // unrounded sum). The product then still takes its bias in the epilogue, and the GELU kernel
  // writes the bf16 out from pre as stored.
  if (lt && out.type == DType::fp32 && pre.type == DType::fp32) {
    // out^T (OC,N) = gelu(pre^T), pre^T = w . x^T + bias: pre is the epilogue's aux matrix.
    const Epilogue ep{bias.data ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX,
                      bias.data, pre.data, OC};
    if (OC % 8 != 0)
      lt->refuse("cuBLASLt's GELU epilogue needs OC divisible by 8, got OC=" + std::to_string(OC));
    else if (lt->run(CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, w, C, x, C, output(out), OC, ep, ws,
                     stream))
      return;
  }
  // bf16_epilogue (MIXSIM_BF16_GELU_EPILOGUE=1; an opt-in written without a GPU at hand): with a
  // bf16 out and pre, the GELU epilogue all the same: D = out and the aux matrix = pre, both bf16
  // (as cuBLASLt requires), the bias rounded to bf16 as forward_product rounds it. pre is the
  // product plus the bias rounded once, as the BIAS epilogue stores it (its own algorithm, so its
  // own order of the fp32 sums); out is cuBLASLt's GELU (its tanh form) of the unrounded fp32 sum,
  // where the GELU kernel takes the rounded pre: a bf16 step apart in places, and more for the
  // tiny GELUs below about -3. No GELU kernel then: run 10 had it at 0.45 ms a GPT-2 step.
  if (lt && bf16_epilogue && out.type == DType::bf16 && pre.type == DType::bf16) {
    if (OC % 8 != 0) {
      lt->refuse("cuBLASLt's GELU epilogue needs OC divisible by 8, got OC=" + std::to_string(OC));
    } else {
      const __nv_bfloat16* b = bias.data ? bf16_bias(bias, OC, ws, stream) : nullptr;
      const Epilogue ep{b ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX, b,
                        pre.data, OC};
      if (lt->run(CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, w, C, x, C, output(out), OC, ep, ws, stream))
        return;
      if (b) bias = TensorIn(b, DType::bf16);  // (256-byte aligned: taken as it is below)
    }
  }
  forward_product(handle, lt, output(pre), w, x, bias, N, C, OC, ws, stream);
  gelu_forward(out, pre, std::size_t(N) * OC, gelu_exp2, stream);
}

std::size_t matmul_backward_workspace(MatmulPrecision precision, bool lt, DType dout, DType inp,
                                      DType weight, int N, int C, int OC) {
  return operand_bytes(precision, weight, std::size_t(OC) * C) +
         operand_bytes(precision, dout, std::size_t(N) * OC) +
         operand_bytes(precision, inp, std::size_t(N) * C) + column_sums_workspace(N, OC) +
         (lt ? kLtWorkspaceBytes : 0);
}

std::size_t gelu_matmul_backward_workspace(MatmulPrecision precision, bool lt, DType dpre,
                                           DType inp, DType weight, int N, int C, int OC) {
  // a bf16 dpre without the fused epilogue: the product in fp32 first
  return matmul_backward_workspace(precision, lt, DType::fp32, inp, weight, N, C, OC) +
         (dpre == DType::bf16 ? Workspace::aligned(std::size_t(N) * C * sizeof(float)) : 0);
}

namespace {

// The backward products of out = inp @ weight^T (+ bias): dinp (assigned; null data to skip),
// dweight and dbias (+=). With `pre`, inp was gelu(pre) and dinp becomes the gradient of pre: the
// GELU's derivative in the product's epilogue where cuBLASLt can (pre is its aux matrix, of
// dinp's type), else the GELU kernel after the product (which a bf16 dinp takes in fp32 first,
// so that it is rounded once either way).
void backward_products(cublasHandle_t handle, LtMatmul* lt, MatmulPrecision precision,
                       TensorOut dinp, float* dweight, float* dbias, TensorIn dout, TensorIn inp,
                       TensorIn pre, TensorIn weight, int N, int C, int OC, Workspace& ws,
                       cudaStream_t stream) {
  CUBLAS_CHECK(cublasSetStream(handle, stream));
  const Operand g = gradient_operand(precision, dbias, dout, N, OC, ws, stream);
  // dinp^T (C,N) = weight^T (C,OC) . dout^T (OC,N)   (assigned), through gelu'(pre^T)
  if (dinp.data) {
    const Operand w = operand(precision, weight, std::size_t(OC) * C, ws, stream);
    bool fused = false;
    if (pre.data && lt) {
      const Epilogue ep{CUBLASLT_EPILOGUE_DGELU, nullptr, const_cast<void*>(pre.data), C};
      if (C % 8 != 0)
        lt->refuse("cuBLASLt's GELU epilogue needs C divisible by 8, got C=" + std::to_string(C));
      else
        fused = lt->run(CUBLAS_OP_N, CUBLAS_OP_N, C, N, OC, w, C, g, OC, output(dinp), C, ep, ws,
                        stream);
    }
    if (!fused && !pre.data) {  // dinp as the product stores it (a bf16 one rounded once)
      if (!(lt && lt->run(CUBLAS_OP_N, CUBLAS_OP_N, C, N, OC, w, C, g, OC, output(dinp), C, {}, ws,
                          stream, true)))
        gemm(handle, CUBLAS_OP_N, CUBLAS_OP_N, C, N, OC, 1.f, w, C, g, OC, 0.f, output(dinp), C);
    } else if (!fused) {  // the product, then the GELU's derivative (into a bf16 dinp from fp32)
      const std::size_t n = std::size_t(N) * C;
      float* product =
          dinp.type == DType::fp32 ? static_cast<float*>(dinp.data) : ws.take<float>(n);
      gemm(handle, CUBLAS_OP_N, CUBLAS_OP_N, C, N, OC, 1.f, w, C, g, OC, 0.f, output(product), C);
      gelu_backward(dinp, pre, product, n, stream);
    }
  }
  weight_gradient(handle, precision, dweight, g, inp, N, C, OC, ws, stream);
}

}  // namespace

void matmul_backward(cublasHandle_t handle, LtMatmul* lt, MatmulPrecision precision, TensorOut dinp,
                     float* dweight, float* dbias, TensorIn dout, TensorIn inp, TensorIn weight,
                     int N, int C, int OC, Workspace ws, cudaStream_t stream) {
  check_dims("matmul_backward", N, C, OC);
  CUDA_REQUIRE(dinp.type == DType::fp32 || precision == MatmulPrecision::bf16, "matmul_backward",
               std::string("a bf16 dinp needs bf16 products (cuda-bf16)"));
  backward_products(handle, lt, precision, dinp, dweight, dbias, dout, inp, nullptr, weight, N, C,
                    OC, ws, stream);
}

void gelu_matmul_backward(cublasHandle_t handle, LtMatmul* lt, MatmulPrecision precision,
                          TensorOut dpre, float* dweight, float* dbias, TensorIn dout, TensorIn inp,
                          TensorIn pre, TensorIn weight, int N, int C, int OC, Workspace ws,
                          cudaStream_t stream) {
  check_dims("gelu_matmul_backward", N, C, OC);
  CUDA_REQUIRE(dpre.data != nullptr && pre.data != nullptr, "gelu_matmul_backward",
               std::string("a null dpre or pre"));
  CUDA_REQUIRE(!bytes_overlap(dpre.data, std::size_t(N) * C * element_bytes(dpre.type), pre.data,
                              std::size_t(N) * C * element_bytes(pre.type)),
               "gelu_matmul_backward", std::string("dpre overlaps pre"));
  CUDA_REQUIRE(
      dpre.type == pre.type && (dpre.type == DType::fp32 || precision == MatmulPrecision::bf16),
      "gelu_matmul_backward",
      std::string("dpre and pre of different types, or a bf16 dpre from fp32 products"));
  backward_products(handle, lt, precision, dpre, dweight, dbias, dout, inp, pre, weight, N, C, OC,
                    ws, stream);
}

}  // namespace mixsim::cuda
