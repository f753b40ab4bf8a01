#!/usr/bin/env bash
# A stage that fails makes its dependants end as cancelled, and submit.sh --wait reports it.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
slurm_up
job="$WORK/broken.ini"
# A partition directory that does not exist: prepare fails, naming it.
sed -e "s#^out_dir = .*#out_dir = $WORK/run#" -e "s#^root = .*#root = $WORK/no-such-dir#" \
  "$ROOT/jobs/smoke.ini" > "$job"
set +e
"$ROOT/slurm/submit.sh" "$job" --bin "$BUILD/mixsim" --stages prepare,seed,pool --wait > "$WORK/out" 2>&1
rc=$?
set -e
cat "$WORK/out"
[[ $rc -ne 0 ]] || fail "submit.sh --wait exited 0 for a failing pipeline"
grep -q "^prepare (job [0-9]*): FAILED" "$WORK/out" || fail "prepare not reported FAILED"
grep -q "^seed (job [0-9]*): CANCELLED" "$WORK/out" || fail "seed not reported CANCELLED"
grep -q "^pool (job [0-9]*): CANCELLED" "$WORK/out" || fail "pool not reported CANCELLED"
grep -q "pipeline did not complete" "$WORK/out" || fail "no summary line"
grep -q "no-such-dir" "$WORK"/run/slurm-logs/prepare-*.out || fail "the prepare log does not name the missing directory"
echo "ok: failed stage reported, dependants cancelled"
