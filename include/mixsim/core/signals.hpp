// Preemption signals. SIGTERM and SIGUSR1 (what SLURM sends before a time limit with --signal)
// set a flag instead of killing the process; training checks it between steps, writes a
// checkpoint and exits with kExitInterrupted, so a requeued job resumes where it stopped.
#pragma once

namespace mixsim {

inline constexpr int kExitInterrupted = 3;  // stopped by a signal after writing a checkpoint

class StopSignals {
 public:
  StopSignals();   // installs the handlers; the previous ones come back on destruction
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  static bool requested();     // a stop signal arrived since install (or since clear)
  static int signal_number();  // which one (0 if none)
  static void clear();
};

}  // namespace mixsim
