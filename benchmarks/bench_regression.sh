#!/usr/bin/env bash
# The same bench at two commits, side by side, and the two CSV exports compared row by row: the
# check that a refactoring changed no number (the one-engine issue's acceptance).
#
#   benchmarks/bench_regression.sh BEFORE AFTER OUT [COMMON...] [-- GROUP...] [-- GROUP...]
#
# BEFORE and AFTER are git revisions of this repository; each gets a worktree under OUT and runs
#   kedit bench COMMON... GROUP... --out OUT/<side>
# for each group in turn (a group: kedit bench options such as "--methods a,b --scenarios
# single"; groups share one store, e.g. to leave out one method's sequential job), from its own
# source tree with this checkout's .venv, one CPU thread per side, both sides at once, each with
# its own cache folder (OUT/cache-<side>). Runs resume: the same command continues a killed run.
# Then each side is exported (kedit report --csv) and benchmarks/compare_bench_csv.py prints the
# rows that differ (OUT/diff.json).
#
# The issue-11 acceptance (20 CounterFact cases, single and sequential:1,10,20, general ability
# at 50 examples per task; IKE single only, as in the bench issue's run, whose IKE sequential job
# did not finish without the prefix cache):
#   benchmarks/bench_regression.sh e8b86c4 dd07874 /work/acc \
#     --dataset counterfact --limit 20 --general-limit 50 --seed 0 \
#     -- --methods alphaedit,emmet,ft-l,ft-m,grace,kn,memit,pmet,r-rome,rome \
#        --scenarios single,sequential:1,10,20 -- --methods ike --scenarios single
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
before=$1 after=$2 out=$(mkdir -p "$3" && cd "$3" && pwd)
shift 3
common=() groups=() current=() seen=0
for arg in "$@"; do
  if [ "$arg" = "--" ]; then
    if [ "$seen" = 0 ]; then common=("${current[@]}"); else groups+=("${current[*]}"); fi
    seen=1 current=()
  else
    current+=("$arg")
  fi
done
if [ "$seen" = 0 ]; then common=("${current[@]}"); groups=(""); else groups+=("${current[*]}"); fi

side() {  # side NAME REV: run every group of the bench at REV into OUT/NAME
  local name=$1 rev=$2 tree="$out/tree-$1"
  [ -d "$tree" ] || git -C "$here" worktree add -f --detach "$tree" "$rev" >/dev/null
  for group in "${groups[@]}"; do
    # shellcheck disable=SC2086  # a group is a list of options
    (cd "$tree" && OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 KEDIT_CACHE_DIR="$out/cache-$name" \
      PYTHONPATH="$tree/src" "$here/.venv/bin/python" -m kedit.cli bench "${common[@]}" $group \
      --out "$out/$name" --quiet --no-report)
  done
  (cd "$tree" && PYTHONPATH="$tree/src" "$here/.venv/bin/python" -m kedit.cli report \
    "$out/$name" --html "$out/$name.html" --csv "$out/$name.csv")
}

side before "$before" > "$out/before.log" 2>&1 &
side after "$after" > "$out/after.log" 2>&1 &
wait
"$here/.venv/bin/python" "$here/benchmarks/compare_bench_csv.py" "$out/before.csv" \
  "$out/after.csv" --out "$out/diff.json"
