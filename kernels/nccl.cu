// NCCL for the CUDA backend: the unique id that one rank makes and the others receive (over MPI,
// in dist/), and the in-place sum of a device buffer over the group, enqueued on the backend's
// stream so that it is ordered after the backward pass that wrote the gradients and before the
// optimizer step that reads them. NCCL's reductions are deterministic for a fixed number of ranks
// and topology.
#include <nccl.h>

#include <cstring>
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

class NcclAllreduce final : public DeviceAllreduce {
 public:
  NcclAllreduce(cuda::BackendPlace place, const std::string& id, int nranks, int rank)
      : stream_(place.stream) {
    ncclUniqueId uid;
    CUDA_REQUIRE(id.size() == sizeof(uid.internal), "make_nccl_allreduce",
                 cuda::dims({{"id bytes", int(id.size())}, {"expected", int(sizeof(uid.internal))}}));
    CUDA_REQUIRE(nranks > 0 && rank >= 0 && rank < nranks, "make_nccl_allreduce",
                 cuda::dims({{"nranks", nranks}, {"rank", rank}}));
    std::memcpy(uid.internal, id.data(), sizeof(uid.internal));
    CUDA_CHECK(cudaSetDevice(place.device));
    NCCL_CHECK(ncclCommInitRank(&comm_, nranks, uid, rank));
  }
  ~NcclAllreduce() override { ncclCommDestroy(comm_); }
  NcclAllreduce(const NcclAllreduce&) = delete;
  NcclAllreduce& operator=(const NcclAllreduce&) = delete;

  void sum(float* data, std::size_t count) override {
    if (count == 0) return;
    NCCL_CHECK(ncclAllReduce(data, data, count, ncclFloat32, ncclSum, comm_, stream_));
  }

 private:
  cudaStream_t stream_;
  ncclComm_t comm_ = nullptr;
};

}  // namespace

std::string nccl_unique_id() {
  ncclUniqueId uid;
  NCCL_CHECK(ncclGetUniqueId(&uid));
  return std::string(uid.internal, sizeof(uid.internal));
}

std::unique_ptr<DeviceAllreduce> make_nccl_allreduce(Backend& cuda_backend, const std::string& id,
                                                     int nranks, int rank) {
  return std::make_unique<NcclAllreduce>(cuda::place_of(cuda_backend), id, nranks, rank);
}

}  // namespace mixsim
