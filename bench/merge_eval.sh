#!/usr/bin/env bash
# Scaling of merge-eval over ranks: mixtures per second with 2 ranks over 1 rank (1 OpenMP thread
# per rank, group size 1: every rank holds the whole pool), on a generated corpus and pool of the
# tiny model (4 layers, 128 channels, context 64: the Brown demo's model). Target (merge-eval
# issue): 2 ranks >= 1.8 x 1 rank. Also reports groups of 2 ranks (the sharded pool) for reference.
#   bench/merge_eval.sh [WORK_DIR]     (BUILD_DIR=build-x to use another build)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${BUILD_DIR:-$ROOT/build}/mixsim"
WORK="${1:-$(mktemp -d /tmp/mixsim-bench-merge.XXXXXX)}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
mkdir -p "$WORK"

# A corpus of random words: 5 partitions of 2 units each, a seed corpus, one out-of-domain set.
# 10 units: 45 pairs + 10 pool models + the seed = 56 evaluations, an even split over 2 ranks.
python3 - "$WORK" <<'EOF'
import os, random, sys
root = sys.argv[1]
rng = random.Random(5)
def docs(path, n, vocab):
    os.makedirs(path, exist_ok=True)
    for d in range(n):
        words = [rng.choice(vocab) for _ in range(400)]
        open(os.path.join(path, "d%03d.txt" % d), "w").write(" ".join(words) + "\n")
letters = "abcdefghijklmnopqrstuvwxyz"
def vocab(seed):
    r = random.Random(seed)
    return ["".join(r.choice(letters) for _ in range(5)) for _ in range(200)]
for p in range(5):
    docs(os.path.join(root, "partitions", "part%d" % p), 60, vocab(p))
docs(os.path.join(root, "seed"), 60, vocab(10) + vocab(11))
docs(os.path.join(root, "ood"), 20, vocab(12))
EOF

cat > "$WORK/job.ini" <<EOF
[run]
name = bench-merge
out_dir = $WORK/run
seed = 3
threads = 1
[model]
n_layer = 4
n_head = 4
n_embd = 128
context = 64
[data]
root = $WORK/partitions
seed_corpus = $WORK/seed
eval_dirs = $WORK/ood
unit_tokens = 55000
valid_fraction = 0.1
test_fraction = 0.0
eval_max_tokens = 3000
[train]
global_batch = 8
val_tokens = 0
log_every = 100
[seed]
steps = 20
[cpt]
steps_per_unit = 5
[merge]
proxies = merged
sizes = 2
EOF

J=(--config "$WORK/job.ini")
"$BIN" prepare "${J[@]}" > "$WORK/prepare.log"
"$BIN" train "${J[@]}" > "$WORK/train.log"
"$BIN" pool "${J[@]}" > "$WORK/pool.log"

# One merge-eval; prints the log's final rate line and returns mixtures/s.
rate() {
  local np=$1 group=$2 out=$3
  local log="$WORK/merge_np${np}_g${group}.log"
  rm -f "$WORK/run/$out"  # merge-eval resumes: a fresh file makes it evaluate everything
  /usr/bin/time -f "%e" -o "$WORK/wall" mpirun -np "$np" --oversubscribe "$BIN" merge-eval "${J[@]}" \
    --merge.group_size "$group" --merge.output "$out" > "$log"
  grep -E "entries to evaluate|evaluations \(" "$log" | sed 's/^\[ *[0-9.]*s\] /  /' >&2
  echo "  wall time $(cat "$WORK/wall") s" >&2
  sed -n 's/.* \([0-9.]*\) mixtures\/s.*/\1/p' "$log"
}
echo "1 rank:" >&2
one=$(rate 1 1 one.h5)
echo "2 ranks, groups of 1 (whole pool on each rank):" >&2
two=$(rate 2 1 two.h5)
echo "2 ranks, one group of 2 (pool sharded, one allreduce per average):" >&2
shard=$(rate 2 2 shard.h5)
awk -v a="$one" -v b="$two" -v c="$shard" 'BEGIN {
  printf "mixtures/s: 1 rank %.3f, 2 ranks %.3f (groups of 1), %.3f (group of 2)\n", a, b, c
  printf "2 ranks / 1 rank = %.2f (target >= 1.8); sharded group of 2 / 1 rank = %.2f\n", b / a, c / a }'
echo "work directory: $WORK" >&2
