#!/usr/bin/env bash
# scripts/gpu/mma_emulator checks the index arithmetic of kernels/attention_tc.cu lane by lane,
# without a GPU, through a numpy transcription of the kernels (its README). Kernel changes are
# written on machines without a GPU and checked there before a lent GPU machine runs them; this
# keeps the transcription and its checks runnable and passing between those changes:
# - run.py, every shape: errors against float64 attention and cpu-bf16's roundings within
#   bounds, no races, every output written once, the bf16 dqkv and the bf16 attention output
#   bit for bit as the fp32 paths on the same values, the heavy-first grid bit for bit as the
#   default one, the fused dq (blocks run concurrently, waiting on each other's semaphores, with
#   few and many resident) the same bits in every run, no deadlock, dq bit for bit the sum in
#   key-block order and within rounding of the default's ("ALL OK");
# - mutate5.py: each injected bug in the bf16 attention output's paths and the heavy-first grid
#   is caught.
# (mutate.py to mutate4.py and mutate6.py, the fused dq's, take about four minutes together: run
# them by hand after changing the kernels.)
# Needs MIXSIM_SOURCE_DIR (set by ctest) and a python3 with numpy.
set -euo pipefail
SRC=${MIXSIM_SOURCE_DIR:?set by ctest}
fail() {
  echo "FAIL: $*" >&2
  exit 1
}
PY=python3
# Debian's python3 has python3-numpy (scripts/setup.sh); a python3 earlier on PATH may not
python3 -c 'import numpy' 2> /dev/null || PY=/usr/bin/python3
"$PY" -c 'import numpy' || fail "no python3 with numpy (scripts/setup.sh installs python3-numpy)"
cd "$SRC/scripts/gpu/mma_emulator"
out=$("$PY" run.py 2>&1) || fail "run.py exited $?: $(tail -20 <<< "$out")"
[[ $(tail -1 <<< "$out") == "ALL OK" ]] || fail "run.py: $(grep -E 'BAD|MISMATCH' <<< "$out" | head -20)"
echo "ok: run.py, every shape: ALL OK"
out=$("$PY" mutate5.py 2>&1) || fail "mutate5.py exited $?: $(tail -20 <<< "$out")"
if grep -q "NOT CAUGHT" <<< "$out"; then fail "mutate5.py: $(grep 'NOT CAUGHT' <<< "$out")"; fi
[[ $(grep -c "caught" <<< "$out") -ge 6 ]] || fail "mutate5.py ran fewer mutants than six: $out"
echo "ok: mutate5.py, every mutant caught"
