#include "mixsim/core/signals.hpp"

#include <csignal>

namespace mixsim {
namespace {

volatile std::sig_atomic_t g_signal = 0;
struct sigaction g_old_term, g_old_usr1;

extern "C" void on_stop_signal(int sig) { g_signal = sig; }

}  // namespace

StopSignals::StopSignals() {
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;  // blocking calls (file I/O, MPI) continue; the loop polls
  sigaction(SIGTERM, &action, &g_old_term);
  sigaction(SIGUSR1, &action, &g_old_usr1);
}

StopSignals::~StopSignals() {
  sigaction(SIGTERM, &g_old_term, nullptr);
  sigaction(SIGUSR1, &g_old_usr1, nullptr);
}

bool StopSignals::requested() { return g_signal != 0; }
int StopSignals::signal_number() { return g_signal; }
void StopSignals::clear() { g_signal = 0; }

}  // namespace mixsim
