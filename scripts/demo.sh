#!/usr/bin/env bash
# The main job on the default data: set-up + build, fetch the Brown Corpus and the
# out-of-domain sets, run every stage of jobs/brown-demo.ini with 2 MPI ranks (a rerun resumes
# and skips finished work), and print the report; it ends saying where the files and plots are.
#
#   scripts/demo.sh [--np N] [--job jobs/brown-demo.ini] [--out runs/brown-demo] [-- KEY VALUE...]
# Anything after -- overrides job-file keys in every stage (e.g. -- --cpt.lr 0.003).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NP=2
JOB="$ROOT/jobs/brown-demo.ini"
OUT=""
EXTRA=()
while (($#)); do
  case "$1" in
    --np) NP="$2"; shift 2 ;;
    --job) JOB="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "demo.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

begin=$SECONDS
"$ROOT/scripts/setup.sh" --target mixsim
"$ROOT/scripts/fetch-data.sh"

BIN="$ROOT/build/mixsim"
OVERRIDES=()
[[ -n "$OUT" ]] && OVERRIDES+=(--run.out_dir "$OUT")
OVERRIDES+=("${EXTRA[@]}")
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMP_NUM_THREADS=1   # one thread per rank: the ranks share the cores

cd "$ROOT"
start=$SECONDS
for stage in prepare train pool truth merge-eval; do
  echo "demo: === $stage ==="
  t0=$SECONDS
  mpirun -np "$NP" "$BIN" "$stage" --config "$JOB" "${OVERRIDES[@]}"
  echo "demo: $stage took $((SECONDS - t0)) s"
done
OUT_DIR="${OUT:-$(awk -F= '/^\[run\]/ { r = 1; next } /^\[/ { r = 0 } r && $1 ~ /^[ \t]*out_dir[ \t]*$/ { gsub(/[ \t]/, "", $2); print $2 }' "$JOB")}"
OUT_DIR="${OUT_DIR:-runs/job}"
echo "demo: === report ==="
"$BIN" report --config "$JOB" "${OVERRIDES[@]}" --csv "$OUT_DIR/report.csv" --plots "$OUT_DIR/plots"
echo "demo: === inspect ==="
"$BIN" inspect "$OUT_DIR/results.h5"
echo "demo: pipeline took $((SECONDS - start)) s; with set-up, build and data fetch $((SECONDS - begin)) s"
echo "demo: results: $OUT_DIR/results.h5 (mixsim inspect, h5dump -H, h5py; docs/file-formats.md)"
echo "demo: models:  $OUT_DIR/seed.h5, $OUT_DIR/pool/*.h5, $OUT_DIR/truth/*.h5; data: $OUT_DIR/data.h5"
echo "demo: report:  $OUT_DIR/report.csv (every number), $OUT_DIR/plots/*.svg (open in a browser)"
