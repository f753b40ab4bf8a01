// NCCL for the CUDA backend: the unique id that one rank makes and the others receive (over MPI,
// in dist/), and in-place sums of device buffers over the group.
// - sum() is enqueued on the backend's stream: ordered after the backward pass that wrote the
//   buffer and before the optimizer step that reads it.
// - start() puts the sums on a stream of the communicator's own, behind an event recorded on the
//   backend's stream, so that the backend goes on computing (the rest of a backward pass) while
//   NCCL communicates; the parts of one start() form one NCCL group (one launch). finish() makes
//   the backend's stream wait for an event recorded behind the last started sum. Both are
//   asynchronous for the host.
// NCCL's reductions are deterministic for a fixed number of ranks, topology and split into parts
// (train.grad_bucket_mb changes the split, and so the rounding of the sums).
#include <nccl.h>

#include <cstring>
#include <span>
#include <string>

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

  void sum(float* data, std::size_t count) override {
    if (count == 0) return;
    CUDA_CHECK(cudaSetDevice(device_));
    NCCL_CHECK(ncclAllReduce(data, data, count, ncclFloat32, ncclSum, comm_, compute_));
  }

  void start(std::span<const std::span<float>> parts) override {
    if (parts.empty()) return;
    CUDA_CHECK(cudaSetDevice(device_));
    // cudaStreamWaitEvent waits for the event's latest record at the time of the call, so one
    // event serves every start().
    CUDA_CHECK(cudaEventRecord(compute_done_, compute_));
    CUDA_CHECK(cudaStreamWaitEvent(comm_stream_, compute_done_, 0));
    NCCL_CHECK(ncclGroupStart());
    try {
      for (const auto part : parts)
        if (!part.empty())
          NCCL_CHECK(ncclAllReduce(part.data(), part.data(), part.size(), ncclFloat32, ncclSum,
                                   comm_, comm_stream_));
    } catch (...) {
      ncclGroupEnd();  // no group may stay open
      throw;
    }
    NCCL_CHECK(ncclGroupEnd());
    started_ = true;
  }

  void finish() override {
    if (!started_) return;
    CUDA_CHECK(cudaSetDevice(device_));
    CUDA_CHECK(cudaEventRecord(sums_done_, comm_stream_));
    CUDA_CHECK(cudaStreamWaitEvent(compute_, sums_done_, 0));
    started_ = false;
  }

 private:
  void release() noexcept {
    cudaSetDevice(device_);
    if (comm_stream_) cudaStreamSynchronize(comm_stream_);  // no sum may outlive the communicator
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
