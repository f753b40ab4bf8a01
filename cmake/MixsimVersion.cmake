# Generates ${CMAKE_BINARY_DIR}/generated/mixsim/version.hpp at every build, so that
# `mixsim --version` names the git revision the binary was built from. The header is rewritten
# only when the revision changes, so an unchanged tree rebuilds nothing.

set(MIXSIM_GENERATED_DIR ${CMAKE_BINARY_DIR}/generated)
add_custom_target(mixsim_version_header
  COMMAND ${CMAKE_COMMAND}
          -DSRC=${CMAKE_SOURCE_DIR} -DOUT=${MIXSIM_GENERATED_DIR}/mixsim/version.hpp
          -DVERSION=${PROJECT_VERSION} -P ${CMAKE_SOURCE_DIR}/cmake/WriteVersion.cmake
  BYPRODUCTS ${MIXSIM_GENERATED_DIR}/mixsim/version.hpp
  COMMENT "mixsim version header")
