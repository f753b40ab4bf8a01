#!/usr/bin/env bash
# Submits the whole mixsim pipeline of a job file as SLURM batch jobs chained with
# --dependency=afterok, prints the job ids and where the logs go, and optionally waits.
#
#   slurm/submit.sh JOBFILE [options]
#     --nodes N               nodes per MPI stage (default 1)
#     --ntasks-per-node N     MPI ranks per node for the training and merge-eval stages (default 2)
#     --cpus-per-task N       OpenMP threads per rank (default 1)
#     --gpus-per-task N       GPUs per rank (default: none requested)
#     --time T                time limit of each stage (sbatch --time; default: partition's)
#     --partition P           partition (default: the cluster's default)
#     --account A             account to charge
#     --stages LIST           comma-separated subset of prepare,seed,pool,truth,merge-eval,report
#     --truth-array N         train the truth models as a job array of N tasks (each a group of
#                             --ntasks-per-node ranks training every Nth mixture); 0 = one job
#     --pool-array N          the same for the pool
#     --skip-existing         skip the stages whose outputs exist: prepare (data.h5), seed (a complete
#                             seed model), pool and truth (every model complete, as
#                             `mixsim pool|truth --pending` counts); merge-eval always runs, but
#                             evaluates only what results.h5 lacks, and so does the report
#     --log-dir DIR           where the logs go (default: <run.out_dir>/slurm-logs)
#     --bin PATH              the mixsim binary (default: build/mixsim of this checkout)
#     --wait                  wait for all jobs; exit 0 only if every one completed
#
# Job arrays: the truth models are independent and each is a full training run, so an array
# (one task per share of the mixtures) lets the scheduler start them as nodes free up, where one
# MPI job would wait for all its nodes at once. The pool's units are cheap and equal; one MPI
# job with groups (pool.group_size) is the default, an array is there for large pools.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
usage() { sed -n '2,28p' "$0"; exit "${1:-0}"; }
die() { echo "submit.sh: $*" >&2; exit 2; }

[[ $# -ge 1 ]] || usage 2
[[ "$1" == -h || "$1" == --help ]] && usage 0
JOBFILE="$1"; shift
[[ -f "$JOBFILE" ]] || die "job file '$JOBFILE' does not exist"
JOBFILE="$(cd "$(dirname "$JOBFILE")" && pwd)/$(basename "$JOBFILE")"

NODES=1 NTASKS=2 CPUS=1 GPUS="" TIME="" PARTITION="" ACCOUNT="" STAGES="prepare,seed,pool,truth,merge-eval,report"
TRUTH_ARRAY=0 POOL_ARRAY=0 SKIP=0 LOGDIR="" BIN="$ROOT/build/mixsim" WAIT=0
while (($#)); do
  case "$1" in
    --nodes) NODES="$2"; shift 2 ;;
    --ntasks-per-node) NTASKS="$2"; shift 2 ;;
    --cpus-per-task) CPUS="$2"; shift 2 ;;
    --gpus-per-task) GPUS="$2"; shift 2 ;;
    --time) TIME="$2"; shift 2 ;;
    --partition) PARTITION="$2"; shift 2 ;;
    --account) ACCOUNT="$2"; shift 2 ;;
    --stages) STAGES="$2"; shift 2 ;;
    --truth-array) TRUTH_ARRAY="$2"; shift 2 ;;
    --pool-array) POOL_ARRAY="$2"; shift 2 ;;
    --skip-existing) SKIP=1; shift ;;
    --log-dir) LOGDIR="$2"; shift 2 ;;
    --bin) BIN="$2"; shift 2 ;;
    --wait) WAIT=1; shift ;;
    -h|--help) usage 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
for n in "$NODES" "$NTASKS" "$CPUS" "$TRUTH_ARRAY" "$POOL_ARRAY"; do
  [[ "$n" =~ ^[0-9]+$ ]] || die "'$n' is not a number"
done
[[ -x "$BIN" ]] || die "mixsim binary '$BIN' not found: build it (scripts/setup.sh) or pass --bin"
command -v sbatch >/dev/null || die "sbatch not found: is this a SLURM cluster?"

# INI lookup: ini SECTION KEY DEFAULT (the job file is the source of truth for output paths).
ini() {
  awk -v s="[$1]" -v k="$2" -v d="$3" '
    /^[ \t]*\[/ { gsub(/[ \t]/, ""); cur = $0; next }
    cur == s && $0 ~ "^[ \t]*" k "[ \t]*=" { sub(/^[^=]*=[ \t]*/, ""); sub(/[ \t]*(#.*)?$/, ""); v = $0; found = 1 }
    END { print found ? v : d }' "$JOBFILE"
}
OUT_DIR="$(ini run out_dir runs/job)"
[[ "$OUT_DIR" = /* ]] || OUT_DIR="$ROOT/$OUT_DIR"
resolve() { [[ "$1" = /* ]] && echo "$1" || echo "$OUT_DIR/$1"; }
DATA="$(resolve "$(ini data output data.h5)")"
SEED="$(resolve "$(ini seed output seed.h5)")"
LOGDIR="${LOGDIR:-$OUT_DIR/slurm-logs}"
mkdir -p "$LOGDIR"

COMMON=(--parsable --kill-on-invalid-dep=yes --export=ALL,JOB="$JOBFILE",MIXSIM_ROOT="$ROOT",MIXSIM_BIN="$BIN")
[[ -n "$TIME" ]] && COMMON+=(--time="$TIME")
[[ -n "$PARTITION" ]] && COMMON+=(--partition="$PARTITION")
[[ -n "$ACCOUNT" ]] && COMMON+=(--account="$ACCOUNT")
MPI=(--nodes="$NODES" --ntasks-per-node="$NTASKS" --cpus-per-task="$CPUS")
[[ -n "$GPUS" ]] && MPI+=(--gpus-per-task="$GPUS")
ONE=(--nodes=1 --ntasks=1 --cpus-per-task="$CPUS")

declare -a IDS=()
last=""
submit() {  # submit STAGE SCRIPT [sbatch options...]
  local stage="$1" script="$2"; shift 2
  local dep=()
  [[ -n "$last" ]] && dep=(--dependency=afterok:"$last")
  local log="$LOGDIR/$stage-%j.out"
  [[ " $* " == *" --array="* ]] && log="$LOGDIR/$stage-%A_%a.out"
  local id
  # Options before "--" go to sbatch, the rest to the stage (after the script).
  local opts=() args=()
  while (($#)); do [[ "$1" == -- ]] && { shift; args=("$@"); break; }; opts+=("$1"); shift; done
  id=$(sbatch "${COMMON[@]}" "${dep[@]}" --output="$log" "${opts[@]}" "$ROOT/slurm/$script" "${args[@]}") ||
    die "sbatch refused the $stage stage (see the message above)"
  id="${id%%;*}"
  IDS+=("$stage:$id")
  local shown="${log//%j/$id}"
  echo "submitted $stage as job $id${last:+ (after $last)}; log: ${shown//%A/$id}"
  last="$id"
}

wanted() { [[ ",$STAGES," == *",$1,"* ]]; }
if wanted prepare; then
  if ((SKIP)) && [[ -f "$DATA" ]]; then echo "skipped prepare: $DATA exists"
  else submit prepare prepare.sbatch "${ONE[@]}"; fi
fi
if wanted seed; then
  if ((SKIP)) && [[ -f "$SEED" ]] && "$BIN" inspect "$SEED" 2>/dev/null | grep -q "complete"; then
    echo "skipped seed: $SEED is complete"
  else submit seed seed.sbatch "${MPI[@]}"; fi
fi
# pending STAGE: how many models of the stage are not complete ("" when it cannot tell).
pending() {
  [[ -f "$DATA" ]] || return 0
  "$BIN" "$1" --config "$JOBFILE" --pending 2>/dev/null | tail -n 1 | grep -E '^[0-9]+$' || true
}
if wanted pool && ((SKIP)) && [[ "$(pending pool)" == 0 ]]; then
  echo "skipped pool: every pool model is complete"
elif wanted pool; then
  if ((POOL_ARRAY > 0)); then submit pool pool.sbatch "${MPI[@]}" --array=0-$((POOL_ARRAY - 1))
  else submit pool pool.sbatch "${MPI[@]}"; fi
fi
if wanted truth && ((SKIP)) && [[ "$(pending truth)" == 0 ]]; then
  echo "skipped truth: every truth model is complete"
elif wanted truth; then
  if ((TRUTH_ARRAY > 0)); then submit truth truth.sbatch "${MPI[@]}" --array=0-$((TRUTH_ARRAY - 1))
  else submit truth truth.sbatch "${MPI[@]}"; fi
fi
wanted merge-eval && submit merge-eval merge-eval.sbatch "${MPI[@]}"
wanted report && submit report report.sbatch "${ONE[@]}" -- --csv "$OUT_DIR/report.csv" --plots "$OUT_DIR/plots"
echo "outputs under $OUT_DIR (report: report.csv, plots/); logs in $LOGDIR"

((WAIT)) || exit 0
# Wait by polling scontrol (sacct may be disabled); a job is done when it leaves the queue states.
status=0
for entry in "${IDS[@]}"; do
  stage="${entry%%:*}" id="${entry#*:}"
  while :; do
    states=$(scontrol show job "$id" 2>/dev/null | awk -F'JobState=' 'NF > 1 { split($2, a, " "); print a[1] }' | sort -u | tr '\n' ' ')
    [[ -z "$states" ]] && states="UNKNOWN "
    [[ "$states" =~ (PENDING|RUNNING|REQUEUED|CONFIGURING|COMPLETING|SUSPENDED|RESIZING) ]] || break
    sleep 1
  done
  echo "$stage (job $id): ${states% }"
  [[ "${states% }" == COMPLETED ]] || status=1
done
((status == 0)) && echo "pipeline completed" || echo "pipeline did not complete: see the logs in $LOGDIR" >&2
exit $status
