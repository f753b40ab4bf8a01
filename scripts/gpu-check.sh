#!/usr/bin/env bash
# The GPU check of the CUDA backend, as ONE prepared script for a machine with one NVIDIA H100 or
# H200 that has nvcc (CUDA 13), CMake, a C++ compiler and PyTorch, but no Open MPI, HDF5, Boost or
# GoogleTest and no network. It
#   1. unpacks Debian packages from .gpudeps/ into two private roots (no system directory is
#      touched): what the compute layers need (fmt, GoogleTest, OpenBLAS and its Fortran runtime),
#      and what the pipeline binary needs on top (Open MPI, serial HDF5, Boost.Program_options,
#      nlohmann-json, zlib and their libraries), kept apart so that only mixsim's own processes
#      see the second root's libraries, never PyTorch or CMake;
#   2. builds mixsim with the CUDA backend, the gpu tests and the gpu benchmarks, and the mixsim
#      binary with the pipeline's gpu tests (tests/gpu/pipeline); where the pipeline's packages
#      are missing or its configure fails, the compute layers only (-DMIXSIM_COMPUTE_ONLY=ON);
#   3. runs the gpu tests (every CUDA op against the CPU backend, a training step, 20 steps);
#   4. checks one forward/backward against PyTorch on the same weights (scripts/gpu/torch_check.py),
#      then runs the pipeline on the GPU (train, pool and merge-eval with backend cuda and
#      cuda-bf16 against the CPU's, two ranks on the GPU under the private Open MPI's mpirun, a
#      killed run resumed);
#   5. benchmarks training (bench_gpu_train), the step's matrix products as cuBLAS runs them alone
#      (bench_gpu_gemm), averaging (bench_gpu_averaging), and PyTorch's training of the same model
#      on the same card (scripts/gpu/torch_train.py);
#   6. profiles every kernel of one bf16 GPT-2 step with Nsight Compute (time and DRAM bytes per
#      kernel, scripts/gpu/ncu_summary.py; where ncu is installed);
#   7. runs the op tests under compute-sanitizer memcheck (where it is installed);
#   8. prints a short table of all of it, ending with the issue's speed targets, met or not.
# The steps come in the order of what a short run must not miss: memcheck and then PyTorch's fp32
# training (the yardstick of the fp32 rows, measured in every run so far) come last.
# Each step has its own time limit and the script goes on after a failed step, so one run tells
# as much as it can. Logs go to build-gpu/logs, and with $OUT set (the device tool's output
# folder) into $OUT/gpu-check-logs.tgz beside $OUT/summary.txt.
#
# Here (a machine with apt and network), once:   scripts/gpu-check.sh --fetch
#   downloads the .deb files into .gpudeps/ (about 41 MB; ignored by git, carried to the GPU).
# There:                              scripts/gpu-check.sh [--quick | --tests FILTER | --compare S...]
#   --quick skips the 1.1B shape and PyTorch's compiled run (the slowest steps);
#   --tests FILTER builds (incrementally, on a machine still warm) and runs only the gpu tests that
#     the GoogleTest filter names, once plainly and once under memcheck: the second call of a
#     session, after a fix, when the first run named failed tests ('GpuPipeline.*' reruns the
#     pipeline's tests instead, after the mpirun step, and rebuilds the binary);
#   --compare 'VAR=VALUE ...' ... builds and times GPT-2 bf16 training with the default switches
#     and with each setting given (environment assignments: MIXSIM_NAME=0 or 1, or
#     MIXSIM_NAME_FILE=PATH, e.g. the choices table that a full run's tune step wrote to
#     build-gpu/cublaslt-choices.txt), in two rounds, then torch.compile
#     twice: whether a switch pays, on one card in one call (run 9 did this by hand); then each
#     setting's per-op profile, and a row of the ops it moves by 2% or more against the defaults;
#     a row names the settings whose two rounds both beat the defaults' faster one;
#     GPU_CHECK_COMPARE_TORCH=0 leaves torch.compile out (about 3 minutes: the full run just
#     before on the same machine timed it);
#   GPU_CHECK_NCU=1 adds Nsight Compute's view of what bounds each kernel of a step (SM and memory
#     throughput, occupancy, issue-slot use) and its report on the attention kernels.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
DEBS=(libfmt-dev libfmt9 libgtest-dev libgmock-dev libopenblas0-openmp libopenblas-openmp-dev
      libgfortran5 libquadmath0)
# The pipeline's packages: the -dev packages for headers and link names, and the runtime closure
# of libmpi, orterun/orted and the components a one-node run loads, libhdf5_serial (which needs
# libcurl4 and libcrypto) and Boost.Program_options, less glibc, libstdc++, libgcc and libgomp,
# which every compiler's machine has (--fetch checks that with scripts/gpu/deb_closure.py, which
# follows the NEEDED entries of those files through the packages). Open MPI's network components
# (UCX, libfabric, InfiniBand) are left out: a one-node run uses shared memory, and a component
# whose library is missing is skipped.
PIPELINE_DEBS=(openmpi-bin openmpi-common libopenmpi3 libopenmpi-dev libpmix2 libhwloc15
  libevent-core-2.1-7 libevent-pthreads-2.1-7 libmunge2 libnuma1 libnl-3-200 libnl-route-3-200
  libudev1 libhdf5-dev libhdf5-103-1 libsz2 libaec0 libcurl4 libssl3 libbrotli1 libgssapi-krb5-2
  libkrb5-3 libk5crypto3 libkrb5support0 libkeyutils1 libcom-err2 libidn2-0 libunistring2
  libldap-2.5-0 libsasl2-2 libsasl2-modules-db libdb5.3 libnghttp2-14 libpsl5 librtmp1 libgnutls30
  libnettle8 libhogweed6 libgmp10 libp11-kit0 libffi8 libtasn1-6 libssh2-1 libzstd1 zlib1g
  zlib1g-dev libboost-program-options1.74.0 libboost-program-options1.74-dev libboost1.74-dev
  nlohmann-json3-dev)

if [[ "${1:-}" == "--fetch" ]]; then
  mkdir -p .gpudeps && cd .gpudeps || exit 1
  rm -f ./*.deb
  apt-get download "${DEBS[@]}" "${PIPELINE_DEBS[@]}" ||
    { echo "gpu-check: apt-get download failed" >&2; exit 1; }
  du -sh .
  # every library that the pipeline's packages need is among them (or in every machine's base)
  CHECK=$(mktemp -d)
  for package in "${PIPELINE_DEBS[@]}"; do dpkg -x "$(ls "${package}"_*.deb)" "$CHECK"; done
  python3 ../scripts/gpu/deb_closure.py "$CHECK"
  rc=$?
  rm -rf "$CHECK"
  exit "$rc"
fi
QUICK=0 FILTER=
declare -a COMPARE=()  # --compare's settings, each a list of VAR=VALUE
case "${1:-}" in
  --quick) QUICK=1 ;;
  --compare)
    shift
    COMPARE=("$@")
    ((${#COMPARE[@]})) || { echo "gpu-check: --compare needs settings, e.g. 'MIXSIM_TC_WIDE_FORWARD=1'" >&2; exit 2; }
    for setting in "${COMPARE[@]}"; do
      for word in $setting; do
        if [[ "$word" =~ ^MIXSIM_[A-Z0-9_]+_FILE=(.+)$ ]]; then  # a file the backend reads
          [[ -f "${BASH_REMATCH[1]}" ]] ||
            { echo "gpu-check: --compare: '$word' names no file" >&2; exit 2; }
          continue
        fi
        [[ "$word" =~ ^MIXSIM_[A-Z0-9_]+=[01]$ ]] ||
          { echo "gpu-check: --compare takes MIXSIM_NAME=0 or =1 settings (or MIXSIM_NAME_FILE=PATH), not '$word'" >&2; exit 2; }
      done
    done
    ;;
  --tests)
    FILTER=${2:-}
    [[ -n "$FILTER" ]] || { echo "gpu-check: --tests needs a GoogleTest filter, e.g. 'CudaOps.Classifier*'" >&2; exit 2; }
    ;;
  "") ;;
  *) echo "gpu-check: unknown option '$1' (expected --fetch, --quick, --tests FILTER or --compare SETTINGS)" >&2; exit 2 ;;
esac
# cuda-bf16's switches (include/mixsim/core/env.hpp) are set per step below; none leaks in from
# the caller's environment, so that the tests and the table mean the defaults they say.
unset MIXSIM_TC_ATTENTION MIXSIM_CUBLASLT MIXSIM_BF16_ACTIVATIONS MIXSIM_BF16_OUTPUTS \
  MIXSIM_BF16_WEIGHTS MIXSIM_TC_WIDE_FORWARD MIXSIM_CLASSIFIER_EXP2 MIXSIM_GELU_EXP2 \
  MIXSIM_BF16_ATTENTION_OUT MIXSIM_LAYERNORM_VEC4 MIXSIM_ATTENTION_HEAVY_FIRST \
  MIXSIM_ATTENTION_FUSED_DQ MIXSIM_CUBLASLT_TUNE MIXSIM_CUBLASLT_TUNE_OUT MIXSIM_CUBLASLT_CHOICES \
  MIXSIM_CUBLASLT_CHOICES_FILE MIXSIM_BF16_GELU_EPILOGUE MIXSIM_LAYERNORM_FEEDS_PRODUCT \
  MIXSIM_CLASSIFIER_TWO_ROWS MIXSIM_BF16_BRANCH_OUTPUTS

START=$(date +%s)
STATUS=0  # 1 when a test or a check failed (the benchmarks only report)
LOG=$ROOT/build-gpu/logs  # one log per step; packed into $OUT (the device tool's folder) at the end
rm -rf "$LOG" && mkdir -p "$LOG"
declare -a TABLE
row() { TABLE+=("$(printf '%-34s %s' "$1" "$2")"); echo "gpu-check: $1: $2"; }
elapsed() { echo "$(( $(date +%s) - START )) s"; }
# step NAME LIMIT_S COMMAND...: runs with a time limit, output to $LOG/NAME.log and the terminal.
# No step runs past the whole script's deadline (GPU_CHECK_DEADLINE_S, 450 s): the table at the
# end is always printed, and the device call that runs this script keeps its margin.
DEADLINE=$((START + ${GPU_CHECK_DEADLINE_S:-450}))
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((DEADLINE - $(date +%s)))
  if ((left < 10)); then
    echo "gpu-check: $name skipped: the script's deadline is reached" | tee "$LOG/$name.log"
    return 125
  fi
  ((limit > left)) && limit=$left
  echo "=== $name (limit ${limit} s, at $(elapsed))"
  local begun
  begun=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$LOG/$name.log"
  local rc=${PIPESTATUS[0]}
  STEP_TIMES+=("$(($(date +%s) - begun)) $name")
  [[ $rc == 124 || $rc == 137 ]] && echo "gpu-check: $name ran past ${limit} s"
  return "$rc"
}
declare -a STEP_TIMES  # "SECONDS NAME" of each step run, for the table's last row
result() {  # result LOGNAME: the RESULT lines of a step's log as "what config|values" rows
  grep '^RESULT' "$LOG/$1.log" 2> /dev/null | while read -r _ what cfg rest; do
    echo "$what $cfg|$rest"
  done
}
value() {  # value LOG LABEL-PREFIX KEY [CONFIG]: KEY's value on the RESULT line of LABEL in LOG
  # for CONFIG (gpt2 unless given)
  grep "^RESULT $2[^ ]* ${4:-gpt2} " "$LOG/$1.log" 2> /dev/null | tail -1 | grep -o "$3=[0-9.]*" |
    cut -d= -f2
}
# torch.compile's GPT-2 bf16 training, twice (steps torch-bf16-compile-1 and -2): one session's two
# runs gave 421k and 350k tokens/s (H200, run 9), a wider spread than the gap the speed target
# asks about, and later calls 402k and 346k, 355k and 308k; each timed 10 steps (0.2 s) after 3
# warm-up steps until 2026-11-27, now 30 after 5, as bench_gpu_train's GPT-2 rows (also 10
# before); torch_compile_tps [CONFIG] prints the runs' tokens/s for CONFIG (gpt2 unless given),
# one a line. Each run also times steps of 8 micro-batches (gpt2-x8) in the same process, where
# the compiled model is the same (about 1 s more, no second compile).
torch_compile_twice() {
  for run in 1 2; do
    step "torch-bf16-compile-$run" 240 python3 scripts/gpu/torch_train.py --config gpt2 \
      --dtype bf16 --compile --steps 30 --accum 1,8
  done
}
torch_compile_tps() {
  for run in 1 2; do value "torch-bf16-compile-$run" torch-bf16-compile tokens_per_s "${1:-gpt2}"; done
}

echo "=== machine"
# (compute mode: two ranks share the GPU in the pipeline's tests, which needs Default, not
# Exclusive_Process)
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_mode --format=csv,noheader 2>&1 |
  head -2
nvcc --version | tail -2
cmake --version | head -1
c++ --version | head -1
ldd --version | head -1  # the carried Debian 12 libraries need glibc 2.36 (libevent: arc4random)
python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(0))' 2>&1
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)

# 1. the build's dependencies, in two private roots: the compute layers' ($DEPS, on the library
# path of every step) and the pipeline's ($PDEPS, only for mixsim's own processes: PIPELINE_ENV)
# (GPU_CHECK_TMP moves both from /tmp: tests/scripts/gpu_check_test.sh runs copies side by side)
DEPS=${GPU_CHECK_TMP:-/tmp}/mixsim-deps PDEPS=${GPU_CHECK_TMP:-/tmp}/mixsim-pipeline-deps
rm -rf "$DEPS" "$PDEPS" && mkdir -p "$DEPS" "$PDEPS"
ls .gpudeps/*.deb > /dev/null 2>&1 ||
  { echo "gpu-check: no .gpudeps/*.deb: run scripts/gpu-check.sh --fetch where apt works" >&2; exit 1; }
for deb in .gpudeps/*.deb; do
  package=$(basename "$deb")
  package=${package%%_*}
  root=$DEPS
  [[ " ${PIPELINE_DEBS[*]} " == *" $package "* ]] && root=$PDEPS
  if command -v dpkg > /dev/null; then
    dpkg -x "$deb" "$root"
  else  # a .deb is an ar archive holding data.tar.xz (Debian 12)
    ar p "$deb" data.tar.xz | tar -x -J -C "$root"
  fi
done
MULTI=$DEPS/usr/lib/x86_64-linux-gnu
export LD_LIBRARY_PATH=$MULTI:$MULTI/openblas-openmp${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# The pipeline's environment, for the configure's MPI wrappers and for mixsim's processes: the
# libraries (Debian 12 keeps some under /lib); Open MPI moved to $PDEPS (OPAL_PREFIX; PMIx's own
# PMIX_INSTALL_PREFIX and PMIX_PREFIX did not move it in a Debian 12 chroot, where it then asked
# for a help file of its build path, so its component path is set); mpirun on PATH; and a
# one-node Open MPI that needs no ssh (plm isolated), moves data through shared memory (pml ob1
# with the self and vader transports, no single-copy mechanism: the GPU machine runs in gVisor),
# binds no process, lets ranks outnumber the cores that hwloc sees there, and is quiet about the
# components whose network libraries were left out.
PMULTI=$PDEPS/usr/lib/x86_64-linux-gnu
mkdir -p "$PDEPS/bin"
ln -sf ../usr/bin/orterun "$PDEPS/bin/mpirun"
PIPELINE_ENV=(
  "LD_LIBRARY_PATH=$PMULTI:$PDEPS/lib/x86_64-linux-gnu:$LD_LIBRARY_PATH" "PATH=$PDEPS/bin:$PATH"
  "OPAL_PREFIX=$PDEPS/usr" "PMIX_MCA_mca_base_component_path=$PMULTI/pmix2/lib/pmix"
  OMPI_MCA_plm=isolated OMPI_MCA_pml=ob1 "OMPI_MCA_btl=self,vader" OMPI_MCA_osc=^ucx
  OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_hwloc_base_binding_policy=none
  OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_mca_base_component_show_load_errors=0
  PMIX_MCA_mca_base_component_show_load_errors=0 OMPI_ALLOW_RUN_AS_ROOT=1
  OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1)
printf -v QUOTED_ENV '%q ' "${PIPELINE_ENV[@]}"
for wrapper in mpicc mpicxx; do  # the MPI compiler wrappers, run by CMake's FindMPI
  printf '#!/usr/bin/env bash\nexec env %s %q "$@"\n' "$QUOTED_ENV" \
    "$PDEPS/usr/bin/$wrapper.openmpi" > "$PDEPS/bin/$wrapper"
  chmod +x "$PDEPS/bin/$wrapper"
done

finish() {  # prints the table, packs the logs into $OUT, exits with the status
  # the slowest steps, for fitting the next run into its 8 minutes
  row "slowest steps (s)" "$(printf '%s\n' "${STEP_TIMES[@]}" | sort -rn | head -8 |
    awk '{ printf "%s%s %s", (NR > 1 ? ", " : ""), $2, $1 }')"
  echo
  echo "=== gpu-check summary ($GPU; $(elapsed) in all; logs in $LOG)"
  printf '%s\n' "${TABLE[@]}" | tee "$LOG/summary.txt"
  if [[ -n "${OUT:-}" ]]; then
    cp "$LOG/summary.txt" "$OUT/" && tar -czf "$OUT/gpu-check-logs.tgz" -C "$LOG" .
    [[ -f "${CHOICES:-}" ]] && cp "$CHOICES" "$OUT/"
  fi
  exit "$STATUS"
}

# 2. build: sm_90a only (H100/H200, with their wgmma instructions), warnings not fatal (another
# compiler version may add some).
# The full build when the pipeline's packages are there; the compute layers alone otherwise.
GEN=()
command -v ninja > /dev/null && GEN=(-G Ninja)
BUILD=$ROOT/build-gpu
COMMON=(-DMIXSIM_DEPS_ROOT="$DEPS" -DMIXSIM_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a -DMIXSIM_WERROR=OFF)
PIPELINE=0
if [[ -x "$PDEPS/usr/bin/mpicc.openmpi" ]]; then
  # The linker resolves libhdf5's and libmpi's own libraries (libcurl, libopen-pal, ...) in $PDEPS,
  # and the binaries find them there at run time through an old-style RPATH, which (unlike
  # RUNPATH) also serves the dependencies of libraries without a RUNPATH of their own (libhdf5):
  # ctest lists the pipeline's tests, which do not link libmpi, without the pipeline's
  # environment. libmpi's RUNPATH (Debian's path) hides that RPATH from libmpi's own libraries,
  # so whatever links libmpi (mixsim) runs under PIPELINE_ENV: mpirun and the tests see to that.
  # COMPUTE_ONLY=OFF: a fallback's cached ON must not survive into this configure on a warm
  # machine. zlib1g-dev's libz.so is an absolute link into / (not there): name the library.
  LINK_PATHS="$PMULTI:$PDEPS/lib/x86_64-linux-gnu:$PMULTI/openmpi/lib"
  LINK_FLAGS="-Wl,-rpath-link,$LINK_PATHS -Wl,--disable-new-dtags,-rpath,$LINK_PATHS"
  if step configure 120 cmake -S . -B "$BUILD" "${GEN[@]}" "${COMMON[@]}" \
      -DMPI_C_COMPILER="$PDEPS/bin/mpicc" -DMPI_CXX_COMPILER="$PDEPS/bin/mpicxx" \
      -DHDF5_ROOT="$PMULTI/hdf5/serial" -DCMAKE_PREFIX_PATH="$PDEPS/usr;$PMULTI/cmake" \
      -DMIXSIM_COMPUTE_ONLY=OFF -DZLIB_LIBRARY="$PDEPS/lib/x86_64-linux-gnu/libz.so.1" \
      -DCMAKE_EXE_LINKER_FLAGS="$LINK_FLAGS"; then
    PIPELINE=1
  else
    row "configure with the pipeline" "FAILED (see $LOG/configure.log): compute layers only"
    STATUS=1
  fi
else
  row "pipeline packages" "not in .gpudeps (scripts/gpu-check.sh --fetch): compute layers only"
fi
if ((PIPELINE)); then
  SCOPE="full, sm_90a" CONFIGURE_LOG=configure.log
else
  SCOPE="compute-only, sm_90a" CONFIGURE_LOG=configure-compute.log
  rm -rf "$BUILD/CMakeCache.txt" "$BUILD/CMakeFiles"  # a failed configure's cache (logs stay)
  step configure-compute 120 cmake -S . -B "$BUILD" "${GEN[@]}" "${COMMON[@]}" \
    -DMIXSIM_COMPUTE_ONLY=ON
fi
if step build 300 cmake --build "$BUILD" -j "$(nproc)" --target mixsim_gpu_checks; then
  row "build ($SCOPE)" "ok, $(elapsed)"
else
  row "build ($SCOPE)" "FAILED (see $LOG/$CONFIGURE_LOG, build.log)"
  STATUS=1
  finish
fi
# the binary and the pipeline's gpu tests: a failure here costs only the pipeline's row (with
# --tests, only for a filter of the pipeline's tests)
[[ -n "$FILTER" && "$FILTER" != GpuPipeline* ]] && PIPELINE=0
((${#COMPARE[@]})) && PIPELINE=0
if ((PIPELINE)); then
  if step build-pipeline 180 cmake --build "$BUILD" -j "$(nproc)" --target mixsim_gpu_pipeline; then
    row "build (mixsim binary)" "ok, $(elapsed)"
  else
    row "build (mixsim binary)" "FAILED (see $LOG/build-pipeline.log)"
    STATUS=1 PIPELINE=0
  fi
fi

# gtest_row STEP LABEL: a row of GoogleTest's closing counts in STEP's log (e.g. "[  PASSED  ] 3
# tests." and "[  FAILED  ] 1 test, listed below:" give "3 PASSED 1 FAILED", and "[  SKIPPED ] 2
# tests, listed below:" adds "2 SKIPPED"; also left in COUNTS)
# and a row naming the failed tests; a failure, a skip or no summary at all sets STATUS=1
gtest_row() {
  COUNTS=$(grep -E '^\[ +(PASSED|FAILED|SKIPPED) +\] [0-9]+ test' "$LOG/$1.log" |
    sed -E 's/^\[ +([A-Z]+) +\] ([0-9]+) .*/\2 \1/' | tr '\n' ' ')
  row "$2" "${COUNTS:-no GoogleTest summary (see $1.log)}"
  [[ -z "$COUNTS" || "$COUNTS" == *FAILED* || "$COUNTS" == *SKIPPED* ]] && STATUS=1
  local failed
  failed=$(grep -E '^\[  FAILED  \] [A-Za-z]' "$LOG/$1.log" | awk '{print $4}' | sort -u |
    tr '\n' ' ')
  if [[ -n "$failed" ]]; then row "  failed" "$failed"; fi
}

# pipeline_tests [FILTER]: the pipeline binary on the GPU (tests/gpu/pipeline): train, pool and
# merge-eval with backend cuda (two ranks sharing the GPU) and cuda-bf16 against the CPU's, and a
# killed GPU run resumed. The tests start mpirun, which needs the pipeline's environment; so the
# test binary runs directly, not through ctest. First the relocated Open MPI alone (MPI_Init and
# MPI_Finalize on two ranks), so that a launcher that fails or hangs costs 30 s and says so, not
# the pipeline step's limit.
pipeline_tests() {
  step mpirun 30 env "${PIPELINE_ENV[@]}" mpirun -np 2 "$BUILD/mixsim" --version
  case $? in
    0)
      row "mpirun -np 2 (private Open MPI)" "ok"
      step pipeline 120 env "${PIPELINE_ENV[@]}" "$BUILD/tests/gpu_pipeline_test" \
        --gtest_filter="${1:-*}" || STATUS=1
      gtest_row pipeline "pipeline on the GPU (mixsim binary)"
      ;;
    125) row "mpirun -np 2 (private Open MPI)" "skipped: the script's deadline is reached" ;;
    *)
      row "mpirun -np 2 (private Open MPI)" "FAILED: $(tail -1 "$LOG/mpirun.log"): pipeline not run"
      STATUS=1
      ;;
  esac
}

# --tests FILTER: only those tests, plainly and under memcheck; a filter of the pipeline's tests
# (GpuPipeline.*) runs those after the mpirun step, without memcheck (they are mpirun and mixsim)
if [[ "$FILTER" == GpuPipeline* ]]; then
  if ((PIPELINE)); then
    pipeline_tests "$FILTER"
  else
    row "pipeline" "not built: see the rows above"
    STATUS=1
  fi
  finish
fi
if [[ -n "$FILTER" ]]; then
  step gpu-tests-filtered 240 "$BUILD/tests/gpu_ops_test" --gtest_filter="$FILTER" || STATUS=1
  gtest_row gpu-tests-filtered "gpu tests ($FILTER)"
  [[ "$COUNTS" == "0 PASSED "* ]] && { row "  no test matches" "$FILTER"; STATUS=1; }
  if command -v compute-sanitizer > /dev/null; then
    step sanitizer-filtered 240 compute-sanitizer --tool memcheck --error-exitcode 1 \
      "$BUILD/tests/gpu_ops_test" --gtest_filter="$FILTER" || STATUS=1
    SAN=$(grep -E 'ERROR SUMMARY' "$LOG/sanitizer-filtered.log" | tail -1)
    row "compute-sanitizer memcheck ($FILTER)" "${SAN:-no summary (see sanitizer-filtered.log)}"
  fi
  finish
fi

# --compare SETTINGS: GPT-2 bf16 training with the default switches and with each setting, in two
# rounds (each round every setting once, so that a drift of the card's clocks touches all), then
# torch.compile twice, then each one's per-op profile (two steps, each op synchronised): which ops
# a setting moves, beside the tokens/s (session 11 ran these by hand)
# profile_ops LOG: the ops of a --profile log from 0.5 ms a step, slowest first
profile_ops() {
  awk 'NF == 3 && $3 == "ms/step" && $2 >= 0.5 { print $2, $1 }' "$1" 2> /dev/null | sort -rn |
    awk '{ printf "%s%s %.3f", (NR > 1 ? ", " : ""), $2, $1 } END { if (!NR) printf "none" }'
}
# moved_ops BASE_LOG LOG: the ops whose ms a step moved by 2% (and 0.01 ms) or more from BASE_LOG's
moved_ops() {
  awk 'NR == FNR { if (NF == 3 && $3 == "ms/step") base[$1] = $2; next }
    NF == 3 && $3 == "ms/step" && base[$1] > 0 {
      d = $2 - base[$1]; r = $2 / base[$1]
      if ((r >= 1.02 || r <= 0.98) && (d >= 0.01 || d <= -0.01))
        out = out sprintf("%s%s %.3f -> %.3f", (out ? ", " : ""), $1, base[$1], $2)
    }
    END { print (out ? out : "no op moved by 2% or more") }' "$1" "$2" 2> /dev/null
}
if ((${#COMPARE[@]})); then
  SETTINGS=("MIXSIM_BF16_OUTPUTS=1" "${COMPARE[@]}")  # the first: the defaults (a no-op setting)
  for round in 1 2; do
    for i in "${!SETTINGS[@]}"; do
      # shellcheck disable=SC2086 # a setting is a list of assignments
      step "compare-$i-$round" 90 env ${SETTINGS[$i]} "$BUILD/bench/bench_gpu_train" \
        --configs gpt2 --backend cuda-bf16
    done
  done
  [[ "${GPU_CHECK_COMPARE_TORCH:-1}" == 0 ]] || torch_compile_twice
  BASE='' BASE_MAX='' PAYS=()
  for i in "${!SETTINGS[@]}"; do
    runs=$(for round in 1 2; do value "compare-$i-$round" mixsim-bf16 tokens_per_s; done | xargs)
    mean=$(awk '{ s = 0; for (k = 1; k <= NF; ++k) s += $k; if (NF) printf "%.0f", s / NF }' <<< "$runs")
    ((i == 0)) && BASE=$mean && BASE_MAX=$(tr ' ' '\n' <<< "$runs" | sort -g | tail -1)
    # a setting pays where both its rounds beat the defaults' faster round
    if ((i > 0)) && [[ -n "$BASE_MAX" ]] && awk -v r="$runs" -v b="$BASE_MAX" \
      'BEGIN { n = split(r, x, " "); if (n < 2) exit 1; for (k = 1; k <= n; ++k) if (x[k] <= b) exit 1 }'; then
      PAYS+=("${SETTINGS[$i]}")
    fi
    what=${SETTINGS[$i]}
    ((i == 0)) && what="defaults"
    if [[ -n "$mean" && -n "$BASE" ]]; then
      row "compare: $what" "$(awk -v r="$runs" -v m="$mean" -v b="$BASE" \
        'BEGIN { printf "tokens/s %s, mean %s: %.3fx the defaults", r, m, m / b }')"
    else
      row "compare: $what" "no result (see compare-$i-*.log)"
    fi
  done
  if ((${#PAYS[@]})); then
    row "compare: pays in both rounds" "$(printf '%s; ' "${PAYS[@]}" | sed 's/; $//')"
  else
    row "compare: pays in both rounds" "none (no setting beat the defaults' faster round twice)"
  fi
  if [[ "${GPU_CHECK_COMPARE_TORCH:-1}" == 0 ]]; then
    row "compare: torch.compile" "left out (GPU_CHECK_COMPARE_TORCH=0)"
  else
    torch=$(torch_compile_tps | xargs)
    row "compare: torch.compile" "tokens/s ${torch:-no result}"
  fi
  for i in "${!SETTINGS[@]}"; do
    # shellcheck disable=SC2086 # a setting is a list of assignments
    step "compare-profile-$i" 60 env ${SETTINGS[$i]} "$BUILD/bench/bench_gpu_train" \
      --configs gpt2 --steps 2 --profile --backend cuda-bf16
    if ((i == 0)); then
      row "compare ops (ms a step): defaults" "$(profile_ops "$LOG/compare-profile-0.log")"
    else
      row "compare ops: ${SETTINGS[$i]}" \
        "$(moved_ops "$LOG/compare-profile-0.log" "$LOG/compare-profile-$i.log")"
    fi
  done
  finish
fi

# 3. gpu tests
# (the pipeline's gpu tests run on their own after the PyTorch checks, below)
step gpu-tests 240 ctest --test-dir "$BUILD" -L gpu -E '^gpu\.GpuPipeline\.' --output-on-failure \
  --timeout 200
SUMMARY=$(grep -E 'tests passed|tests failed' "$LOG/gpu-tests.log" | tail -1)
SKIPPED=$(grep -cE '^\s+[0-9]+ - gpu\..*\(Skipped\)' "$LOG/gpu-tests.log")
row "gpu tests (ctest -L gpu)" "${SUMMARY:-no summary} (skipped: $SKIPPED)"
FAILED=$(grep -E '^\s+[0-9]+ - gpu\.' "$LOG/gpu-tests.log" | grep -v '(Skipped)' | awk '{print $3}' |
  tr '\n' ' ')
[[ -n "$FAILED" || -z "$SUMMARY" || $SKIPPED != 0 ]] && STATUS=1
[[ -n "$FAILED" ]] && row "  failed" "$FAILED"

# 4. one forward/backward against PyTorch on the same weights (two shapes)
# check_torch NAME BACKEND "TOLERANCES" DUMP-OPTIONS...
check_torch() {
  local name=$1 backend=$2 tolerances=$3
  shift 3
  rm -rf "$BUILD/dump-$name"
  # shellcheck disable=SC2086 # the tolerances are two options
  if step "dump-$name" 60 "$BUILD/bench/bench_gpu_gpt_dump" --backend "$backend" --out "$BUILD/dump-$name" "$@" &&
    step "torch-check-$name" 120 python3 scripts/gpu/torch_check.py "$BUILD/dump-$name" --device cuda $tolerances; then
    row "PyTorch check, $name" "$(grep '^torch_check:' "$LOG/torch-check-$name.log" | tail -1 | cut -c14-)"
  else
    STATUS=1
    row "PyTorch check, $name" "FAILED: $(tail -1 "$LOG/torch-check-$name.log" 2> /dev/null || tail -1 "$LOG/dump-$name.log")"
  fi
}
check_torch awkward cuda "" --layers 2 --heads 3 --channels 72 --context 37 --vocab 257 --batch 3
check_torch gpt2-wide cuda "" --layers 2 --heads 12 --channels 768 --context 256 --vocab 50257 --batch 2
# bf16 products against torch's fp32: ~2.4e-3 relative per product (tests/gpu/ops_test.cpp,
# Bf16MatmulErrorIsBf16Rounding), a little more through the layers, and the largest element of a
# gradient tensor can be off by several times that: 5e-2. A wrong product is off by ~1.
# cuda-bf16 runs with five switches on by default (core/env.hpp). Checked here: with all of them
# off (the products alone, each rounding its weights at its use), and with all on, as it runs by
# default. (Runs 5 and 6 also checked each switch added on its own, tensor-core attention,
# cuBLASLt epilogues, bf16 storage, and all passed; run 7 checked the default without bf16 product
# outputs and the outputs on top; the gpu op tests check each switch against cpu-bf16 tightly,
# and the script must stay within 8 minutes.)
export MIXSIM_TC_ATTENTION=0 MIXSIM_CUBLASLT=0 MIXSIM_BF16_ACTIVATIONS=0 MIXSIM_BF16_WEIGHTS=0 \
  MIXSIM_BF16_OUTPUTS=0
check_torch gpt2-wide-bf16 cuda-bf16 "--tol-loss 1e-2 --tol-grad 5e-2" --layers 2 --heads 12 \
  --channels 768 --context 256 --vocab 50257 --batch 2
unset MIXSIM_TC_ATTENTION MIXSIM_CUBLASLT MIXSIM_BF16_ACTIVATIONS MIXSIM_BF16_WEIGHTS \
  MIXSIM_BF16_OUTPUTS
# (the products write the qkv, the MLP's pre-activation and its gradient, and the logits in bf16
# themselves, biases rounded to bf16 first: the dump's biases are random, so the rounding shows,
# far inside the tolerances)
check_torch gpt2-wide-bf16-all cuda-bf16 "--tol-loss 1e-2 --tol-grad 5e-2" --layers 2 \
  --heads 12 --channels 768 --context 256 --vocab 50257 --batch 2

# The pipeline binary on the GPU (pipeline_tests above)
((PIPELINE)) && pipeline_tests

# 5. speed: mixsim fp32, averaging, PyTorch
CONFIGS=small,gpt2,1.1b
((QUICK)) && CONFIGS=small,gpt2
# fp32 without the 1.1B shape (4k tokens/s: the issue asks for 1.1B in bf16, which the -all row
# has; the script must stay within 8 min)
step bench-train 240 "$BUILD/bench/bench_gpu_train" --configs small,gpt2
# cuda-bf16 with its switches added (+ cuBLASLt over tensor-core attention; then run 7's default,
# all but the bf16 product outputs and the exp2 classifier and GELU), then as it runs by default
# (all). The products-only, tensor-core-only and no-weight-copies rows of runs 5 to 7 are left out
# for time.
step bench-train-bf16-tc-lt 90 env MIXSIM_TC_ATTENTION=1 MIXSIM_CUBLASLT=1 \
  MIXSIM_BF16_ACTIVATIONS=0 MIXSIM_BF16_WEIGHTS=0 MIXSIM_BF16_OUTPUTS=0 MIXSIM_CLASSIFIER_EXP2=0 \
  MIXSIM_GELU_EXP2=0 "$BUILD/bench/bench_gpu_train" --configs gpt2 --backend cuda-bf16
step bench-train-bf16-nooutputs 90 env MIXSIM_BF16_OUTPUTS=0 MIXSIM_CLASSIFIER_EXP2=0 \
  MIXSIM_GELU_EXP2=0 "$BUILD/bench/bench_gpu_train" --configs gpt2 --backend cuda-bf16
step bench-train-bf16-all 120 "$BUILD/bench/bench_gpu_train" --configs "$CONFIGS" --backend cuda-bf16
# the opt-ins written without a GPU since run 11, together (the GPT-2 shape only): the bf16
# attention output and its gradient, LayerNorm with 16-byte accesses, the attention's longest
# blocks first, attention's backward in one kernel, the bf16 GELU in cuBLASLt's epilogue, the
# LayerNorm backward feeding the projections, the cached classifier two rows an SM, the residual
# branches' ends in bf16, the attention forward on wgmma (sm_90a; its backward on wgmma does not
# run with the fused dq: --compare measures it).
# --compare measures each on its own. (The
# opt-in wide attention forward had a row here until run 10, slower each time: --compare
# 'MIXSIM_TC_WIDE_FORWARD=1' measures it.)
step bench-train-bf16-optins 90 env MIXSIM_BF16_ATTENTION_OUT=1 MIXSIM_LAYERNORM_VEC4=1 \
  MIXSIM_ATTENTION_HEAVY_FIRST=1 MIXSIM_ATTENTION_FUSED_DQ=1 MIXSIM_BF16_GELU_EPILOGUE=1 \
  MIXSIM_LAYERNORM_FEEDS_PRODUCT=1 MIXSIM_CLASSIFIER_TWO_ROWS=1 MIXSIM_BF16_BRANCH_OUTPUTS=1 \
  MIXSIM_ATTENTION_WGMMA=1 "$BUILD/bench/bench_gpu_train" --configs gpt2 --backend cuda-bf16
# cuBLASLt's algorithms timed (MIXSIM_CUBLASLT_TUNE=1) on every bf16 shape, each choice written
# to a table (build-gpu/cublaslt-choices.txt, and $OUT's copy: as kernels/cublaslt_choices.txt it
# becomes the choices built into mixsim), then GPT-2 again running that table's choices without
# timing, as every process would (MIXSIM_CUBLASLT_CHOICES_FILE): the speed a committed table gives
CHOICES=$BUILD/cublaslt-choices.txt
rm -f "$CHOICES"
step bench-train-bf16-tune 120 env MIXSIM_CUBLASLT_TUNE=1 MIXSIM_CUBLASLT_TUNE_OUT="$CHOICES" \
  "$BUILD/bench/bench_gpu_train" --configs "$CONFIGS" --backend cuda-bf16
if [[ -f "$CHOICES" ]]; then
  row "cuBLASLt choices table (tuned)" \
    "$(grep -vc '^#' "$CHOICES") choices in $CHOICES (copied to \$OUT)"
  step bench-train-bf16-choices 90 env MIXSIM_CUBLASLT_CHOICES_FILE="$CHOICES" \
    "$BUILD/bench/bench_gpu_train" --configs gpt2 --backend cuda-bf16
  TPS=$(value bench-train-bf16-choices mixsim-bf16 tokens_per_s)
  BASE_TPS=$(value bench-train-bf16-all mixsim-bf16 tokens_per_s)
  LT_USE=$(grep -o 'algorithms: .*' "$LOG/bench-train-bf16-choices.log" 2> /dev/null | tail -1)
  if [[ -n "$TPS" && -n "$BASE_TPS" ]]; then
    row "GPT-2 bf16 with the tuned choices" "$(awk -v a="$TPS" -v b="$BASE_TPS" \
      'BEGIN { printf "tokens/s %s: %.3fx the default row", a, a / b }') (${LT_USE:-no cuBLASLt line})"
  else
    row "GPT-2 bf16 with the tuned choices" "no result (see bench-train-bf16-choices.log)"
  fi
else
  row "cuBLASLt choices table (tuned)" "none written (see bench-train-bf16-tune.log)"
fi
# GPT-2 at larger batches (B 16 and 32, the RESULT rows gpt2-b16 and gpt2-b32): the step's fixed
# costs (AdamW, the weights' bf16 copy, the gradients' zeroing, the two host synchronisations of a
# step: ~1.2 ms at B 8) spread over more tokens; torch.compile at B 32 below, for the verdict row
step bench-train-bf16-b16 60 "$BUILD/bench/bench_gpu_train" --configs gpt2 --backend cuda-bf16 \
  --batch 16
step bench-train-bf16-b32 60 "$BUILD/bench/bench_gpu_train" --configs gpt2 --backend cuda-bf16 \
  --batch 32
# GPT-2 at B 8 with 8 micro-batches a step (gpt2-x8), as training runs with --train.micro_batch:
# zero_grad, AdamW and the norm once per 8 forwards and backwards, the bf16 weight copy made by
# AdamW (not again for each forward); torch.compile the same in its two runs, for the verdict row
step bench-train-bf16-accum 60 "$BUILD/bench/bench_gpu_train" --configs gpt2 --backend cuda-bf16 \
  --accum 8
# where a default bf16 step's time goes now (per op, synchronised)
step bench-profile 60 "$BUILD/bench/bench_gpu_train" --configs gpt2 --steps 2 --profile \
  --backend cuda-bf16
# PyTorch's own kernels for the same ops (flash attention, LayerNorm, cross-entropy, fused AdamW)
# on the same tensors: each of the profile's ops beside its yardstick (scripts/gpu/torch_ops.py)
if step torch-ops 60 python3 scripts/gpu/torch_ops.py --config gpt2; then
  # profile_ms OP...: the default profile's ms per step of these ops, summed ("" when none)
  profile_ms() {
    awk -v ops=" $* " 'index(ops, " " $1 " ") && $3 == "ms/step" { t += $2; n++ }
      END { if (n) printf "%.3f", t }' "$LOG/bench-profile.log" 2> /dev/null
  }
  row "ops: mixsim's profile, PyTorch" \
    "ms per GPT-2 bf16 step (mixsim's profile waits for each op: +~10 us a call)"
  for op in attention_forward attention_backward layernorm_forward layernorm_backward classifier \
    adamw; do
    torch_ms=$(value torch-ops torch-ops "${op}_ms")
    ours=$op
    [[ $op == layernorm_forward ]] && ours="layernorm_forward residual_layernorm_forward"
    # shellcheck disable=SC2086 # two op names
    mixsim_ms=$(profile_ms $ours)
    if [[ -n "$mixsim_ms" && -n "$torch_ms" ]]; then
      row "  $op" "$(awk -v a="$mixsim_ms" -v b="$torch_ms" \
        'BEGIN { printf "mixsim %.3f, PyTorch %.3f: %.2fx", a, b, (b > 0 ? a / b : 0) }')"
    else
      row "  $op" "mixsim ${mixsim_ms:-none}, PyTorch ${torch_ms:-none}"
    fi
  done
else
  row "PyTorch's kernels per op (torch-ops)" "FAILED: $(tail -1 "$LOG/torch-ops.log")"
fi
# the products alone, as cuBLAS runs them with nothing around them: the ceiling of the products'
# share of the profiled step above (bench/gpu/gemm.cpp)
GEMM_CONFIGS=gpt2,1.1b
((QUICK)) && GEMM_CONFIGS=gpt2
step bench-gemm 60 "$BUILD/bench/bench_gpu_gemm" --configs "$GEMM_CONFIGS"
step bench-averaging 60 "$BUILD/bench/bench_gpu_averaging"
# (the verdict below holds mixsim against the faster of the two)
((QUICK)) || torch_compile_twice
((QUICK)) || step torch-bf16-compile-b32 240 python3 scripts/gpu/torch_train.py --config gpt2 \
  --dtype bf16 --compile --steps 30 --batch 32
step torch-bf16 120 python3 scripts/gpu/torch_train.py --config gpt2 --dtype bf16 --steps 30
# Every kernel of one default bf16 GPT-2 step under Nsight Compute (each alone, normal clocks, no
# cache flushes): its time and DRAM bytes, summed per kernel and ranked (scripts/gpu/ncu_summary.py)
if command -v ncu > /dev/null && ((!QUICK)); then
  step ncu-step 120 env LC_ALL=C ncu --csv --print-units base --profile-from-start off \
    --clock-control none --cache-control none --print-kernel-base function \
    --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum \
    "$BUILD/bench/bench_gpu_train" --configs gpt2 --steps 1 --backend cuda-bf16 --profiler-range \
    > /dev/null
  if python3 scripts/gpu/ncu_summary.py "$LOG/ncu-step.log" --steps 1 > "$LOG/ncu-summary.txt" 2>&1; then
    cat "$LOG/ncu-summary.txt"
    row "ncu, kernels of a bf16 GPT-2 step" "$(head -1 "$LOG/ncu-summary.txt")"
  else
    row "ncu, kernels of a bf16 GPT-2 step" "FAILED: $(tail -1 "$LOG/ncu-summary.txt")"
  fi
fi
# memory errors in the kernels (out of bounds, misaligned, uninitialised reads) on the op tests
if command -v compute-sanitizer > /dev/null && ((!QUICK)); then
  # Whole-model tests are left out (slow under memcheck, and made of the same kernels); the
  # tensor-core attention tests stay in. OutOfMemory's cudaMalloc fails on purpose. The NCCL test
  # is left out too: NCCL's own init probes kernel images with cudaFuncGetAttributes, which fails
  # by design for the architectures it was not built for, and memcheck counts each such API error
  # (4 on the H200 run of 2026-11-27, all inside libnccl; the test itself passes).
  step sanitizer 150 compute-sanitizer --tool memcheck --error-exitcode 1 \
    "$BUILD/tests/gpu_ops_test" --gtest_filter='-*Twenty*:*GptLoss*:*TrainingFollows*:*OutOfMemory*:*Nccl*'
  SAN=$(grep -E 'ERROR SUMMARY' "$LOG/sanitizer.log" | tail -1)
  row "compute-sanitizer memcheck (ops)" "${SAN:-no summary (see sanitizer.log)}"
fi
# What bounds each kernel of the same step: Nsight Compute's SM and memory throughput as shares of
# their peaks, achieved occupancy and issue-slot use (ncu_summary.py's DETAIL), per kernel. On its
# own (more counters, more passes a kernel), so that the table above survives an unknown counter.
# With GPU_CHECK_NCU=1 only, since the fourteenth session: it took 121 s of run 10's 420 (runs 10
# and 11 recorded it, docs/benchmarks.md), time the tune and batch rows above now take.
if command -v ncu > /dev/null && ((!QUICK)) && [[ "${GPU_CHECK_NCU:-0}" == 1 ]]; then
  step ncu-detail 120 env LC_ALL=C ncu --csv --print-units base --profile-from-start off \
    --clock-control none --cache-control none --print-kernel-base function \
    --metrics gpu__time_duration.sum,sm__throughput.avg.pct_of_peak_sustained_elapsed,gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed,sm__warps_active.avg.pct_of_peak_sustained_active,smsp__issue_active.avg.pct_of_peak_sustained_active \
    "$BUILD/bench/bench_gpu_train" --configs gpt2 --steps 1 --backend cuda-bf16 --profiler-range \
    > /dev/null
  if python3 scripts/gpu/ncu_summary.py "$LOG/ncu-detail.log" --steps 1 --top 24 \
    > "$LOG/ncu-detail.txt" 2>&1; then
    cat "$LOG/ncu-detail.txt"
    row "ncu, what bounds each kernel" "SM%, mem%, occ%, issue% per kernel in ncu-detail.txt"
  else
    row "ncu, what bounds each kernel" "FAILED: $(tail -1 "$LOG/ncu-detail.txt")"
  fi
fi
# PyTorch in fp32 (the fp32 rows' yardstick; runs 1-6 measured it, so it comes last)
step torch-fp32 120 python3 scripts/gpu/torch_train.py --config gpt2 --dtype fp32 --steps 5
# GPU_CHECK_NCU=1: Nsight Compute's view of the attention kernels (one GPT-2 step's launches)
if [[ "${GPU_CHECK_NCU:-0}" == 1 ]] && command -v ncu > /dev/null; then
  step ncu-attention 90 ncu --kernel-name regex:attention --launch-skip 46 --launch-count 4 \
    --section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats \
    --section MemoryWorkloadAnalysis "$BUILD/bench/bench_gpu_train" --configs gpt2 --steps 1
fi
for log in bench-train bench-train-bf16-tc-lt bench-train-bf16-nooutputs bench-train-bf16-all bench-train-bf16-optins bench-train-bf16-tune bench-train-bf16-b16 bench-train-bf16-b32 bench-train-bf16-accum bench-gemm bench-averaging torch-fp32 torch-bf16-compile-1 torch-bf16-compile-2 torch-bf16-compile-b32 torch-bf16; do
  while IFS='|' read -r what rest; do row "$what" "$rest"; done < <(result "$log")
done
LT=$(grep -o 'cuBLASLt: .*' "$LOG/bench-train-bf16-all.log" 2> /dev/null | tail -1)
row "cuBLASLt epilogues (last bench)" "${LT:-no report}"
# The issue's two speed targets for GPT-2 in bf16, from the rows above: at least 40% MFU, and
# faster than PyTorch's torch.compile on the same card in the same run, the faster of its two
# runs (mixsim's default, and without the bf16 product outputs, run 7's default)
# target_row TITLE LOG CONFIG TORCH TORCH_NAME [NOTE]: the targets' row for mixsim's CONFIG result
# in LOG against torch.compile's TORCH tokens/s (named TORCH_NAME; NOTE after the comparison)
target_row() {
  local title=$1 log=$2 config=$3 torch=$4 name=$5 note=${6:-} tps mfu verdict
  tps=$(value "$log" mixsim-bf16 tokens_per_s "$config")
  mfu=$(value "$log" mixsim-bf16 mfu "$config")
  if [[ -z "$tps" ]]; then
    row "$title" "no GPT-2 result (see $log.log)"
    return
  fi
  verdict="MFU ${mfu}% (target 40%: $(awk -v m="$mfu" 'BEGIN { print (m >= 40 ? "met" : "not met") }'))"
  if [[ -n "$torch" ]]; then
    verdict+=", $(awk -v a="$tps" -v b="$torch" -v n="$name" 'BEGIN { printf "%.2fx %s (%s)", a / b, n, (a > b ? "faster: met" : "not met") }')$note"
  else
    verdict+=", $name: no result (--quick, or its step failed)"
  fi
  row "$title" "$verdict"
}
TORCH=$(torch_compile_tps | sort -g | tail -1)
for log in bench-train-bf16-all bench-train-bf16-nooutputs; do
  target_row "targets, GPT-2 bf16 ($log)" "$log" gpt2 "$TORCH" torch.compile " (its faster run)"
done
# The same targets at B 32 (the issue names the model's shape, not its batch; B 8 is the config's),
# against torch.compile's one run at B 32
target_row "targets, GPT-2 bf16 at B 32" bench-train-bf16-b32 gpt2-b32 \
  "$(value torch-bf16-compile-b32 torch-bf16-compile tokens_per_s gpt2-b32)" \
  "torch.compile at B 32"
# and with 8 micro-batches a step, against the faster of torch.compile's two runs of the same
target_row "targets, GPT-2 bf16, 8 micro-batches a step" bench-train-bf16-accum gpt2-x8 \
  "$(torch_compile_tps gpt2-x8 | sort -g | tail -1)" torch.compile " (its faster run, x8)"

finish
