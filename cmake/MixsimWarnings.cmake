# Compile flags for mixsim's own code: warnings as errors, optional sanitizers.
# Link mixsim_warnings PRIVATE into every target built from our sources.

add_library(mixsim_warnings INTERFACE)
target_compile_options(mixsim_warnings INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor>
  $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<BOOL:${MIXSIM_WERROR}>>:-Werror>
  $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra>
  $<$<AND:$<COMPILE_LANGUAGE:CUDA>,$<BOOL:${MIXSIM_WERROR}>>:-Werror=all-warnings>)

if(MIXSIM_SANITIZE)
  target_compile_options(mixsim_warnings INTERFACE
    $<$<COMPILE_LANGUAGE:CXX>:-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined>)
  target_link_options(mixsim_warnings INTERFACE -fsanitize=address,undefined)
  target_sources(mixsim_warnings INTERFACE ${CMAKE_CURRENT_LIST_DIR}/sanitizer_defaults.cpp)
endif()
