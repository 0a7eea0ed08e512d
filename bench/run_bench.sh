#!/usr/bin/env bash
# One benchmark run on a CUDA machine (grids and parts: bench/bench_lstm.py's docstring):
#
#   bash bench/run_bench.sh OUT_DIR {ci,quick,full,proj} [K/N]
#
# writes OUT_DIR/bench-GRID[-partKofN].json (pytest-benchmark's JSON, the rows' extra_info
# carry the numbers) and .txt (pytest's output), and prints where to commit it:
# bench/results/<gpu>-<date>-GRID.json, the parts of a grid merged into one by bench/report.py.
set -u
out=$(mkdir -p "${1:?usage: bash bench/run_bench.sh OUT_DIR GRID [K/N]}" && cd "$1" && pwd) || exit 1
grid=${2:?usage: bash bench/run_bench.sh OUT_DIR GRID [K/N]}
part=${3:-}
name=bench-$grid${part:+-part${part%/*}of${part#*/}}
cd "$(dirname "$0")/.."
python3 -m pytest bench -q -p no:cacheprovider --benchmark-enable --bench-grid="$grid" ${part:+--bench-part="$part"} \
  --benchmark-json="$out/$name.json" --benchmark-columns=median,rounds > "$out/$name.txt" 2>&1
status=$?
tail -n 5 "$out/$name.txt"
gpu=$(python3 -c "import torch; print(torch.cuda.get_device_name().lower().replace(' ', '-'))" 2>/dev/null || echo cpu)
dest=bench/results/$gpu-$(date -u +%Y-%m-%d)-$grid.json
if [ -n "$part" ]; then
  echo "when all parts are done: python3 bench/report.py merge $out/bench-$grid-part*.json -o $dest"
else
  echo "to commit: cp $out/$name.json $dest"
fi
exit $status
