#!/usr/bin/env bash
# The one-node SLURM works for mixsim: bring it up, run an MPI test binary as a batch job with
# 4 ranks through srun/PMIx, check that an impossible request is refused at once, tear it down
# (also when a check fails). Needs MIXSIM_BUILD_DIR (set by ctest).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
slurm_up

cat > "$WORK/job.sh" <<JOB
#!/bin/bash
#SBATCH --ntasks=4
#SBATCH --time=5
#SBATCH --output=$WORK/job.out
export MIXSIM_EXPECTED_RANKS=4 OMP_NUM_THREADS=1
srun --mpi=pmix $BUILD/tests/mpi_communicator_test
JOB
sbatch --wait --parsable "$WORK/job.sh" > "$WORK/jobid" || fail "batch job failed: $(cat "$WORK/job.out")"
grep -q "PASSED" "$WORK/job.out" || fail "no PASSED line in the job output: $(cat "$WORK/job.out")"
grep -q "5 tests from 1 test suite ran" "$WORK/job.out" || fail "unexpected test count: $(cat "$WORK/job.out")"
echo "ok: 4-rank MPI batch job $(cat "$WORK/jobid") passed"

# 8 tasks on a 4-CPU node must be rejected at submission (EnforcePartLimits=ALL), not pend.
if timeout 20 sbatch --ntasks=8 --wrap true >"$WORK/big.out" 2>&1; then
  fail "an 8-task job was accepted on a 4-CPU node"
fi
grep -qi "more processors requested than permitted\|Requested node configuration is not available" "$WORK/big.out" ||
  fail "unexpected refusal message: $(cat "$WORK/big.out")"
echo "ok: impossible request refused: $(head -1 "$WORK/big.out")"
