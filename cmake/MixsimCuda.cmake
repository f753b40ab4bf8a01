# MIXSIM_CUDA=AUTO|ON|OFF. AUTO builds the CUDA backend whenever nvcc is found, even on machines
# with no GPU (CI compiles every kernel; the gpu tests then skip at run time).

string(TOUPPER "${MIXSIM_CUDA}" _cuda_mode)
if(NOT _cuda_mode MATCHES "^(AUTO|ON|OFF)$")
  message(FATAL_ERROR "MIXSIM_CUDA must be AUTO, ON or OFF (got '${MIXSIM_CUDA}')")
endif()

set(MIXSIM_HAVE_CUDA OFF)
if(NOT _cuda_mode STREQUAL "OFF")
  if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES 80 90a)  # A100; H100/H200 with their sm_90a instructions (wgmma)
    endif()
    enable_language(CUDA)
    # CMake 3.25 predates nvcc 13 and does not know its C++20 flag; tell it (nvcc 12+ has it).
    set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
    set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
    list(APPEND CMAKE_CUDA_COMPILE_FEATURES cuda_std_20)
    set(CMAKE_CUDA_STANDARD 20)
    # CUDA 13 has no nvToolsExt library, and Debian 12's FindCUDAToolkit (CMake 3.25.1) then sets a
    # property on the CUDA::nvToolsExt target it did not create, which stops configure ("could
    # not find TARGET CUDA::nvToolsExt"; seen in a stock Debian 12 chroot). An empty target of
    # that name, which mixsim never links, lets it through. Newer CMake checks first, and is left
    # alone.
    if(CMAKE_VERSION VERSION_LESS 3.26 AND NOT TARGET CUDA::nvToolsExt)
      add_library(CUDA::nvToolsExt INTERFACE IMPORTED)
    endif()
    find_package(CUDAToolkit REQUIRED)
    find_library(MIXSIM_NCCL_LIBRARY NAMES nccl HINTS ${CUDAToolkit_LIBRARY_DIR})
    find_path(MIXSIM_NCCL_INCLUDE_DIR NAMES nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS})
    if(NOT MIXSIM_NCCL_LIBRARY OR NOT MIXSIM_NCCL_INCLUDE_DIR)
      message(FATAL_ERROR "The CUDA backend needs NCCL (nccl.h and libnccl), not found next to the "
                          "CUDA toolkit at ${CUDAToolkit_LIBRARY_DIR}. Install NCCL or configure "
                          "with -DMIXSIM_CUDA=OFF")
    endif()
    add_library(mixsim_nccl INTERFACE)
    target_link_libraries(mixsim_nccl INTERFACE ${MIXSIM_NCCL_LIBRARY})
    target_include_directories(mixsim_nccl SYSTEM INTERFACE ${MIXSIM_NCCL_INCLUDE_DIR})
    set(MIXSIM_HAVE_CUDA ON)
  elseif(_cuda_mode STREQUAL "ON")
    message(FATAL_ERROR "MIXSIM_CUDA=ON but no CUDA compiler (nvcc) was found. Install the CUDA "
                        "Toolkit, set CMAKE_CUDA_COMPILER, or configure with -DMIXSIM_CUDA=AUTO/OFF")
  endif()
endif()
