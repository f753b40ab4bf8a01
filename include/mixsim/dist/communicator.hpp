// Collective communication over MPI on host memory: the CPU backend's allreduce for gradients,
// averaging and loss sums, and the world/group communicators of the pool and merge-eval stages.
#pragma once

#include <mpi.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

namespace mixsim {

// Initialises MPI for the process lifetime (MPI_THREAD_FUNNELED: only the main thread calls
// MPI; OpenMP threads never do). Works as a singleton without mpirun.
class MpiSession {
 public:
  MpiSession(int* argc, char*** argv);
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;
  static bool active();
};

class Communicator {
 public:
  static Communicator world();  // MPI_COMM_WORLD; requires an active MpiSession

  int rank() const { return rank_; }
  int size() const { return size_; }
  MPI_Comm handle() const;

  // In-place sums over all ranks; counts beyond INT_MAX are sent in chunks.
  void allreduce_sum(std::span<float> data) const;
  void allreduce_sum(std::span<double> data) const;
  void allreduce_sum(std::span<std::int64_t> data) const;
  double allreduce_sum(double value) const;
  double allreduce_max(double value) const;
  double allreduce_min(double value) const;
  bool any(bool flag) const;  // true on every rank when it is true on some rank

  void broadcast(void* data, std::size_t bytes, int root) const;
  void broadcast(std::string& text, int root) const;
  void barrier() const;

  // Ranks with the same colour form a new communicator, ordered by key (MPI_Comm_split).
  Communicator split(int color, int key) const;

 private:
  struct Handle;  // owns a communicator made by split(); MPI_COMM_WORLD is never freed
  explicit Communicator(std::shared_ptr<const Handle> handle);
  std::shared_ptr<const Handle> comm_;
  int rank_ = 0;
  int size_ = 1;
};

// Checks an MPI return code; throws Error naming the call.
void check_mpi(int rc, const char* call);

}  // namespace mixsim
