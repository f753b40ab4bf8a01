#include "mixsim/dist/communicator.hpp"

#include <algorithm>
#include <climits>
#include <cstdlib>

#include "mixsim/core/error.hpp"

namespace mixsim {
namespace {

bool g_session_active = false;

template <class T>
void allreduce_chunked(MPI_Comm comm, T* data, std::size_t n, MPI_Datatype type) {
  constexpr std::size_t kChunk = std::size_t{1} << 30;
  for (std::size_t off = 0; off < n; off += kChunk) {
    const int count = static_cast<int>(std::min(kChunk, n - off));
    check_mpi(MPI_Allreduce(MPI_IN_PLACE, data + off, count, type, MPI_SUM, comm), "MPI_Allreduce");
  }
}

}  // namespace

void check_mpi(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  fail("{} failed: {}", call, std::string(text, static_cast<std::size_t>(len)));
}

MpiSession::MpiSession(int* argc, char*** argv) {
  // Open MPI's default allreduce decision for two ranks on one node picks an algorithm that moves
  // a 43 MB gradient buffer at half the speed of the ring (28 vs 15 ms, bench numbers in
  // docs/benchmarks.md); the ring is bandwidth-optimal for large buffers and falls back to
  // recursive doubling for small ones. A user's own choice (any allreduce MCA setting in the
  // environment) wins; other MPI implementations ignore these variables.
  if (!std::getenv("OMPI_MCA_coll_tuned_use_dynamic_rules") &&
      !std::getenv("OMPI_MCA_coll_tuned_allreduce_algorithm")) {
    setenv("OMPI_MCA_coll_tuned_use_dynamic_rules", "1", 0);
    setenv("OMPI_MCA_coll_tuned_allreduce_algorithm", "4", 0);  // 4 = ring
  }
  int provided = 0;
  check_mpi(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
  // Errors come back as codes so they become exceptions with a message, not silent aborts.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  g_session_active = true;
}

MpiSession::~MpiSession() {
  g_session_active = false;
  MPI_Finalize();
}

bool MpiSession::active() { return g_session_active; }

struct Communicator::Handle {
  MPI_Comm comm = MPI_COMM_NULL;
  bool owned = false;
  Handle(MPI_Comm c, bool own) : comm(c), owned(own) {}
  ~Handle() {
    if (owned && comm != MPI_COMM_NULL && MpiSession::active()) MPI_Comm_free(&comm);
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
};

Communicator::Communicator(std::shared_ptr<const Handle> handle) : comm_(std::move(handle)) {
  check_mpi(MPI_Comm_rank(comm_->comm, &rank_), "MPI_Comm_rank");
  check_mpi(MPI_Comm_size(comm_->comm, &size_), "MPI_Comm_size");
}

MPI_Comm Communicator::handle() const { return comm_ ? comm_->comm : MPI_COMM_NULL; }

Communicator Communicator::world() {
  MIXSIM_CHECK(MpiSession::active(), "Communicator::world() without an MpiSession");
  return Communicator(std::make_shared<const Handle>(MPI_COMM_WORLD, false));
}

void Communicator::allreduce_sum(std::span<float> data) const {
  allreduce_chunked(handle(), data.data(), data.size(), MPI_FLOAT);
}
void Communicator::allreduce_sum(std::span<double> data) const {
  allreduce_chunked(handle(), data.data(), data.size(), MPI_DOUBLE);
}
void Communicator::allreduce_sum(std::span<std::int64_t> data) const {
  allreduce_chunked(handle(), data.data(), data.size(), MPI_INT64_T);
}

double Communicator::allreduce_sum(double value) const {
  check_mpi(MPI_Allreduce(MPI_IN_PLACE, &value, 1, MPI_DOUBLE, MPI_SUM, handle()), "MPI_Allreduce");
  return value;
}
double Communicator::allreduce_max(double value) const {
  check_mpi(MPI_Allreduce(MPI_IN_PLACE, &value, 1, MPI_DOUBLE, MPI_MAX, handle()), "MPI_Allreduce");
  return value;
}
double Communicator::allreduce_min(double value) const {
  check_mpi(MPI_Allreduce(MPI_IN_PLACE, &value, 1, MPI_DOUBLE, MPI_MIN, handle()), "MPI_Allreduce");
  return value;
}
bool Communicator::any(bool flag) const {
  int v = flag ? 1 : 0;
  check_mpi(MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_INT, MPI_LOR, handle()), "MPI_Allreduce");
  return v != 0;
}

void Communicator::broadcast(void* data, std::size_t bytes, int root) const {
  auto* p = static_cast<char*>(data);
  constexpr std::size_t kChunk = std::size_t{1} << 30;
  for (std::size_t off = 0; off < bytes; off += kChunk) {
    const int count = static_cast<int>(std::min(kChunk, bytes - off));
    check_mpi(MPI_Bcast(p + off, count, MPI_BYTE, root, handle()), "MPI_Bcast");
  }
}

void Communicator::broadcast(std::string& text, int root) const {
  std::uint64_t n = text.size();
  broadcast(&n, sizeof n, root);
  text.resize(n);
  broadcast(text.data(), n, root);
}

void Communicator::barrier() const { check_mpi(MPI_Barrier(handle()), "MPI_Barrier"); }

Communicator Communicator::split(int color, int key) const {
  MPI_Comm comm = MPI_COMM_NULL;
  check_mpi(MPI_Comm_split(handle(), color, key, &comm), "MPI_Comm_split");
  auto owned = std::make_shared<const Handle>(comm, true);
  MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
  return Communicator(std::move(owned));
}

}  // namespace mixsim
