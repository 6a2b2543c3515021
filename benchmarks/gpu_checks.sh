#!/usr/bin/env bash
# Every GPU check of the open issues in one prepared script, for a lent CUDA machine
# (see benchmarks/RESULTS.md). Writes its records to $OUT (or ./gpu_out) and stdout.
#
#   bash benchmarks/gpu_checks.sh               # on the card, in order of priority; about 12 min
#   bash benchmarks/gpu_checks.sh --rehearse    # on a CPU: the same code paths with tiny shapes
#   bash benchmarks/gpu_checks.sh --part 1      # only part 1 (or 2, 3): one command per part
#
# Part 1 (about 4 min on an H100-class card): gpu_card.py's precision, fp16 loss scaling,
#   chapter 04's gradient check, the T4-shaped run and the other tasks (issue 35 and the tasks).
# Part 2 (about 6 min, most of it compiling): gpu_card.py's per-change MFU table at the paper
#   shape (8x256^2, ADM-256, full MSBDN).
# Part 3 (about 3 min): chapter 04 end to end T4-shaped (gpu_e2e.py --t4) and the latent prior
#   (bench_latent.py, eager). The older checks (issues 4, 5, 8, 23) ran on an H100 on 2026-11-26;
#   `--all` runs them again after part 3.
set -uo pipefail
REHEARSE=0; PART=all; OLD=0
while [ $# -gt 0 ]; do
  case "$1" in
    --rehearse) REHEARSE=1 ;;
    --part) PART=$2; shift ;;
    --all) OLD=1 ;;
    *) echo "gpu_checks.sh: unknown option $1 (use --rehearse, --part N, --all)" >&2; exit 2 ;;
  esac
  shift
done
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
PY=${PYTHON:-python3}
if ! $PY -c "import diffusers" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
status=0
run() { "$@" || { echo "FAILED ($?): $*" >&2; status=1; }; }
# runlog FILE CMD...: CMD's output to FILE and stdout, its failure counted (no pipe: a pipeline's
# last command would hide it)
runlog() { local f=$1; shift; run "$@" > "$f" 2>&1; cat "$f"; }
part() { [ "$PART" = all ] || [ "$PART" = "$1" ]; }

if [ "$REHEARSE" = 1 ]; then
  R=--rehearse; E2E=(--profile ci --iters 3); T1=600
else
  R=; E2E=(--profile gpu --iters 5); T1=300
  nvidia-smi --query-gpu=name,memory.total,compute_cap --format=csv,noheader | tee "$OUT/gpu.txt"
fi
if part 1; then
  run timeout $T1 $PY benchmarks/gpu_card.py $R --out "$OUT/part1" \
    --stage precision --stage fp16 --stage gradcheck --stage t4 --stage tasks
fi
if part 2; then
  run timeout 420 $PY benchmarks/gpu_card.py $R --out "$OUT/part2" --stage mfu
fi
if part 3; then
  # gpu_e2e's data and prior stages make a synthetic Dense-Haze and a random ADM-256 on the card;
  # the rehearsal's ci profile needs neither.
  [ "$REHEARSE" = 1 ] && STAGES=(--stage chapters) || STAGES=()
  run timeout 240 $PY benchmarks/gpu_e2e.py "${E2E[@]}" "${STAGES[@]}" --t4 \
    --chapter 04_train_msbdn_dense_haze.ipynb --out "$OUT/part3_e2e_t4"
  if [ "$REHEARSE" = 1 ]; then
    runlog "$OUT/bench_latent_rehearsal.md" timeout 120 $PY benchmarks/bench_latent.py --size 64 --repeats 1 --warmup 1
  else
    runlog "$OUT/bench_latent_eager.md" timeout 240 $PY benchmarks/bench_latent.py --size 512 --adm-size 256 \
      --batch 4 --restorer msbdn --repeats 5
  fi
fi
if [ "$OLD" = 1 ] && [ "$REHEARSE" = 0 ]; then
  # Issues 4 + 8: DiffLoss step cost with the 256x256 ADM prior (random weights), full MSBDN, batch 4.
  runlog "$OUT/bench_diffloss_adm.md" timeout 200 $PY benchmarks/bench_diffloss.py --prior adm-random \
    --restorer msbdn --batch 4 --size 256 --repeats 5 --warmup 1
  # Issue 5: full-resolution (1600x1200) MSBDN forward memory.
  runlog "$OUT/bench_msbdn.md" timeout 90 $PY benchmarks/bench_msbdn.py --skip-full --repeats 2 --full-res-memory
  # Issue 23: the latent prior compiled.
  runlog "$OUT/bench_latent_compiled.md" timeout 420 $PY benchmarks/bench_latent.py --size 512 --adm-size 256 \
    --batch 4 --restorer msbdn --repeats 5 --compile
fi
for f in "$OUT"/part*/gpu_card.json; do
  [ -f "$f" ] && $PY benchmarks/gpu_card.py --report "$f" > "${f%.json}.md"
done
exit $status
