#!/usr/bin/env bash
# LcP acceptance on Fashion-MNIST-32: ResNet-56, budgets at 70/50/30 % of the full network's latency measured on
# the host device, uniform vs naive global ranking vs LcP, one fine-tuning recipe for all (≈1 hour on 2 cores).
#   bash benchmarks/lcp_acceptance.sh        # needs runs/r56/base.safetensors (README, "Train and prune")
# The jobs run one at a time with the device (THREADS torch threads, 2): the closed loop measures while it
# searches, so nothing else may share the cores. Resumable at every step.
# Every job is its recipe, search/{lcp,naive,uniform}-resnet56-{70,50,30}.toml, with the budget in ms of this
# sitting's full-network measurement and this run's paths; each report.json records the resolved recipe.
# Environment: DEVICE (host:litert), TABLE, CKPT, OUT, STORE, THREADS (2), BUDGETS, METHODS, RESULTS, and to depart from the
# recipes FITNESS (training images per fitness), BN, STEPS (fine-tuning steps), CANDIDATES, POOL.
set -euo pipefail
device=${DEVICE:-host:litert}
table=${TABLE:-tables/host-litert-resnet56-32-dense.parquet}
ckpt=${CKPT:-runs/r56/base.safetensors}
out=${OUT:-runs/lcp-acceptance}
store=${STORE:-runs/r56/litert.db}
mkdir -p "$out"
# 1. The full network's latency, measured once on the quiet machine: the budgets are fractions of it.
full_ms=$(LEADRUN=1 python benchmarks/full_latency.py "$table" "$device" "$store" --checkpoint "$ckpt")
echo "full ResNet-56 on $device: $full_ms ms" | tee "$out/full.txt"
run() {  # method ratio [extra options]: the recipe search/METHOD-resnet56-PCT.toml at the measured budget in ms
  local m=$1 r=$2; shift 2
  local dir="$out/$m-$r"
  local budget; budget=$(python -c "print($r * $full_ms)")
  local pct; pct=$(python -c "print(round($r * 100))")
  LEADRUN=1 latbench prune lcp --config "search/$m-resnet56-$pct.toml" --budget-ms "$budget" --checkpoint "$ckpt" \
    --table "$table" --store "$store" --out "$dir" ${FITNESS:+--fitness-images "$FITNESS"} ${BN:+--bn-images "$BN"} \
    ${CANDIDATES:+--candidates "$CANDIDATES"} ${POOL:+--pool "$POOL"} ${STEPS:+--finetune-steps "$STEPS"} \
    --threads "${THREADS:-2}" --device "$device" --no-progress "$@" >> "$dir.log" 2>&1
}
# 2. Every job with the device, one at a time: its search, then the closed loop's whole-network measurements on
#    the otherwise idle machine (the device decides where the network lands), fine-tuning, and the shipped file's
#    repeated final check, which lands the shipped file (retraining the next network when it is outside the band).
#    Jobs finished earlier are kept; a finished job whose shipped file was not landed (made before that stage
#    existed, or with --no-land) continues from what it has. RERUN=1 runs finished jobs again too: what they
#    searched, trained and measured is reused, and the current code decides anew (e.g. after a change to the loop).
for m in ${METHODS:-lcp naive uniform}; do for b in ${BUDGETS:-0.7 0.5 0.3}; do
  if [ -n "${RERUN:-}" ] || ! grep -q '"shipped_landing": {' "$out/$m-$b/report.json" 2>/dev/null; then run "$m" "$b"; fi
done; done
python benchmarks/summarize_pruning.py "$out" > "$out/summary.md"
cat "$out/summary.md"
python benchmarks/budget_summary.py "$out" --out "${RESULTS:-benchmarks/results/budget}"
