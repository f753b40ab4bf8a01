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
#include "mixsim/core/bf16.hpp"
#include "mixsim/core/log.hpp"

namespace mixsim {
namespace {

class LocalAllreduce final : public GroupAllreduce {
 public:
  std::string_view kind() const override { return "local"; }
  void sum(float*, std::size_t, SumFormat) override {}
  void start(std::span<const std::span<float>>, SumFormat) override {}
  void finish() override {}
};

// The MPI reduction of bf16 values (sent as MPI_UINT16_T): inout = bf16(in + inout), each
// partial sum rounded to bf16 as NCCL's bf16 sums are.
void bf16_sum(void* in, void* inout, int* len, MPI_Datatype*) {
  const auto* a = static_cast<const std::uint16_t*>(in);
  auto* b = static_cast<std::uint16_t*>(inout);
  for (int i = 0; i < *len; ++i) b[i] = bf16_bits(bf16_value(a[i]) + bf16_value(b[i]));
}

// Sums of host buffers over a group in either format, blocking or started. A started bf16 sum
// runs on a bf16 copy of the part, widened back into it by finish().
class HostSums {
 public:
  explicit HostSums(const Communicator& group) : group_(group) {
    check_mpi(MPI_Op_create(&bf16_sum, /*commute=*/1, &bf16_op_), "MPI_Op_create");
  }
  ~HostSums() {
    if (!MpiSession::active()) return;
    if (!requests_.empty())
      MPI_Waitall(static_cast<int>(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE);
    MPI_Op_free(&bf16_op_);
  }
  HostSums(const HostSums&) = delete;
  HostSums& operator=(const HostSums&) = delete;

  void sum(std::span<float> data, SumFormat format) {
    if (format == SumFormat::fp32) {
      group_.allreduce_sum(data);
      return;
    }
    std::vector<std::uint16_t> wire(data.size());
    std::transform(data.begin(), data.end(), wire.begin(), bf16_bits);
    for (std::size_t off = 0; off < wire.size(); off += kChunk)
      check_mpi(MPI_Allreduce(MPI_IN_PLACE, wire.data() + off, chunk(wire.size(), off),
                              MPI_UINT16_T, bf16_op_, group_.handle()),
                "MPI_Allreduce");
    std::transform(wire.begin(), wire.end(), data.begin(), bf16_value);
  }

  void start(std::span<float> part, SumFormat format) {
    if (format == SumFormat::fp32) {
      for (std::size_t off = 0; off < part.size(); off += kChunk)
        issue(part.data() + off, chunk(part.size(), off), MPI_FLOAT, MPI_SUM);
      return;
    }
    // The inner vector's buffer keeps its address when the outer vector grows (vectors move).
    wire_.emplace_back(part.size());
    widen_.push_back(part);
    auto& wire = wire_.back();
    std::transform(part.begin(), part.end(), wire.begin(), bf16_bits);
    for (std::size_t off = 0; off < wire.size(); off += kChunk)
      issue(wire.data() + off, chunk(wire.size(), off), MPI_UINT16_T, bf16_op_);
  }
  void progress() {
    if (requests_.empty()) return;
    int done = 0;
    check_mpi(MPI_Testall(static_cast<int>(requests_.size()), requests_.data(), &done,
                          MPI_STATUSES_IGNORE),
              "MPI_Testall");
    if (done) requests_.clear();
  }
  void finish() {
    if (!requests_.empty())
      check_mpi(
          MPI_Waitall(static_cast<int>(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE),
          "MPI_Waitall");
    requests_.clear();
    for (std::size_t i = 0; i < widen_.size(); ++i)
      std::transform(wire_[i].begin(), wire_[i].end(), widen_[i].begin(), bf16_value);
    wire_.clear();
    widen_.clear();
  }

 private:
  static constexpr std::size_t kChunk = std::size_t{1} << 30;  // elements per MPI call (int)
  static int chunk(std::size_t n, std::size_t off) {
    return static_cast<int>(std::min(kChunk, n - off));
  }
  void issue(void* data, int count, MPI_Datatype type, MPI_Op op) {
    MPI_Request request;
    check_mpi(MPI_Iallreduce(MPI_IN_PLACE, data, count, type, op, group_.handle(), &request),
              "MPI_Iallreduce");
    requests_.push_back(request);
  }

  const Communicator& group_;
  MPI_Op bf16_op_ = MPI_OP_NULL;
  std::vector<MPI_Request> requests_;
  std::vector<std::vector<std::uint16_t>> wire_;  // bf16 copies of started parts
  std::vector<std::span<float>> widen_;           // the parts they go back into
};

// The CPU backend's memory is host memory, and its ops have finished when they return: MPI works
// on the buffers directly. start() issues one MPI_Iallreduce per part (per 2^30 elements).
class MpiAllreduce final : public GroupAllreduce {
 public:
  explicit MpiAllreduce(const Communicator& group) : sums_(group) {}
  std::string_view kind() const override { return "mpi"; }
  void sum(float* data, std::size_t count, SumFormat format) override {
    sums_.sum(std::span<float>(data, count), format);
  }
  void start(std::span<const std::span<float>> parts, SumFormat format) override {
    for (const auto part : parts) sums_.start(part, format);
    sums_.progress();
  }
  void progress() override { sums_.progress(); }
  void finish() override { sums_.finish(); }

 private:
  HostSums sums_;
};

// Device memory without NCCL: each sum goes through a host buffer (download, MPI, upload), and
// started parts wait for finish(): correct everywhere, no overlap.
class StagedAllreduce final : public GroupAllreduce {
 public:
  StagedAllreduce(const Communicator& group, Backend& backend) : backend_(backend), sums_(group) {}
  std::string_view kind() const override { return "mpi-staged"; }
  void sum(float* data, std::size_t count, SumFormat format) override {
    staging_.resize(count);
    backend_.download(staging_.data(), data, count * sizeof(float));
    sums_.sum(std::span<float>(staging_), format);
    backend_.upload(data, staging_.data(), count * sizeof(float));
  }
  void start(std::span<const std::span<float>> parts, SumFormat format) override {
    for (const auto part : parts) started_.push_back({part, format});
  }
  void finish() override {
    for (const auto& [part, format] : started_) sum(part.data(), part.size(), format);
    started_.clear();
  }

 private:
  Backend& backend_;
  HostSums sums_;
  std::vector<float> staging_;
  std::vector<std::pair<std::span<float>, SumFormat>> started_;
};

}  // namespace

std::unique_ptr<GroupAllreduce> make_group_allreduce(const Communicator& group, Backend& backend) {
  if (group.size() == 1) return std::make_unique<LocalAllreduce>();
  if (backend.name().starts_with("cpu")) return std::make_unique<MpiAllreduce>(group);
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

GradientBuckets::GradientBuckets(GroupAllreduce& reduce, std::size_t bucket_bytes, SumFormat format)
    : reduce_(reduce), bucket_bytes_(bucket_bytes), format_(format) {}

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
  reduce_.start(pending_, format_);
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
