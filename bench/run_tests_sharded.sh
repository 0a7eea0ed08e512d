#!/usr/bin/env bash
# The test suite in N pytest processes at once, for a GPU machine with many cores: the Triton
# compilations of the kernel variants (CPU-bound, one core each; about 470 on CUDA, some 160
# core-seconds by bench/NOTES.md's estimate), the float64 references on the CPU and the imports
# run side by side:
#
#   bash bench/run_tests_sharded.sh OUT_DIR [N] [PYTEST_ARGS...]
#
# Test functions are dealt round robin to N shards (default 8), each with all its
# parametrisations, so that a kernel variant is compiled by one shard rather than by all.
# Shard K writes OUT_DIR/tests-shardK.txt and .xml (JUnit); OUT_DIR/tests-summary.txt gets
# each shard's last line. The exit status is 1 if any shard failed. Triton's on-disk cache is
# shared by the shards. PYTEST_ARGS (e.g. -k EXPR) apply to the collection and to each shard.
# SHARD_TIMEOUT (seconds, environment; default none) interrupts a shard still running then
# with SIGINT, on which pytest still reports the failures so far and writes its JUnit file:
# a call with a wall-clock limit gets its results back. Each shard reports its 15 slowest
# tests, and gets OMP_NUM_THREADS = cores / N unless set, so that N torch processes do not
# each start a thread per core.
set -u
out=$(mkdir -p "${1:?usage: bash bench/run_tests_sharded.sh OUT_DIR [N] [PYTEST_ARGS...]}" && cd "$1" && pwd) || exit 1
shards=${2:-8}
shift $(($# >= 2 ? 2 : 1))
cd "$(dirname "$0")/.."
cores=$(nproc 2>/dev/null || echo "$shards")
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$((cores / shards > 0 ? cores / shards : 1))}

# path::function ids, in collection order: a function's id selects all its parametrisations
# (whose ids may hold spaces, which would not survive the command line below). The tests
# marked `cuda` (what CPU CI skips) come first, so that a shard cut at SHARD_TIMEOUT has run them.
function_ids() {
  python3 -m pytest tests --collect-only -q -p no:cacheprovider "$@" 2>/dev/null | grep '::' | sed 's/\[.*//'
}
{ function_ids -m cuda "$@"; function_ids "$@"; } | awk '!seen[$0]++' > "$out/tests-functions.txt"
if [ ! -s "$out/tests-functions.txt" ]; then
  echo "no tests collected" | tee "$out/tests-summary.txt"
  exit 1
fi

pids=()
for k in $(seq 0 $((shards - 1))); do
  awk -v n="$shards" -v k="$k" '(NR - 1) % n == k' "$out/tests-functions.txt" > "$out/tests-shard$k.ids"
  if [ -s "$out/tests-shard$k.ids" ]; then
    # one pytest per shard, the ids as arguments (xargs could split a shard into two runs)
    ${SHARD_TIMEOUT:+timeout -s INT -k 30 "$SHARD_TIMEOUT"} \
      python3 -m pytest -q -p no:cacheprovider --durations=15 --junitxml="$out/tests-shard$k.xml" "$@" \
      $(cat "$out/tests-shard$k.ids") > "$out/tests-shard$k.txt" 2>&1 &
    pids+=("$!")
  fi
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=1
done
for k in $(seq 0 $((shards - 1))); do
  log=$out/tests-shard$k.txt
  [ -f "$log" ] || continue
  cut=$(grep -q '^!* KeyboardInterrupt !*$' "$log" && echo " (INTERRUPTED: not every test ran)")
  echo "shard $k: $(tail -n 1 "$log")$cut"
done | tee "$out/tests-summary.txt"
exit $status
