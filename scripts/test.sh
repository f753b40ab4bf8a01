#!/usr/bin/env bash
# Set-up + build + the whole test suite through ctest. Extra arguments go to ctest, e.g.
#   scripts/test.sh -L unit        (only the unit tests)
#   scripts/test.sh -LE slurm      (everything but the SLURM tests)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
"$ROOT/scripts/setup.sh"
# The smoke data (data/smoke) that the SLURM pipeline tests run on.
"$ROOT/scripts/fetch-data.sh"
cd "$BUILD_DIR"
ctest --output-on-failure -j "$(nproc)" "$@"
