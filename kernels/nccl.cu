// NCCL for the CUDA backend: the unique id that one rank makes and the others receive (over MPI,
// in dist/), and in-place sums of device buffers over the group.
// - sum() is enqueued on the backend's stream: ordered after the backward pass that wrote the
//   buffer and before the optimizer step that reads it.
// - start() puts the sums on a stream of the communicator's own, behind an event recorded on the
//   backend's stream, so that the backend goes on computing (the rest of a backward pass) while
//   NCCL communicates; the parts of one start() form one NCCL group (one launch). finish() makes
//   the backend's stream wait for an event recorded behind the last started sum. Both are
//   asynchronous for the host.
// - bf16 sums narrow the parts into bf16 copies on the communication stream, sum those
//   (ncclBfloat16), and widen them back into the parts there.
// NCCL's reductions are deterministic for a fixed number of ranks, topology and split into parts
// (train.grad_bucket_mb changes the split, and so the rounding of the sums).
#include <cuda_bf16.h>
#include <nccl.h>

#include <algorithm>
#include <cstring>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "launchers.cuh"
#include "mixsim/backend/cuda.hpp"

namespace mixsim {

namespace {

void nccl_check(ncclResult_t rc, const char* call, const char* file, int line) {
  if (rc != ncclSuccess)
    throw Error(std::string("NCCL error in ") + call + " at " + file + ":" + std::to_string(line) +
                ": " + ncclGetErrorString(rc) + " (NCCL_DEBUG=WARN in the environment says more)");
}
#define NCCL_CHECK(call) nccl_check((call), #call, __FILE__, __LINE__)

class NcclAllreduce final : public GroupAllreduce {
 public:
  NcclAllreduce(cuda::BackendPlace place, const std::string& id, int nranks, int rank)
      : device_(place.device), compute_(place.stream) {
    ncclUniqueId uid;
    CUDA_REQUIRE(
        id.size() == sizeof(uid.internal), "make_nccl_allreduce",
        cuda::dims({{"id bytes", int(id.size())}, {"expected", int(sizeof(uid.internal))}}));
    CUDA_REQUIRE(nranks > 0 && rank >= 0 && rank < nranks, "make_nccl_allreduce",
                 cuda::dims({{"nranks", nranks}, {"rank", rank}}));
    std::memcpy(uid.internal, id.data(), sizeof(uid.internal));
    try {
      CUDA_CHECK(cudaSetDevice(device_));
      CUDA_CHECK(cudaStreamCreateWithFlags(&comm_stream_, cudaStreamNonBlocking));
      CUDA_CHECK(cudaEventCreateWithFlags(&compute_done_, cudaEventDisableTiming));
      CUDA_CHECK(cudaEventCreateWithFlags(&sums_done_, cudaEventDisableTiming));
      NCCL_CHECK(ncclCommInitRank(&comm_, nranks, uid, rank));
    } catch (...) {
      release();
      throw;
    }
  }
  ~NcclAllreduce() override { release(); }
  NcclAllreduce(const NcclAllreduce&) = delete;
  NcclAllreduce& operator=(const NcclAllreduce&) = delete;

  std::string_view kind() const override { return "nccl"; }

  void sum(float* data, std::size_t count, SumFormat format) override {
    if (count == 0) return;
    if (format == SumFormat::bf16) {  // through the started path: it owns the bf16 copies
      const std::span<float> part(data, count);
      start(std::span<const std::span<float>>(&part, 1), format);
      finish();
      return;
    }
    CUDA_CHECK(cudaSetDevice(device_));
    NCCL_CHECK(ncclAllReduce(data, data, count, ncclFloat32, ncclSum, comm_, compute_));
  }

  void start(std::span<const std::span<float>> parts, SumFormat format) override {
    if (parts.empty()) return;
    CUDA_CHECK(cudaSetDevice(device_));
    // cudaStreamWaitEvent waits for the event's latest record at the time of the call, so one
    // event serves every start().
    CUDA_CHECK(cudaEventRecord(compute_done_, compute_));
    CUDA_CHECK(cudaStreamWaitEvent(comm_stream_, compute_done_, 0));
    __nv_bfloat16* wire = nullptr;
    if (format == SumFormat::bf16) {
      std::size_t total = 0;
      for (const auto part : parts) total += part.size();
      wire = take_wire(total);
      std::size_t off = 0;
      for (const auto part : parts) {
        cuda::to_bf16(wire + off, part.data(), part.size(), comm_stream_);
        off += part.size();
      }
    }
    NCCL_CHECK(ncclGroupStart());
    try {
      std::size_t off = 0;
      for (const auto part : parts) {
        if (part.empty()) continue;
        if (wire)
          NCCL_CHECK(ncclAllReduce(wire + off, wire + off, part.size(), ncclBfloat16, ncclSum,
                                   comm_, comm_stream_));
        else
          NCCL_CHECK(ncclAllReduce(part.data(), part.data(), part.size(), ncclFloat32, ncclSum,
                                   comm_, comm_stream_));
        off += part.size();
      }
    } catch (...) {
      ncclGroupEnd();  // no group may stay open
      throw;
    }
    NCCL_CHECK(ncclGroupEnd());
    if (wire) {
      std::size_t off = 0;
      for (const auto part : parts) {
        cuda::from_bf16(part.data(), wire + off, part.size(), comm_stream_);
        off += part.size();
      }
    }
    started_ = true;
  }

  void finish() override {
    if (!started_) return;
    CUDA_CHECK(cudaSetDevice(device_));
    CUDA_CHECK(cudaEventRecord(sums_done_, comm_stream_));
    CUDA_CHECK(cudaStreamWaitEvent(compute_, sums_done_, 0));
    started_ = false;
    // The next start() writes the bf16 copies from the beginning again: after this round's sums,
    // since both are on the communication stream.
    wire_used_ = 0;
  }

 private:
  // bf16 copies of the parts of one round of starts (until finish()), in chunks of device memory
  // that only grow: in the first round each start() that does not fit adds a chunk; the next
  // round first merges them into one (after the communication stream is idle).
  __nv_bfloat16* take_wire(std::size_t count) {
    count = CEIL_DIV(count, std::size_t(128)) * 128;  // 256-byte aligned starts
    if (wire_.size() > 1 && wire_used_ == 0) {
      std::size_t capacity = 0;
      for (const auto& [ptr, n] : wire_) capacity += n;
      CUDA_CHECK(cudaStreamSynchronize(comm_stream_));
      free_wire();
      add_wire_chunk(capacity);
    }
    if (wire_.empty() || wire_used_ + count > wire_.back().second) {
      add_wire_chunk(std::max(count, wire_.empty() ? std::size_t{0} : wire_.back().second));
      wire_used_ = 0;
    }
    __nv_bfloat16* ptr = wire_.back().first + wire_used_;
    wire_used_ += count;
    return ptr;
  }
  void add_wire_chunk(std::size_t count) {
    void* ptr = nullptr;
    const cudaError_t rc = cudaMalloc(&ptr, count * sizeof(__nv_bfloat16));
    if (rc != cudaSuccess)
      throw Error("NCCL bf16 sums: cannot allocate " + std::to_string(count * 2) +
                  " bytes of device memory for the bf16 copies (" + cudaGetErrorString(rc) +
                  "); set train.grad_reduce = fp32 or use smaller models");
    wire_.emplace_back(static_cast<__nv_bfloat16*>(ptr), count);
  }
  void free_wire() noexcept {
    for (const auto& [ptr, n] : wire_) cudaFree(ptr);
    wire_.clear();
  }
  void release() noexcept {
    cudaSetDevice(device_);
    if (comm_stream_) cudaStreamSynchronize(comm_stream_);  // no sum may outlive the communicator
    free_wire();
    if (comm_) ncclCommDestroy(comm_);
    if (sums_done_) cudaEventDestroy(sums_done_);
    if (compute_done_) cudaEventDestroy(compute_done_);
    if (comm_stream_) cudaStreamDestroy(comm_stream_);
  }

  int device_;
  cudaStream_t compute_;  // the backend's stream
  cudaStream_t comm_stream_ = nullptr;
  cudaEvent_t compute_done_ = nullptr;
  cudaEvent_t sums_done_ = nullptr;
  ncclComm_t comm_ = nullptr;
  bool started_ = false;
  std::vector<std::pair<__nv_bfloat16*, std::size_t>> wire_;  // chunks (elements)
  std::size_t wire_used_ = 0;                                 // elements of the last chunk
};

}  // namespace

std::string cuda_pci_bus_id(Backend& cuda_backend) {
  char id[32] = {};
  CUDA_CHECK(cudaDeviceGetPCIBusId(id, sizeof(id), cuda::place_of(cuda_backend).device));
  return id;
}

std::string nccl_unique_id() {
  ncclUniqueId uid;
  NCCL_CHECK(ncclGetUniqueId(&uid));
  return std::string(uid.internal, sizeof(uid.internal));
}

std::unique_ptr<GroupAllreduce> make_nccl_allreduce(Backend& cuda_backend, const std::string& id,
                                                    int nranks, int rank) {
  return std::make_unique<NcclAllreduce>(cuda::place_of(cuda_backend), id, nranks, rank);
}

}  // namespace mixsim
