#!/usr/bin/env bash
# Acceptance run of the core issue on the host (onnxruntime CPU, 1 thread): for MobileNetV2-224 and
# ResNet-18-224, profile with the dense grid and with adaptive refinement (separate stores), build and
# calibrate both tables, validate each on 100 networks. Takes about an hour on 2 cores.
set -euo pipefail
out=${1:-benchmarks/results}
mkdir -p "$out"
for mode in dense adaptive; do
  for model in ${MODELS:-mobilenet_v2 resnet18}; do
    store="runs/acceptance/$model-$mode.db"
    [ -f "$out/$model-$mode-validation.json" ] && continue   # done in an earlier run
    flag=$([ "$mode" = dense ] && echo --dense || echo --adaptive)
    start=$(date +%s)
    latbench profile "$model" --resolution 224 $flag --store "$store" --no-progress > "$out/$model-$mode-profile.json"
    end=$(date +%s)
    echo "{\"seconds\": $((end - start))}" > "$out/$model-$mode-time.json"
    latbench table build "$model" --resolution 224 --store "$store" -o "tables/host-ort-$model-224-$mode.parquet"
    latbench validate "$model" --table "tables/host-ort-$model-224-$mode.parquet" --resolution 224 --n 100 \
      --store "$store" --json "$out/$model-$mode-validation.json" --csv "$out/$model-$mode-validation.csv" \
      --plot "$out/$model-$mode-validation.png" --no-progress > /dev/null
  done
done
