#!/usr/bin/env bash
# Builds bench/sgemm.cpp against each Debian CPU BLAS candidate and runs them one after the
# other with 1 and 2 threads: the measurement behind the BLAS choice (docs/benchmarks.md).
# Needs libopenblas-openmp-dev (the project's), and optionally libopenblas-pthread-dev, libblis-dev.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
L=/usr/lib/x86_64-linux-gnu
declare -A LIBS=(
  [openblas-openmp]="$L/openblas-openmp/libopenblas.so"
  [openblas-pthread]="$L/openblas-pthread/libopenblas.so"
  [blis-openmp]="$L/blis-openmp/libblis.so.4"
)
for name in openblas-openmp openblas-pthread blis-openmp; do
  lib="${LIBS[$name]}"
  [[ -e "$lib" ]] || { echo "== $name: not installed, skipped"; continue; }
  g++ -O2 -std=c++20 -fopenmp -I"$ROOT/include" -I"$ROOT/bench" \
      -I/usr/include/x86_64-linux-gnu/openblas-openmp \
      "$ROOT/bench/sgemm.cpp" "$ROOT/bench/bench_common.cpp" "$lib" -o "$OUT/$name"
  for t in 1 2; do
    echo "== $name, $t thread(s)"
    OMP_NUM_THREADS=$t OPENBLAS_NUM_THREADS=$t BLIS_NUM_THREADS=$t "$OUT/$name" | tail -n +2
  done
done
