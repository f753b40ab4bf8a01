#!/usr/bin/env bash
# The main job on the default data: set-up + build, fetch the Brown Corpus and the
# out-of-domain sets, run every built stage of jobs/brown-demo.ini with 2 MPI ranks, and print
# the report. Stages that are not built yet are named and skipped.
#
#   scripts/demo.sh [--np N] [--job jobs/brown-demo.ini] [--out runs/brown-demo]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NP=2
JOB="$ROOT/jobs/brown-demo.ini"
OUT=""
while (($#)); do
  case "$1" in
    --np) NP="$2"; shift 2 ;;
    --job) JOB="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "demo.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

"$ROOT/scripts/setup.sh"
"$ROOT/scripts/fetch-data.sh"

BIN="$ROOT/build/mixsim"
OVERRIDES=()
[[ -n "$OUT" ]] && OVERRIDES+=(--run.out_dir "$OUT")
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMP_NUM_THREADS=1   # one thread per rank: the ranks share the cores

built() { ! "$BIN" "$1" --help | grep -q "not built yet"; }

cd "$ROOT"
start=$SECONDS
for stage in prepare train pool truth merge-eval; do
  if ! built "$stage"; then
    echo "demo: stage '$stage' is not built yet in this version; skipped"
    continue
  fi
  echo "demo: === $stage ==="
  t0=$SECONDS
  mpirun -np "$NP" "$BIN" "$stage" --config "$JOB" "${OVERRIDES[@]}"
  echo "demo: $stage took $((SECONDS - t0)) s"
done
for stage in report inspect; do
  if built "$stage"; then
    echo "demo: === $stage ==="
    "$BIN" "$stage" --config "$JOB" "${OVERRIDES[@]}"
  else
    echo "demo: stage '$stage' is not built yet in this version; skipped"
  fi
done
echo "demo: done in $((SECONDS - start)) s"
