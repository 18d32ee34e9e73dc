#!/usr/bin/env bash
# Acceptance run on a host device (default onnxruntime CPU, 1 thread): for MobileNetV2-224 and
# ResNet-18-224, profile with the dense grid and with adaptive refinement (separate stores), build and
# calibrate both tables, validate each on 100 networks. About 45 minutes on 2 cores for onnxruntime.
# DEVICE=host:litert bash benchmarks/acceptance.sh runs the same on LiteRT (files prefixed host-litert-).
# A (model, grid) whose validation report exists is skipped, so the script resumes.
set -euo pipefail
out=${1:-benchmarks/results}
device=${DEVICE:-host:onnxruntime}
label=$([ "$device" = host:onnxruntime ] && echo "" || echo "${device//:/-}-")
table_prefix=$([ "$device" = host:onnxruntime ] && echo host-ort || echo "${device//:/-}")
mkdir -p "$out"
for mode in dense adaptive; do
  for model in ${MODELS:-mobilenet_v2 resnet18}; do
    name="$label$model-$mode"
    store="runs/acceptance/$name.db"
    table="tables/$table_prefix-$model-224-$mode.parquet"
    [ -f "$out/$name-validation.json" ] && continue   # done in an earlier run
    flag=$([ "$mode" = dense ] && echo --dense || echo --adaptive)
    start=$(date +%s)
    latbench profile "$model" --device "$device" --resolution 224 $flag --store "$store" --no-progress \
      > "$out/$name-profile.json"
    end=$(date +%s)
    echo "{\"seconds\": $((end - start))}" > "$out/$name-time.json"
    latbench table build "$model" --device "$device" --resolution 224 --store "$store" -o "$table"
    latbench validate "$model" --device "$device" --table "$table" --resolution 224 --n 100 \
      --store "$store" --json "$out/$name-validation.json" --csv "$out/$name-validation.csv" \
      --plot "$out/$name-validation.png" --no-progress > /dev/null
  done
done
