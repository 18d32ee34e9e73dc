#!/usr/bin/env bash
# LcP acceptance on Fashion-MNIST-32: ResNet-56, budgets at 70/50/30 % of the full network's latency measured on
# the host device, uniform vs naive global ranking vs LcP, one fine-tuning recipe for all (≈1 hour on 2 cores).
#   bash benchmarks/lcp_acceptance.sh        # needs runs/r56/base.safetensors (README, "Train and prune")
# Searches and fine-tuning run two at a time (1 torch thread each) WITHOUT the device; the latencies are then
# measured one network at a time on the otherwise idle machine (pass 2 resumes each job, which finds its search
# and fine-tuning done, and only measures). Resumable at every step.
# Every job is its recipe, search/{lcp,naive,uniform}-resnet56-{70,50,30}.toml, with the budget in ms of this
# sitting's full-network measurement and this run's paths; each report.json records the resolved recipe.
# Environment: DEVICE (host:litert), TABLE, CKPT, OUT, STORE, JOBS (2), BUDGETS, METHODS, and to depart from the
# recipes FITNESS (training images per fitness), BN, STEPS (fine-tuning steps), CANDIDATES, POOL.
set -euo pipefail
device=${DEVICE:-host:litert}
table=${TABLE:-tables/host-litert-resnet56-32-dense.parquet}
ckpt=${CKPT:-runs/r56/base.safetensors}
out=${OUT:-runs/lcp-acceptance}
store=${STORE:-runs/r56/litert.db}
mkdir -p "$out"
# 1. The full network's latency, measured once on the quiet machine: the budgets are fractions of it.
full_ms=$(LEADRUN=1 python benchmarks/full_latency.py "$table" "$device" "$store")
echo "full ResNet-56 on $device: $full_ms ms" | tee "$out/full.txt"
run() {  # method ratio [extra options]: the recipe search/METHOD-resnet56-PCT.toml at the measured budget in ms
  local m=$1 r=$2; shift 2
  local dir="$out/$m-$r"
  local budget; budget=$(python -c "print($r * $full_ms)")
  local pct; pct=$(python -c "print(round($r * 100))")
  LEADRUN=1 latbench prune lcp --config "search/$m-resnet56-$pct.toml" --budget-ms "$budget" --checkpoint "$ckpt" \
    --table "$table" --store "$store" --out "$dir" ${FITNESS:+--fitness-images "$FITNESS"} ${BN:+--bn-images "$BN"} \
    ${CANDIDATES:+--candidates "$CANDIDATES"} ${POOL:+--pool "$POOL"} ${STEPS:+--finetune-steps "$STEPS"} \
    --threads 1 --no-progress "$@" >> "$dir.log" 2>&1
}
export -f run; export out ckpt table device store full_ms
# 2. Searches + fine-tuning, the long LcP searches first so that the parallel slots finish together.
for m in ${METHODS:-lcp naive uniform}; do for b in ${BUDGETS:-0.7 0.5 0.3}; do echo "$m $b"; done; done |
  xargs -P "${JOBS:-2}" -L 1 bash -c '[ -f "$out/$0-$1/pruned.safetensors" ] || run "$0" "$1" --set device=none'
# 3. Measurement, one network at a time.
for m in ${METHODS:-lcp naive uniform}; do for b in ${BUDGETS:-0.7 0.5 0.3}; do
  grep -q '"measured_ms": null' "$out/$m-$b/report.json" && run "$m" "$b" --device "$device" --store "$store"
done; done
python benchmarks/summarize_pruning.py "$out" > "$out/summary.md"
cat "$out/summary.md"
