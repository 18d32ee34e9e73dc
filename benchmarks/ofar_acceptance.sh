#!/usr/bin/env bash
# OFARPruning acceptance (issue 12) on Fashion-MNIST-32 — NOT RUN YET. Expected cost on the project's 2-core
# machine: tables ≈ 15 min per device (4 resolutions, dense grid), each OFAR training several hours with the
# defaults (search ≤ 20 epochs + 10 joint epochs of ResNet-56 with 4 networks per step); cap with STEPS.
#   1. Tables for host:litert and host:onnxruntime, each profiled at all four resolutions.
#   2. OFARPruning with the teaching assistants, budgets 70/50/30 % of each device's full latency.
#   3. The ablation without assistants (--no-assistants) on the same search stage (its files are copied).
#   4. The US-Net/MutualNet baseline: uniform width multipliers, sandwich + in-place distillation over the same
#      resolutions (--pool uniform --no-assistants), selected and measured the same way.
#   5. LcP once per (device, budget), at the same latency budget in ms as OFAR's.
#   6. benchmarks/results/ofar/summary.json (benchmarks/ofar_summary.py): cohort, TA ablation, baselines, seconds.
#   bash benchmarks/ofar_acceptance.sh        # needs $CKPT, e.g. latbench train --model resnet56 --epochs 30 --out $CKPT
# A budget one device cannot reach stops the run before training with that device's smallest reachable latency
# (onnxruntime's per-layer overhead makes 30 % hard at 32×32): set BUDGETS accordingly.
# Resumable: rerun the same command; every phase skips what it finished.
# Environment: MODEL (resnet56), CKPT (runs/r56/base.safetensors), OUT (runs/ofar-acceptance), BUDGETS ("0.7 0.5 0.3"),
# RESOLUTIONS ("32 28 24 20"), SEARCH_EPOCHS (20), JOINT_EPOCHS (10), STEPS (steps per epoch cap; unset = all),
# TAU (0.95), BN_MODE (recalibrated), THREADS (2), LCP_STEPS (fine-tuning steps of LcP, 300), PHONE_TABLE (a phone's
# table of the same model: predicted only; the imported JCW table covers ResNet-18 at 224 only).
set -euo pipefail
cd "$(dirname "$0")/.."
model=${MODEL:-resnet56}
ckpt=${CKPT:-runs/r56/base.safetensors}
out=${OUT:-runs/ofar-acceptance}
budgets=${BUDGETS:-0.7 0.5 0.3}
resolutions=${RESOLUTIONS:-32 28 24 20}
threads=${THREADS:-2}
export OMP_NUM_THREADS=$threads
[ -f "$ckpt" ] || { echo "missing $ckpt: train the base network first (latbench train --model $model)" >&2; exit 2; }
mkdir -p "$out/tables" benchmarks/results/ofar

res_args=(); for r in $resolutions; do res_args+=(--resolution "$r"); done
ofar_res=(); for r in $resolutions; do ofar_res+=(--resolutions "$r"); done
budget_args=(); for b in $budgets; do budget_args+=(--budget-ratio "$b"); done

# 1. Tables (resumable: the store keeps every measurement).
tables=()
for dev in host:litert host:onnxruntime; do
  name=${dev#host:}
  table="$out/tables/$model-$name.parquet"
  if [ ! -f "$table" ]; then
    latbench profile "$model" "${res_args[@]}" --dense --channel-points 4 --sparsity 0 --channel-multiple 8 \
      --device "$dev" --store "$out/tables/$name.db" --table "$table" --no-progress
  fi
  tables+=(--table "$table")
done
[ -n "${PHONE_TABLE:-}" ] && tables+=(--table "$PHONE_TABLE")

common=(--model "$model" --checkpoint "$ckpt" "${tables[@]}" "${budget_args[@]}" "${ofar_res[@]}"
        --search-epochs "${SEARCH_EPOCHS:-20}" --joint-epochs "${JOINT_EPOCHS:-10}" --tau "${TAU:-0.95}"
        --bn-mode "${BN_MODE:-recalibrated}" --store "$out/measurements.db" --threads "$threads" --no-progress)
[ -n "${STEPS:-}" ] && common+=(--steps-per-epoch "$STEPS")

# 2. OFARPruning with assistants.
latbench prune ofar "${common[@]}" --out "$out/ofar"
# 3. Without assistants, on the same search stage.
mkdir -p "$out/ofar-no-ta"
for f in search.safetensors search-state.json; do
  [ -f "$out/ofar-no-ta/$f" ] || cp "$out/ofar/$f" "$out/ofar-no-ta/$f"
done
latbench prune ofar "${common[@]}" --no-assistants --out "$out/ofar-no-ta"
# 4. US-Net / MutualNet baseline (uniform widths, sandwich + in-place distillation across the resolutions).
latbench prune ofar "${common[@]}" --pool uniform --no-assistants --out "$out/usnet"

# 5. LcP once per (device, budget) at OFAR's budget in ms; timed for the cost comparison.
python - "$out" <<'PY' > "$out/lcp-runs.txt"
import json, sys
report = json.load(open(f"{sys.argv[1]}/ofar/report.json"))
for c in report["cohort"]:
    if c["device"].startswith("host:"):
        print(c["device"], c["budget_ratio"], c["budget_ms"], c["table"])
PY
while read -r dev ratio budget_ms table; do
  dir="$out/lcp/${dev#host:}-$ratio"
  if [ ! -f "$dir/report.json" ]; then
    start=$(date +%s)
    latbench prune lcp --model "$model" --checkpoint "$ckpt" --table "$table" --budget-ms "$budget_ms" \
      --device "$dev" --store "$out/measurements.db" --finetune-steps "${LCP_STEPS:-300}" --threads "$threads" \
      --out "$dir" --no-progress
    echo $(( $(date +%s) - start )) > "$dir/seconds.txt"
  fi
done < "$out/lcp-runs.txt"

# 6. The summary.
python benchmarks/ofar_summary.py "$out" > benchmarks/results/ofar/summary.json
cat benchmarks/results/ofar/summary.json
