#!/usr/bin/env bash
# Data-parallel efficiency of training: tokens/s with 2 ranks (1 thread each) over 1 rank
# (1 thread), same global batch, in one run. Target (training issue): ratio >= 1.8.
#   bench/data_parallel.sh [--model small|tiny] [--steps N] [--batch B]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${BUILD_DIR:-$ROOT/build}/bench/bench_data_parallel"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
one=$(mpirun -np 1 "$BIN" "$@" | tee /dev/stderr | sed -n 's/.*: \([0-9]*\) tokens\/s.*/\1/p')
two=$(mpirun -np 2 "$BIN" "$@" | tee /dev/stderr | sed -n 's/.*: \([0-9]*\) tokens\/s.*/\1/p')
awk -v a="$one" -v b="$two" 'BEGIN { printf "2 ranks / 1 rank = %.2f (target >= 1.8)\n", b / a }'
