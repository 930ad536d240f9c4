#!/usr/bin/env bash
# GPU throughput of the three backbones at 224 px, without and with AMP, and GPU utilisation while training.
#
# Prepared on a CPU-only machine and NOT RUN YET: no GPU was available when it was written. Run it on a GPU
# box from the repository root (with the venv active):  scripts/gpu_bench.sh   (DATA=/path/to/C-NMC to use a
# real dataset instead of the built-in demo; BATCH=64 by default). It writes everything under $OUT and
# prints a summary; put the summary into docs/BENCHMARKS.md ("GPU path").
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${DATA:-demo}
BATCH=${BATCH:-64}
SIZE=${SIZE:-224}
OUT=${OUT:-gpu-bench-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
PY=${PYTHON:-python}

command -v nvidia-smi >/dev/null || { echo "nvidia-smi not found: this script is for an NVIDIA GPU machine" >&2; exit 2; }
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'torch sees no CUDA device')"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.csv"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee "$OUT/torch.txt"

for prec in fp32 auto; do  # auto = AMP: bf16 where the GPU supports it, else fp16 with a GradScaler
  echo "== precision $prec ==" >&2
  nvidia-smi --query-gpu=timestamp,utilization.gpu,utilization.memory,memory.used \
             --format=csv,noheader,nounits -lms 200 > "$OUT/util-$prec.csv" &
  smi=$!
  # --plain-workers 4 8: the plain loop gets the DataLoader workers a GPU user would give it;
  # leukviz's paths feed the GPU from the decoded uint8 cache (pinned memory, non_blocking copies).
  $PY -m leukviz bench --device cuda --data "$DATA" --image-size "$SIZE" --batch-size "$BATCH" \
      --precision "$prec" --plain-workers 4 8 --memory-files -1 --json \
      > "$OUT/bench-$prec.txt" 2> "$OUT/bench-$prec.log" || { kill "$smi"; cat "$OUT/bench-$prec.log" >&2; exit 1; }
  kill "$smi" 2>/dev/null || true
done

$PY - "$OUT" <<'PYEOF'
import csv, json, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
print(f"\nGPU benchmark ({(out / 'gpu.csv').read_text().splitlines()[-1]}), results in {out}/")
print(f"{'precision':<9} {'backbone':<10} {'plain img/s':>12} {'leukviz full img/s':>19} {'speedup':>8} "
      f"{'head 5 ep speedup':>18} {'GFLOP/s':>9} {'of peak':>8}")
for prec in ("fp32", "auto"):
    res = json.loads((out / f"bench-{prec}.txt").read_text().strip().splitlines()[-1])
    for name, r in res["backbones"].items():
        print(f"{prec:<9} {name:<10} {r['plain_full']['images_per_s']:12.1f} {r['leukviz_full']['images_per_s']:19.1f} "
              f"{r['speedup_full_vs_plain']:7.2f}x {r['speedup_head_vs_plain']:17.1f}x {r['gflops_full']:9.0f} "
              f"{r['roofline_fraction']:8.2f}")
    util = [float(row[1]) for row in csv.reader(open(out / f"util-{prec}.csv")) if len(row) > 1]
    if util:
        busy = [u for u in util if u > 0]
        print(f"  GPU utilisation while the {prec} bench ran: mean {statistics.fmean(util):.0f} %, "
              f"median {statistics.median(util):.0f} %, mean over non-idle samples "
              f"{statistics.fmean(busy) if busy else 0:.0f} % ({len(util)} samples every 200 ms)")
    print(f"  predict all three, one image: p95 {res['predict_all_p95_ms']:.1f} ms; matmul peak "
          + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in res["matmul_peak_gflops"].items()))
PYEOF
