#!/usr/bin/env bash
# The whole GPU check in one command, for a CUDA machine with torch, triton, pytest and
# pytest-benchmark installed (no network needed):
#
#   bash bench/gpu_check.sh OUT_DIR
#
# 1. installs fusedrnn from this checkout (no dependencies),
# 2. runs the test suite on CUDA: kernels compiled natively, compared with the reference
#    and with cuDNN (tests-cuda.txt, tests-cuda.xml),
# 3. prints `python -m fusedrnn check` tables in fp32, bf16 and fp16 against cuDNN (check-*.txt),
# 4. trains charlm for 300 steps on the kernels (charlm.txt, charlm/loss.png),
# 5. times fusedrnn against cuDNN with pytest-benchmark (bench.json, bench.txt).
# Copy OUT_DIR into bench/results/<gpu>-<date>/ and commit it.
set -u
out=${1:?usage: bash bench/gpu_check.sh OUT_DIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
status=0

{
  date -u +%Y-%m-%dT%H:%M:%SZ
  git rev-parse HEAD 2>/dev/null || echo "commit: unknown"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'triton', triton.__version__)"
} > "$out/environment.txt" 2>&1
cat "$out/environment.txt"

python3 -m pip install -q --no-deps --no-build-isolation -e . > "$out/install.txt" 2>&1 || { cat "$out/install.txt"; exit 1; }

python3 -m pytest tests -q -p no:cacheprovider --junitxml="$out/tests-cuda.xml" > "$out/tests-cuda.txt" 2>&1 || status=1
tail -n 15 "$out/tests-cuda.txt"

for dtype in float32 bfloat16 float16; do
  python3 -m fusedrnn check --backend triton --dtype "$dtype" -T 64 -B 16 -I 256 -H 256 > "$out/check-$dtype.txt" 2>&1 || status=1
  tail -n 1 "$out/check-$dtype.txt"
  # every kernel path at once: two layers, both directions, a projection, packed lengths
  python3 -m fusedrnn check --backend triton --dtype "$dtype" -T 64 -B 16 -I 96 -H 200 -L 2 --bidirectional -P 72 --packed \
    > "$out/check-$dtype-stacked.txt" 2>&1 || status=1
  tail -n 1 "$out/check-$dtype-stacked.txt"
done

# charlm on the kernels (needs tqdm and matplotlib, the "cli" extra; the image may lack them)
if python3 -c "import tqdm, matplotlib" 2>/dev/null; then
  python3 -m fusedrnn charlm --no-progress --steps 300 --out "$out/charlm" > "$out/charlm.txt" 2>&1 || status=1
  grep "validation loss .* -> " "$out/charlm.txt"
else
  echo "charlm not run: tqdm/matplotlib missing on this machine" | tee "$out/charlm.txt"
fi

python3 -m pytest bench -q -p no:cacheprovider --benchmark-enable --benchmark-json="$out/bench.json" \
  --benchmark-columns=mean,stddev,rounds > "$out/bench.txt" 2>&1 || status=1
tail -n 30 "$out/bench.txt"
exit $status
