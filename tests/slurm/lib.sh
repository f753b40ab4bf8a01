# Shared by the slurm tests: bring the one-node cluster up (unless one is running already, which
# is then left running), tear down what was started on exit, also when a check fails.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD="${MIXSIM_BUILD_DIR:?run through ctest}"
SLURM="$ROOT/scripts/local-slurm.sh"
WORK="$(mktemp -d)"
started=0
cleanup() {
  if ((started)); then "$SLURM" down >/dev/null 2>&1 || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
slurm_up() {
  if "$SLURM" status | grep -q "slurmctld: running"; then
    echo "cluster already up; using it and leaving it up"
  else
    "$SLURM" up
    started=1
  fi
  eval "$("$SLURM" env)"
}
# A copy of jobs/smoke.ini writing under $WORK, with the data the test makes itself.
smoke_job() {
  [[ -d "$ROOT/data/smoke" ]] || fail "data/smoke is missing: run scripts/fetch-data.sh (scripts/test.sh does)"
  local job="$WORK/smoke.ini"
  sed -e "s#^out_dir = .*#out_dir = $WORK/run#" -e "s#= data/smoke#= $ROOT/data/smoke#" \
    "$ROOT/jobs/smoke.ini" > "$job"
  echo "$job"
}
