#include "mixsim/dist/group_allreduce.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <set>
#include <string>
#include <string_view>
#include <utility>

#include "mixsim/backend/cuda.hpp"
#include "mixsim/core/log.hpp"

namespace mixsim {
namespace {

class LocalAllreduce final : public GroupAllreduce {
 public:
  std::string_view kind() const override { return "local"; }
  void sum(float*, std::size_t) override {}
  void start(std::span<const std::span<float>>) override {}
  void finish() override {}
};

// The CPU backend's memory is host memory, and its ops have finished when they return: MPI works
// on the buffers directly. start() issues one MPI_Iallreduce per part (per 2^30 floats).
class MpiAllreduce final : public GroupAllreduce {
 public:
  explicit MpiAllreduce(const Communicator& group) : group_(group) {}
  ~MpiAllreduce() override {
    if (!requests_.empty() && MpiSession::active())
      MPI_Waitall(static_cast<int>(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE);
  }
  MpiAllreduce(const MpiAllreduce&) = delete;
  MpiAllreduce& operator=(const MpiAllreduce&) = delete;

  std::string_view kind() const override { return "mpi"; }
  void sum(float* data, std::size_t count) override {
    group_.allreduce_sum(std::span<float>(data, count));
  }
  void start(std::span<const std::span<float>> parts) override {
    constexpr std::size_t kChunk = std::size_t{1} << 30;
    for (const auto part : parts)
      for (std::size_t off = 0; off < part.size(); off += kChunk) {
        MPI_Request request;
        check_mpi(MPI_Iallreduce(MPI_IN_PLACE, part.data() + off,
                                 static_cast<int>(std::min(kChunk, part.size() - off)), MPI_FLOAT,
                                 MPI_SUM, group_.handle(), &request),
                  "MPI_Iallreduce");
        requests_.push_back(request);
      }
    progress();
  }
  void progress() override {
    if (requests_.empty()) return;
    int done = 0;
    check_mpi(MPI_Testall(static_cast<int>(requests_.size()), requests_.data(), &done,
                          MPI_STATUSES_IGNORE),
              "MPI_Testall");
    if (done) requests_.clear();
  }
  void finish() override {
    if (requests_.empty()) return;
    check_mpi(
        MPI_Waitall(static_cast<int>(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE),
        "MPI_Waitall");
    requests_.clear();
  }

 private:
  const Communicator& group_;
  std::vector<MPI_Request> requests_;
};

// Device memory without NCCL: each sum goes through a host buffer (download, MPI, upload), and
// started parts wait for finish(): correct everywhere, no overlap.
class StagedAllreduce final : public GroupAllreduce {
 public:
  StagedAllreduce(const Communicator& group, Backend& backend) : group_(group), backend_(backend) {}
  std::string_view kind() const override { return "mpi-staged"; }
  void sum(float* data, std::size_t count) override {
    staging_.resize(count);
    backend_.download(staging_.data(), data, count * sizeof(float));
    group_.allreduce_sum(std::span<float>(staging_));
    backend_.upload(data, staging_.data(), count * sizeof(float));
  }
  void start(std::span<const std::span<float>> parts) override {
    started_.insert(started_.end(), parts.begin(), parts.end());
  }
  void finish() override {
    for (const auto part : started_) sum(part.data(), part.size());
    started_.clear();
  }

 private:
  const Communicator& group_;
  Backend& backend_;
  std::vector<float> staging_;
  std::vector<std::span<float>> started_;
};

}  // namespace

std::unique_ptr<GroupAllreduce> make_group_allreduce(const Communicator& group, Backend& backend) {
  if (group.size() == 1) return std::make_unique<LocalAllreduce>();
  if (backend.name() == "cpu") return std::make_unique<MpiAllreduce>(group);
  // Every rank must choose the same kind, or the collectives below would not match: rank 0's
  // MIXSIM_NCCL decides for the group, and so does any GPU that two ranks share (too few GPUs for
  // the ranks of a node), which NCCL cannot join.
  std::string setting;
  if (group.rank() == 0) {
    const char* env = std::getenv("MIXSIM_NCCL");
    setting = env ? env : "";
  }
  group.broadcast(setting, 0);
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  std::vector<std::int64_t> gpus(static_cast<std::size_t>(group.size()), 0);
  gpus[static_cast<std::size_t>(group.rank())] = static_cast<std::int64_t>(
      std::hash<std::string>{}(std::string(host) + "/" + cuda_pci_bus_id(backend)));
  group.allreduce_sum(std::span<std::int64_t>(gpus));  // each rank's own slot: a gather
  const bool shared = std::set<std::int64_t>(gpus.begin(), gpus.end()).size() < gpus.size();
  if (setting == "0" || shared) {
    if (shared && group.rank() == 0)
      log::warn(
          "{} ranks share {} GPUs: sums go through host memory over MPI, not NCCL (one GPU "
          "per rank makes them faster)",
          group.size(), std::set<std::int64_t>(gpus.begin(), gpus.end()).size());
    return std::make_unique<StagedAllreduce>(group, backend);
  }
  std::string id;
  if (group.rank() == 0) id = nccl_unique_id();
  group.broadcast(id, 0);
  return make_nccl_allreduce(backend, id, group.size(), group.rank());
}

GradientBuckets::GradientBuckets(GroupAllreduce& reduce, std::size_t bucket_bytes)
    : reduce_(reduce), bucket_bytes_(bucket_bytes) {}

void GradientBuckets::ready(std::span<float> part) {
  if (part.empty()) return;
  // The backward pass reports the layers last to first, so a part often ends where a pending one
  // begins (the same tensor of the next layer up); one sum serves both.
  const auto joins = std::find_if(pending_.begin(), pending_.end(), [&](std::span<float> p) {
    return p.data() == part.data() + part.size() || part.data() == p.data() + p.size();
  });
  if (joins != pending_.end())
    *joins = std::span<float>(std::min(joins->data(), part.data()), joins->size() + part.size());
  else
    pending_.push_back(part);
  pending_bytes_ += part.size_bytes();
  if (pending_bytes_ >= bucket_bytes_)
    start_pending();
  else
    reduce_.progress();
}

void GradientBuckets::start_pending() {
  if (pending_.empty()) return;
  reduce_.start(pending_);
  ++started_buckets_;
  started_parts_ += static_cast<int>(pending_.size());
  pending_.clear();
  pending_bytes_ = 0;
}

void GradientBuckets::finish() {
  start_pending();
  reduce_.finish();
  buckets_ = std::exchange(started_buckets_, 0);
  parts_ = std::exchange(started_parts_, 0);
}

}  // namespace mixsim
