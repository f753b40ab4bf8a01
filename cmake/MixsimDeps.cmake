# Host dependencies of mixsim. Each one is required; a missing one stops configure with the
# Debian package that provides it (scripts/setup.sh installs all of them).
#
# MIXSIM_COMPUTE_ONLY builds only the model, the backends, the gpu tests and the gpu benchmarks,
# which need fmt, OpenBLAS, OpenMP and GoogleTest but no MPI, HDF5, Boost, zlib or json: the GPU
# machine's build (scripts/gpu-check.sh). MIXSIM_DEPS_ROOT is a private root where Debian
# packages were unpacked with dpkg -x (its usr/ is searched first).
option(MIXSIM_COMPUTE_ONLY "Build only the compute layers, gpu tests and gpu benchmarks" OFF)
set(MIXSIM_DEPS_ROOT "" CACHE PATH "Root of Debian packages unpacked with dpkg -x (gpu-check.sh)")
if(MIXSIM_DEPS_ROOT)
  list(PREPEND CMAKE_PREFIX_PATH ${MIXSIM_DEPS_ROOT}/usr
       ${MIXSIM_DEPS_ROOT}/usr/lib/x86_64-linux-gnu/cmake)
  set(_deps_multiarch ${MIXSIM_DEPS_ROOT}/usr/lib/x86_64-linux-gnu)
  set(_deps_include ${MIXSIM_DEPS_ROOT}/usr/include/x86_64-linux-gnu)
endif()

function(mixsim_require found what package)
  if(NOT ${found})
    message(FATAL_ERROR "mixsim needs ${what}, which was not found. "
                        "Install it with: apt-get install ${package}  (or run scripts/setup.sh)")
  endif()
endfunction()

if(NOT MIXSIM_COMPUTE_ONLY)
# --- Open MPI: every stage runs under mpirun/srun. The deprecated C++ bindings are not used.
set(MPI_CXX_SKIP_MPICXX ON CACHE BOOL "" FORCE)
find_package(MPI COMPONENTS C CXX)
mixsim_require(MPI_FOUND "MPI (Open MPI)" "libopenmpi-dev openmpi-bin")

# --- HDF5: SERIAL, chosen on purpose (docs/architecture.md, "Why serial HDF5"): every mixsim file
# is written by one rank (rank 0 gathers), so parallel I/O buys nothing at our file sizes, while
# the serial library keeps every tool and test free of collective opens and ships with fewer
# dependencies to the GPU machine. HDF5_ROOT pins the serial build: with both installed, CMake's
# defaults can otherwise mix the parallel C library with the serial C++ one (platform-notes.md).
if(NOT HDF5_ROOT AND EXISTS /usr/lib/x86_64-linux-gnu/hdf5/serial)
  set(HDF5_ROOT /usr/lib/x86_64-linux-gnu/hdf5/serial)
endif()
find_package(HDF5 COMPONENTS C)
mixsim_require(HDF5_FOUND "HDF5 (serial)" "libhdf5-dev")
if(HDF5_IS_PARALLEL)
  message(FATAL_ERROR "mixsim uses the serial HDF5 library but found a parallel one at "
                      "${HDF5_INCLUDE_DIRS}. Pass -DHDF5_ROOT=/usr/lib/x86_64-linux-gnu/hdf5/serial")
endif()

# --- Boost.Program_options: job files (INI) and command lines.
find_package(Boost 1.74 QUIET COMPONENTS program_options)
mixsim_require(Boost_FOUND "Boost.Program_options >= 1.74" "libboost-program-options-dev")

endif()

# --- GoogleTest: the test suite.
find_package(GTest QUIET)
mixsim_require(GTest_FOUND "GoogleTest" "libgtest-dev libgmock-dev")

# --- fmt: message formatting (g++ 12 has no std::format).
find_package(fmt QUIET)
mixsim_require(fmt_FOUND "the fmt library" "libfmt-dev")

if(NOT MIXSIM_COMPUTE_ONLY)
# --- zlib (gzip corpora) and nlohmann-json (jsonl corpora).
find_package(ZLIB QUIET)
mixsim_require(ZLIB_FOUND "zlib" "zlib1g-dev")
find_package(nlohmann_json 3 QUIET)
mixsim_require(nlohmann_json_FOUND "nlohmann-json" "nlohmann-json3-dev")

endif()

# --- OpenMP: the CPU backend's parallel loops.
find_package(OpenMP COMPONENTS CXX)
mixsim_require(OpenMP_CXX_FOUND "OpenMP (libgomp)" "g++")

# --- BLAS: OpenBLAS, OpenMP build. Chosen by measurement against BLIS and OpenBLAS-pthreads
# (docs/benchmarks.md, "BLAS choice"): fastest with 1 thread on the model's shapes and sharing
# one OpenMP thread pool with the backend's own loops.
set(_blas_dir /usr/lib/x86_64-linux-gnu/openblas-openmp)
find_library(MIXSIM_BLAS_LIBRARY NAMES openblas
             HINTS ${_deps_multiarch}/openblas-openmp ${_blas_dir} NO_DEFAULT_PATH)
find_path(MIXSIM_BLAS_INCLUDE_DIR NAMES cblas.h
          HINTS ${_deps_include}/openblas-openmp /usr/include/x86_64-linux-gnu/openblas-openmp
          NO_DEFAULT_PATH)
if(NOT MIXSIM_BLAS_LIBRARY OR NOT MIXSIM_BLAS_INCLUDE_DIR)
  mixsim_require(FALSE "OpenBLAS (OpenMP variant)" "libopenblas-openmp-dev")
endif()
add_library(mixsim_blas INTERFACE)
target_link_libraries(mixsim_blas INTERFACE ${MIXSIM_BLAS_LIBRARY} OpenMP::OpenMP_CXX)
target_include_directories(mixsim_blas SYSTEM INTERFACE ${MIXSIM_BLAS_INCLUDE_DIR})

# HDF5 as a target with system includes, so its headers do not trip our -Werror.
if(MIXSIM_COMPUTE_ONLY)
  return()
endif()
add_library(mixsim_hdf5 INTERFACE)
target_include_directories(mixsim_hdf5 SYSTEM INTERFACE ${HDF5_INCLUDE_DIRS})
target_link_libraries(mixsim_hdf5 INTERFACE ${HDF5_C_LIBRARIES})
target_compile_definitions(mixsim_hdf5 INTERFACE ${HDF5_DEFINITIONS})
