#!/usr/bin/env bash
# The whole pipeline of jobs/smoke.ini as SLURM batch jobs through slurm/submit.sh (2 ranks per
# MPI stage): every stage completes, results.h5 holds every mixture's score under every proxy
# plus the pool, seed and truth scores, and the report job wrote its tables, CSV and plots.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
slurm_up
job="$(smoke_job)"
set +e
"$ROOT/slurm/submit.sh" "$job" --bin "$BUILD/mixsim" --ntasks-per-node 2 --time 10 --wait \
  > "$WORK/out" 2>&1
rc=$?
set -e
cat "$WORK/out"
logs="$WORK/run/slurm-logs"
dump_logs() { tail -n 20 "$logs"/*.out >&2 || true; }
[[ $rc -eq 0 ]] || { dump_logs; fail "submit.sh --wait exited $rc"; }
for stage in prepare seed pool truth merge-eval report; do
  grep -q "^$stage (job [0-9]*): COMPLETED" "$WORK/out" || { dump_logs; fail "$stage did not complete"; }
done

# results.h5, read with h5py (Debian's python3-h5py): complete, every pair of units and every
# truth mixture present, every proxy finite for all of them, truth scores where truth models are.
/usr/bin/python3 - "$WORK/run" <<'PY' || fail "results.h5 check failed"
import itertools, math, os, sys
import h5py, numpy as np
run = sys.argv[1]
f = h5py.File(os.path.join(run, "results.h5"), "r")
assert f.attrs["complete"] == 1, "results.h5 not complete"
units = list(f["units/names"].asstr()[:])
assert len(units) == 5, f"expected the 5 smoke units, got {units}"
names = list(f["mixtures/names"].asstr()[:])
pairs = {"+".join(p) for p in itertools.combinations(units, 2)}
truth_files = [n for n in os.listdir(os.path.join(run, "truth")) if n.endswith(".h5")]
assert len(truth_files) >= 2, f"expected truth models, found {truth_files}"
missing = pairs - set(names)
assert not missing, f"pairs missing from results.h5: {sorted(missing)}"
sets = f["eval_sets/names"].asstr()[:]
assert len(sets) >= 4, f"expected the partition and ood eval sets, got {list(sets)}"
proxies = list(f.attrs["proxies"])
assert sorted(p if isinstance(p, str) else p.decode() for p in proxies) == \
    ["components", "macro", "merged", "weighted"], proxies
for p in ["merged", "weighted", "macro", "components"]:
    loss = f[f"proxies/{p}/loss"][:]
    assert loss.shape == (len(names), len(sets)), (p, loss.shape)
    assert np.isfinite(loss).all(), f"proxy {p}: {np.isnan(loss).sum()} entries not evaluated"
    assert (loss > 0).all() and (loss < math.log(257) + 1).all(), f"proxy {p}: implausible loss"
assert np.isfinite(f["pool/loss"][:]).all(), "a pool model was not scored"
assert np.isfinite(f["seed/loss"][:]).all(), "the seed was not scored"
truth_rows = np.isfinite(f["truth/loss"][:]).all(axis=1).sum()
assert truth_rows == len(truth_files), f"{truth_rows} truth rows for {len(truth_files)} truth models"
print(f"ok: results.h5 has {len(names)} mixtures x {len(sets)} eval sets x 4 proxies, "
      f"{truth_rows} truth rows")
PY

report_log=$(ls "$logs"/report-*.out)
grep -q "Pearson" "$report_log" || fail "the report log has no correlation table: $(tail -n 20 "$report_log")"
[[ -s "$WORK/run/report.csv" ]] || fail "the report job wrote no CSV"
n_svg=$(find "$WORK/run/plots" -name '*.svg' | wc -l)
((n_svg > 0)) || fail "the report job wrote no plots"
grep -q "<svg" "$(find "$WORK/run/plots" -name '*.svg' | head -1)" || fail "plot is not SVG"
echo "ok: smoke pipeline completed under SLURM; report wrote $n_svg plots and report.csv"

# Submitted again with --skip-existing: every training stage is skipped (its outputs are complete),
# merge-eval finds nothing missing, and the results keep their values.
sum_before=$(/usr/bin/python3 -c "import h5py, sys; print(h5py.File(sys.argv[1])['proxies/merged/loss'][:].sum())" "$WORK/run/results.h5")
"$ROOT/slurm/submit.sh" "$job" --bin "$BUILD/mixsim" --ntasks-per-node 2 --time 10 --skip-existing \
  --wait > "$WORK/out2" 2>&1 || { cat "$WORK/out2"; fail "the second submission failed"; }
cat "$WORK/out2"
for stage in prepare seed pool truth; do
  grep -q "^skipped $stage" "$WORK/out2" || fail "--skip-existing did not skip $stage"
done
grep -q "^merge-eval (job [0-9]*): COMPLETED" "$WORK/out2" || fail "merge-eval did not run again"
sum_after=$(/usr/bin/python3 -c "import h5py, sys; print(h5py.File(sys.argv[1])['proxies/merged/loss'][:].sum())" "$WORK/run/results.h5")
[[ "$sum_before" == "$sum_after" ]] || fail "results changed on a rerun with nothing new: $sum_before vs $sum_after"
echo "ok: --skip-existing skipped the finished stages; results unchanged"
