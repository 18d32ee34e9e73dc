#!/usr/bin/env bash
# LcP acceptance on Fashion-MNIST-32: ResNet-56, budgets at 70/50/30 % of the full network's latency measured on
# the host device, uniform vs naive global ranking vs LcP, one fine-tuning recipe for all. Resumable: a finished
# (method, budget) is skipped, an interrupted one continues from its folder.
#   bash benchmarks/lcp_acceptance.sh                # needs runs/r56/base.safetensors (see README)
# Environment: DEVICE (host:litert), TABLE, CKPT, OUT, FITNESS (training images per fitness), BN, STEPS (fine-tune
# steps), CANDIDATES, POOL, JOBS (parallel runs, default 2), BUDGETS, METHODS.
set -euo pipefail
device=${DEVICE:-host:litert}
table=${TABLE:-tables/host-litert-resnet56-32-dense.parquet}
ckpt=${CKPT:-runs/r56/base.safetensors}
out=${OUT:-runs/lcp-acceptance}
store=${STORE:-runs/r56/litert.db}
mkdir -p "$out"
run() {  # method budget
  local dir="$out/$1-$2"
  [ -f "$dir/report.json" ] && return 0
  LEADRUN=1 latbench prune lcp --method "$1" --budget-ratio "$2" --checkpoint "$ckpt" --table "$table" \
    --device "$device" --store "$store" --out "$dir" --fitness-images "${FITNESS:-1000}" --bn-images "${BN:-256}" \
    --candidates "${CANDIDATES:-400}" --pool "${POOL:-64}" --finetune-epochs 1 --finetune-steps "${STEPS:-300}" \
    --threads 1 --no-progress > "$dir.log" 2>&1
}
export -f run; export out ckpt table device store
# The full network's latency is measured once, before parallel runs could share the store.
LEADRUN=1 latbench validate resnet56 --device "$device" --table "$table" --resolution 32 --n 1 --store "$store" \
  --no-progress > /dev/null 2>&1 || true
for b in ${BUDGETS:-0.7 0.5 0.3}; do for m in ${METHODS:-lcp naive uniform}; do echo "$m $b"; done; done |
  xargs -P "${JOBS:-2}" -L 1 bash -c 'mkdir -p "$out/$0-$1"; run "$0" "$1"'
python benchmarks/summarize_pruning.py "$out" > "$out/summary.md"
cat "$out/summary.md"
