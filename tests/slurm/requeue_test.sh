#!/usr/bin/env bash
# A training job sent SIGUSR1 (as sbatch --signal does before the time limit) writes its
# checkpoint and exits with code 3; the job requeues itself, resumes and finishes.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
slurm_up
job="$(smoke_job)"
# Prepare outside SLURM, then submit only the seed stage, long enough to be signalled.
OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "$BUILD/mixsim" prepare --config "$job" >/dev/null
export MIXSIM_ARGS="--seed.steps 1500 --train.checkpoint_every 0"
out=$("$ROOT/slurm/submit.sh" "$job" --bin "$BUILD/mixsim" --stages seed)
echo "$out"
id=$(echo "$out" | sed -n 's/^submitted seed as job \([0-9]*\).*/\1/p')
[[ -n "$id" ]] || fail "no job id"
log="$WORK/run/slurm-logs/seed-$id.out"
for _ in $(seq 1 600); do grep -q "seed: step" "$log" 2>/dev/null && break; sleep 0.1; done
grep -q "seed: step" "$log" || fail "training did not start: $(cat "$log" 2>/dev/null)"
scancel --signal=USR1 "$id"
# Slurm 22.05 makes a requeued job eligible only 2 minutes later (Reason=BeginTime); the test
# moves that start forward to 15 s instead of waiting. (Starting it at once fails: slurmd still
# holds the revoked credential of the killed run, "Job credential revoked".)
for _ in $(seq 1 600); do
  scontrol show job "$id" | grep -q "JobState=PENDING Reason=BeginTime" && { scontrol update JobId="$id" StartTime=now+15; break; }
  sleep 0.1
done
# Wait for the requeued run to start, then to finish.
for _ in $(seq 1 900); do grep -q "restart 1" "$log" && break; sleep 0.1; done
for _ in $(seq 1 1200); do
  state=$(scontrol show job "$id" | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p')
  [[ "$state" == COMPLETED || "$state" == FAILED || "$state" == CANCELLED ]] && break
  sleep 0.5
done
cat "$log"
[[ "$state" == COMPLETED ]] || fail "job ended $state"
grep -q "stop signal received" "$log" || fail "no checkpoint on SIGUSR1"
grep -q "requeueing job $id" "$log" || fail "the job did not requeue itself"
grep -q "restart 1" "$log" || fail "no second run"
grep -q "resuming from" "$log" || fail "the requeued run did not resume"
grep -q "seed: step 1500/1500" "$log" || fail "the requeued run did not finish"
echo "ok: SIGUSR1 -> checkpoint -> requeue -> resumed to the end"
