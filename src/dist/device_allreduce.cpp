#include "mixsim/dist/device_allreduce.hpp"

#include <cstdlib>
#include <string>
#include <string_view>

namespace mixsim {

std::unique_ptr<DeviceAllreduce> make_device_allreduce(const Communicator& group,
                                                       Backend& backend) {
  if (group.size() == 1 || backend.name() == "cpu") return nullptr;
  const char* setting = std::getenv("MIXSIM_NCCL");
  if (setting && std::string_view(setting) == "0") return nullptr;
  std::string id;
  if (group.rank() == 0) id = nccl_unique_id();
  group.broadcast(id, 0);
  return make_nccl_allreduce(backend, id, group.size(), group.rank());
}

}  // namespace mixsim
