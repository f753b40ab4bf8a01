#!/usr/bin/env bash
# Runs one mixsim stage inside a SLURM batch job; sourced by the slurm/*.sbatch scripts.
#   stage.sh STAGE [extra mixsim arguments...]
# Environment (exported by slurm/submit.sh, or set with sbatch --export=ALL,JOB=...):
#   JOB          the job file (required)
#   MIXSIM_ROOT  the mixsim checkout (default: the submit directory)
#   MIXSIM_BIN   the binary (default: $MIXSIM_ROOT/build/mixsim)
#   MIXSIM_ARGS  extra arguments for every stage (e.g. "--run.out_dir /scratch/x")
# A stage stopped by SIGUSR1/SIGTERM (sent by --signal before the time limit, or by preemption)
# writes its checkpoint and exits with code 3: the job then requeues itself and resumes.
set -uo pipefail
STAGE="$1"
shift
: "${JOB:?set JOB to the job file, e.g. sbatch --export=ALL,JOB=jobs/brown-demo.ini ...}"
ROOT="${MIXSIM_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}"
BIN="${MIXSIM_BIN:-$ROOT/build/mixsim}"
cd "$ROOT" || exit 1
export OMPI_MCA_rmaps_base_oversubscribe=1
if [[ $(id -u) -eq 0 ]]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
# One OpenMP thread per CPU SLURM gave each task.
export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"

ARGS=()
# A job array splits the stage's models over its tasks (pool, truth).
if [[ -n "${SLURM_ARRAY_TASK_COUNT:-}" && -n "${SLURM_ARRAY_TASK_ID:-}" ]]; then
  first="${SLURM_ARRAY_TASK_MIN:-0}"
  ARGS+=(--shard "$((SLURM_ARRAY_TASK_ID - first))/$SLURM_ARRAY_TASK_COUNT")
fi

echo "mixsim-$STAGE: job ${SLURM_JOB_ID:-?}${SLURM_ARRAY_TASK_ID:+ task $SLURM_ARRAY_TASK_ID}, restart ${SLURM_RESTART_COUNT:-0}, ${SLURM_NTASKS:-1} task(s) on ${SLURM_JOB_NODELIST:-?}, $(date -Is)"
# shellcheck disable=SC2086 # MIXSIM_ARGS is a word list on purpose
srun --mpi=pmix "$BIN" "$STAGE" --config "$JOB" "${ARGS[@]}" "$@" ${MIXSIM_ARGS:-}
rc=$?
if [[ $rc -eq 3 && -n "${SLURM_JOB_ID:-}" ]]; then
  echo "mixsim-$STAGE: stopped with a checkpoint; requeueing job $SLURM_JOB_ID to resume"
  target="$SLURM_JOB_ID"
  [[ -n "${SLURM_ARRAY_JOB_ID:-}" ]] && target="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
  if scontrol requeue "$target"; then
    # The requeue ends this script; waiting for it keeps the job from first ending as FAILED
    # (exit 3), which would race with the requeue.
    sleep 300
  else
    echo "mixsim-$STAGE: scontrol requeue failed; resubmit this stage to resume" >&2
  fi
fi
echo "mixsim-$STAGE: exit code $rc, $(date -Is)"
exit $rc
