#include "mixsim/core/error.hpp"

namespace mixsim {

void internal_error(const char* file, int line, const std::string& what) {
  throw Error(fmt::format("internal error at {}:{}: {} (this is a bug in mixsim; please report it "
                          "with the command that triggered it)",
                          file, line, what.empty() ? "check failed" : what));
}

}  // namespace mixsim
