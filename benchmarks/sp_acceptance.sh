#!/usr/bin/env bash
# SP acceptance on Fashion-MNIST-32: ResNet-56 on host:litert, budgets at 70/50/30 % of the full network's latency
# measured on the device, SP against uniform width and LcP with one retraining recipe (the same fine-tuning
# steps and learning rate), and 3 seeds at 50 %. Reports test accuracy at measured latency and each SP phase's
# cost: writes benchmarks/results/sp/summary.json ("budgets", "seconds", "at_50") and $OUT/summary.md.
#   bash benchmarks/sp_acceptance.sh        # needs runs/r56/base.safetensors (README, "Train and prune"); hours
# As lcp_acceptance.sh does: the jobs run JOBS at a time (1 torch thread each) WITHOUT the device, then every
# network is measured one at a time on the otherwise idle machine (pass 2 reruns each job, which finds all its
# phases done and only measures). Resumable at every step. SP's seed-0 supernet is trained once (by the 50 % run)
# and copied to the other seed-0 budgets: same settings, so their training phase finds it done.
# Every job is a recipe — search/sp-resnet56-{70,50,30}.toml (reduced populations and supernet steps, see there)
# and search/{lcp,uniform}-resnet56-{70,50,30}.toml — at the budget in ms of this sitting's measurement, with this
# run's paths and seed; each report.json records the resolved recipe.
# Environment: DEVICE (host:litert), TABLE, CKPT, OUT, STORE, SEEDS ("0 1 2"), BUDGETS ("0.7 0.5 0.3"), JOBS (2),
# THREADS (torch threads per job, 1; the first SP job alone uses 2), TEST (test images, default all), and to
# depart from the recipes: STEPS (retraining steps of every method), LR, SUPERNET_STEPS, MPOP, MGEN, SPOP, SGEN,
# EVAL, CALIB, RAY (--ray: stage EAs on Ray actors), and for LcP FITNESS, BN, CANDIDATES, POOL.
# The README's run: CANDIDATES=60 POOL=32 FITNESS=256 BN=128 STEPS=150 TEST=5000 (the whole comparison in ≈2 hours on 2 cores;
# LcP's 400 candidates alone take ≈13 min per job here).
set -euo pipefail
device=${DEVICE:-host:litert}
table=${TABLE:-tables/host-litert-resnet56-32-dense.parquet}
ckpt=${CKPT:-runs/r56/base.safetensors}
out=${OUT:-runs/sp-acceptance}
store=${STORE:-runs/r56/litert.db}
results=${RESULTS:-benchmarks/results/sp}
mkdir -p "$out" "$results"
# 1. The full network's latency, measured once on the quiet machine: the budgets are fractions of it.
if [ ! -f "$out/full.txt" ]; then
  full_ms=$(python benchmarks/full_latency.py "$table" "$device" "$store" --checkpoint "$ckpt")
  echo "full ResNet-56 on $device: $full_ms ms" > "$out/full.txt"
fi
full_ms=$(awk '{print $(NF-1)}' "$out/full.txt")
echo "full ResNet-56: $full_ms ms"

run() {  # method ratio seed [extra options]: the recipe search/METHOD-resnet56-PCT.toml at the budget in ms
  local m=$1 r=$2 s=$3; shift 3
  local dir="$out/$m-$r-s$s"
  local budget; budget=$(python -c "print($r * $full_ms)")
  local pct; pct=$(python -c "print(round($r * 100))")
  local command=lcp options=()
  if [ "$m" = sp ]; then
    command=sp
    options=(${SUPERNET_STEPS:+--supernet-steps "$SUPERNET_STEPS"} ${MPOP:+--manager-population "$MPOP"}
             ${MGEN:+--manager-generations "$MGEN"} ${SPOP:+--stage-population "$SPOP"}
             ${SGEN:+--stage-generations "$SGEN"} ${EVAL:+--eval-images "$EVAL"} ${CALIB:+--calib-images "$CALIB"}
             ${RAY:+"$RAY"})
  else
    options=(${FITNESS:+--fitness-images "$FITNESS"} ${BN:+--bn-images "$BN"} ${CANDIDATES:+--candidates "$CANDIDATES"}
             ${POOL:+--pool "$POOL"})
  fi
  mkdir -p "$dir"
  latbench prune "$command" --config "search/$m-resnet56-$pct.toml" --budget-ms "$budget" --checkpoint "$ckpt" \
    --table "$table" --store "$store" --out "$dir" --seed "$s" ${STEPS:+--finetune-steps "$STEPS"} \
    ${LR:+--finetune-lr "$LR"} ${TEST:+--test-images "$TEST"} "${options[@]}" --threads "${THREADS:-1}" \
    --no-progress "$@" >> "$dir.log" 2>&1
}
export -f run; export out ckpt table device store full_ms

jobs_list() {
  for b in ${BUDGETS:-0.7 0.5 0.3}; do
    for m in lcp uniform sp; do
      for s in ${SEEDS:-0 1 2}; do
        if [ "$b" = 0.5 ] || [ "$s" = 0 ]; then echo "$m $b $s"; fi
      done
    done
  done
}
# 2. SP's seed-0 supernet first (at 50 %), copied to the other seed-0 budgets.
[ -f "$out/sp-0.5-s0/report.json" ] || THREADS=2 run sp 0.5 0 --set device=none     # alone: both cores
for b in ${BUDGETS:-0.7 0.5 0.3}; do
  mkdir -p "$out/sp-$b-s0"
  [ -f "$out/sp-$b-s0/supernet.safetensors" ] || cp "$out/sp-0.5-s0/supernet.safetensors" "$out/sp-$b-s0/"
done
# 3. Every job without the device, JOBS at a time (the long LcP searches are listed first per budget).
jobs_list | xargs -P "${JOBS:-2}" -L 1 bash -c '[ -f "$out/$0-$1-s$2/report.json" ] || run "$0" "$1" "$2" --set device=none'
# 4. Measurement of the shipped files, one at a time.
jobs_list | while read -r m b s; do
  grep -q '"measured_ms": null' "$out/$m-$b-s$s/report.json" && run "$m" "$b" "$s" --device "$device"
done
# 5. Summary.
python - "$out" "$results" "$full_ms" <<'PY'
import json, sys
from pathlib import Path
import numpy as np
from latbench.files import atomic_write_json, read_json
out, results, full_ms = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
rows, seconds = [], {"supernet": [], "search": [], "retrain": []}
for path in sorted(out.glob("*/report.json")):
    r = json.loads(path.read_text())
    method, ratio, seed = path.parent.name.rsplit("-", 2)
    rows.append({"ratio": float(ratio), "method": method, "seed": int(seed[1:]),
                 "test_acc": r["test_accuracy"]["finetuned"], "measured_ms": r["measured_ms"],
                 "budget_ms": r["budget"]["value"], "predicted_ms": r["predicted_ms"]})
    if method == "sp":
        for k in seconds:
            seconds[k].append(r["seconds"][k])
at_50 = {}
for m in sorted({r["method"] for r in rows}):
    sel = [r for r in rows if r["method"] == m and r["ratio"] == 0.5]
    if sel:
        acc = np.array([r["test_acc"] for r in sel])
        ms = np.array([r["measured_ms"] or np.nan for r in sel])
        at_50[m] = {"seeds": len(sel), "test_acc_mean": float(acc.mean()), "test_acc_std": float(acc.std(ddof=1)) if len(sel) > 1 else 0.0,
                    "measured_ms_mean": float(np.nanmean(ms)), "measured_ms_std": float(np.nanstd(ms, ddof=1)) if len(sel) > 1 else 0.0}
summary_path = results / "summary.json"
summary = read_json(summary_path, recover="delete it") if summary_path.exists() else {}
summary.update({"budgets": rows, "full_ms": full_ms, "at_50": at_50,
                "seconds": {k: float(np.mean(v)) if v else None for k, v in seconds.items()}})
atomic_write_json(summary_path, summary, indent=1)
print(json.dumps({"at_50": at_50, "seconds": summary["seconds"]}, indent=1))
PY
python benchmarks/summarize_pruning.py "$out" > "$out/summary.md"
cat "$out/summary.md"
