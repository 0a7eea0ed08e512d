#!/usr/bin/env bash
# The whole GPU check in one command, for a CUDA machine with torch, triton, pytest and
# pytest-benchmark installed (no network needed):
#
#   bash bench/gpu_check.sh OUT_DIR [full]
#
# 1. installs fusedrnn from this checkout (no dependencies),
# 2. runs the test suite on CUDA: kernels compiled natively, compared with the reference
#    and with cuDNN, in TEST_SHARDS (default 8) parallel pytest processes, which share out
#    compiling the kernel variants (bench/run_tests_sharded.sh: tests-shard*.txt,
#    .xml, tests-summary.txt),
# 3. prints `python -m fusedrnn check` tables in fp32, bf16 and fp16 against cuDNN (check-*.txt),
# 4. trains charlm for 300 steps on the kernels (charlm.txt, charlm/loss.png),
# 5. tunes block sizes (bench/tune.py with TUNE_ARGS, default "--grid quick"; only when STAGES
#    names "tune"): tuned/<gpu slug>.json (the checkout's table, merged), tune-trials.json, tune.txt,
# 6. times fusedrnn against cuDNN with pytest-benchmark (bench/run_bench.sh): the quick grid
#    (bench-quick.json, .txt); with `full` as second argument or BENCH_PART=K/N in the
#    environment, the full grid or its part K of N instead (bench-full[-partKofN].json);
#    BENCH_GRID=proj (or any grid of bench_lstm.py) names the grid: proj times layers with a
#    projection (bench-proj.json).
# STAGES (environment) picks stages 2-6, in this order: default "tests check charlm bench";
# e.g. STAGES=bench BENCH_PART=2/6 for one more part of the full grid in a later call.
#
# The device tool brings back at most 8 files from OUT_DIR, so the files of the stages are
# written to a work folder and packed into OUT_DIR/gpu-check.tar.gz after every stage (and on
# exit): a call stopped at its time limit still returns what the finished stages wrote.
# OUT_DIR/gpu-check.log is the console output. Unpack with
#   tar -xzf gpu-check.tar.gz -C bench/results/<gpu>-<date>/
# then commit the benchmark JSON as bench/results/<gpu>-<date>-<grid>.json (run_bench.sh prints
# the command; bench/report.py reads bench/results/*.json) and a tuned table as
# kernels/tuned/<gpu slug>.json.
set -u
out=$(mkdir -p "${1:?usage: bash bench/gpu_check.sh OUT_DIR [full]}" && cd "$1" && pwd) || exit 1
cd "$(dirname "$0")/.."
work=$(mktemp -d)/gpu-check
mkdir -p "$work"
exec > >(tee -a "$out/gpu-check.log") 2>&1
status=0

pack() {
  # into a temporary name first: a copy cut off mid-write does not replace the last good one
  tar -czf "$work.tar.gz" -C "$work" . && mv -f "$work.tar.gz" "$out/gpu-check.tar.gz"
}
trap pack EXIT

# The device's copy of the checkout has no .git: the caller passes FUSEDRNN_COMMIT=<hash>
# (bench_lstm.py records it in every row as "commit").
FUSEDRNN_COMMIT=${FUSEDRNN_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
export FUSEDRNN_COMMIT
{
  date -u +%Y-%m-%dT%H:%M:%SZ
  echo "commit: $FUSEDRNN_COMMIT"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'triton', triton.__version__)"
} > "$work/environment.txt" 2>&1
cat "$work/environment.txt"

python3 -m pip install -q --no-deps --no-build-isolation -e . > "$work/install.txt" 2>&1 || { cat "$work/install.txt"; exit 1; }
pack

stages=" ${STAGES:-tests check charlm bench} "
stage() { [[ $stages == *" $1 "* ]]; }

if stage tests; then
  # interrupted (with a report) after SHARD_TIMEOUT s, to leave a 10-minute call time for the rest
  SHARD_TIMEOUT=${SHARD_TIMEOUT:-420} bash bench/run_tests_sharded.sh "$work" "${TEST_SHARDS:-8}" || status=1
  pack
fi

if stage check; then
  for dtype in float32 bfloat16 float16; do
    python3 -m fusedrnn check --backend triton --dtype "$dtype" -T 64 -B 16 -I 256 -H 256 > "$work/check-$dtype.txt" 2>&1 || status=1
    tail -n 1 "$work/check-$dtype.txt"
    # every kernel path at once: two layers, both directions, a projection, packed lengths
    python3 -m fusedrnn check --backend triton --dtype "$dtype" -T 64 -B 16 -I 96 -H 200 -L 2 --bidirectional -P 72 --packed \
      > "$work/check-$dtype-stacked.txt" 2>&1 || status=1
    tail -n 1 "$work/check-$dtype-stacked.txt"
  done
  pack
fi

# charlm on the kernels (needs tqdm and matplotlib, the "cli" extra; the image may lack them)
if ! stage charlm; then
  :
elif python3 -c "import tqdm, matplotlib" 2>/dev/null; then
  python3 -m fusedrnn charlm --no-progress --steps 300 --out "$work/charlm" > "$work/charlm.txt" 2>&1 || status=1
  grep "validation loss .* -> " "$work/charlm.txt"
  pack
else
  echo "charlm not run: tqdm/matplotlib missing on this machine" | tee "$work/charlm.txt"
fi

if stage tune; then
  # merged into this checkout's kernels/tuned/<gpu slug>.json (the committed one, if any), then copied
  # shellcheck disable=SC2086  # TUNE_ARGS is a list of arguments
  python3 bench/tune.py ${TUNE_ARGS:---grid quick} --log "$work/tune-trials.json" > "$work/tune.txt" 2>&1 || status=1
  tail -n 5 "$work/tune.txt"
  table=$(python3 -c "import torch; from fusedrnn.kernels import tuning; print(tuning.table_path(torch.cuda.get_device_name()))")
  mkdir -p "$work/tuned" && cp "$table" "$work/tuned/" 2>/dev/null
  pack
fi

if stage bench; then
  default_grid=quick
  if [ "${2:-}" = full ] || [ -n "${BENCH_PART:-}" ]; then default_grid=full; fi
  # shellcheck disable=SC2086  # an empty BENCH_PART is no argument
  bash bench/run_bench.sh "$work" "${BENCH_GRID:-$default_grid}" ${BENCH_PART:-} || status=1
fi
exit $status
