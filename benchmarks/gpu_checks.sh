#!/usr/bin/env bash
# The GPU measurements of issues 4, 5, 8 and 23 in one short script, for a lent CUDA machine
# (see benchmarks/RESULTS.md). Writes its tables to $OUT (or ./gpu_out) and stdout.
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if ! python3 -c "import diffusers" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
# Issue 4 + 8: DiffLoss step cost with the 256x256 ADM prior (random weights, bf16), full MSBDN, batch 4.
timeout 200 python3 benchmarks/bench_diffloss.py --prior adm-random --restorer msbdn --batch 4 --size 256 \
  --repeats 5 --warmup 1 | tee "$OUT/bench_diffloss_adm.md"
# Issue 4: same with the tiny prior and MSBDN.small (the CPU configuration), for comparison.
timeout 60 python3 benchmarks/bench_diffloss.py --repeats 10 | tee "$OUT/bench_diffloss_tiny.md"
# Issue 5: full-resolution (1600x1200) MSBDN forward memory.
timeout 90 python3 benchmarks/bench_msbdn.py --skip-full --repeats 2 --full-res-memory | tee "$OUT/bench_msbdn.md"
# Issue 23: DiffLoss with a Stable-Diffusion-1.5-shaped latent prior at 512² next to ADM-256 at 256²
# (random weights, bf16 autocast, full MSBDN, batch 4), eager and with the U-Nets compiled.
timeout 240 python3 benchmarks/bench_latent.py --size 512 --adm-size 256 --batch 4 --restorer msbdn \
  --repeats 5 | tee "$OUT/bench_latent_eager.md"
timeout 420 python3 benchmarks/bench_latent.py --size 512 --adm-size 256 --batch 4 --restorer msbdn \
  --repeats 5 --compile | tee "$OUT/bench_latent_compiled.md"
