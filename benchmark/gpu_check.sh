#!/usr/bin/env bash
# One prepared GPU check (issue 7): throughput of every update step on CUDA (PASS/FAIL lines for the targets:
# N=5 fine-tuning update >= 3x the per-member loop, whole loop >= 150 env steps/s), then a short real fine-tuning
# learning run (random-policy Hopper-v4 dataset from sac.py -> 5-member CQL -> balanced_finetune.py), a few minutes.
# Needs no network. Everything lands in $OUT_DIR (default benchmark/results/gpu/):
#   gpu.txt                 nvidia-smi, torch/CUDA versions (names the GPU)
#   throughput_cuda.csv/png benchmark/throughput.py --device cuda
#   throughput.log          its output, including the PASS/FAIL lines
#   learning/               dataset, checkpoints, TensorBoard runs, learning_curve.csv, *.log
#   summary.txt             PASS/FAIL lines, fine-tuning scores and SPS, time per stage
#
#   bash benchmark/gpu_check.sh                        # ~5-7 min on one H100
#   OUT_DIR=$OUT bash benchmark/gpu_check.sh           # e.g. on a lent machine, to bring the files back
#   SKIP_LEARNING=1 bash benchmark/gpu_check.sh        # throughput only (~2 min)
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
OUT_DIR=${OUT_DIR:-benchmark/results/gpu}
ENV_ID=${ENV_ID:-Hopper-v4}
DATA_STEPS=${DATA_STEPS:-50000}          # random-policy transitions (sac.py with learning-starts = total)
CQL_STEPS=${CQL_STEPS:-10000}            # N=5 CQL pretraining updates (2x256, batch 256)
ONLINE_STEPS=${ONLINE_STEPS:-10000}      # fine-tuning env steps (epochs of 1000; first epoch 5000 updates)
N_ENSEMBLE=${N_ENSEMBLE:-5}
STAGE_TIMEOUT=${STAGE_TIMEOUT:-240}      # seconds per stage at most
mkdir -p "$OUT_DIR/learning"
SUMMARY="$OUT_DIR/summary.txt"
: > "$SUMMARY"

stage() {  # stage NAME LOG COMMAND...: print, run under a timeout, record the time and the exit code
    local name=$1 log=$2; shift 2
    echo "+ $*" | tee -a "$SUMMARY"
    local start=$SECONDS
    timeout "$STAGE_TIMEOUT" "$@" > "$log" 2>&1
    local rc=$?
    echo "stage $name: exit $rc, $((SECONDS - start)) s (log $log)" | tee -a "$SUMMARY"
    tail -n 5 "$log"
    return $rc
}

{
    date -u
    nvidia-smi || echo "nvidia-smi not found"
    $PYTHON -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'available', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
} > "$OUT_DIR/gpu.txt" 2>&1
cat "$OUT_DIR/gpu.txt"

# 1. throughput of every update step and of the whole fine-tuning loop
stage throughput "$OUT_DIR/throughput.log" $PYTHON benchmark/throughput.py --device cuda \
    --out "$OUT_DIR/throughput_cuda.csv" --note "run by benchmark/gpu_check.sh (GPU details in gpu.txt)"
grep -E "^(PASS|FAIL)" "$OUT_DIR/throughput.log" | tee -a "$SUMMARY"

# 2. a short real learning run
if [[ "${SKIP_LEARNING:-0}" != 1 ]]; then
    L="$OUT_DIR/learning"
    DATA="$L/${ENV_ID}_random_${DATA_STEPS}.hdf5"
    stage dataset "$L/sac_dataset.log" $PYTHON sac.py --env-id "$ENV_ID" --total-timesteps "$DATA_STEPS" \
        --learning-starts "$DATA_STEPS" --dataset-out "$DATA" --checkpoint "$L/sac.pt" --run-dir "$L/runs/sac_dataset" \
        --eval-every "$DATA_STEPS" --eval-episodes 1 \
    && stage cql "$L/cql.log" $PYTHON cql_pretrain.py --env-id "$ENV_ID" --dataset-path "$DATA" \
        --n-ensemble "$N_ENSEMBLE" --offline-steps "$CQL_STEPS" --eval-every "$CQL_STEPS" --eval-episodes 5 \
        --checkpoint "$L/cql.pt" --run-dir "$L/runs/cql" \
    && stage finetune "$L/balanced.log" $PYTHON balanced_finetune.py --env-id "$ENV_ID" --dataset-path "$DATA" \
        --cql-checkpoint "$L/cql.pt" --n-ensemble "$N_ENSEMBLE" --online-steps "$ONLINE_STEPS" --eval-episodes 5 \
        --checkpoint "$L/balanced.pt" --run-dir "$L/runs/balanced" --checkpoint-every 0
    $PYTHON - "$L/runs/balanced" "$L/learning_curve.csv" >> "$SUMMARY" 2>&1 <<'EOF'
import csv, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
run, out = sys.argv[1], sys.argv[2]
events = EventAccumulator(run)
events.Reload()
tags = [t for t in ("eval/normalized_score", "eval/return", "charts/SPS", "balanced/offline_fraction",
                    "balanced/auroc", "losses/qf_loss", "charts/alpha") if t in events.Tags()["scalars"]]
with open(out, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["tag", "step", "value", "wall_time"])
    for tag in tags:
        for e in events.Scalars(tag):
            writer.writerow([tag, e.step, e.value, e.wall_time])
for tag in ("eval/normalized_score", "charts/SPS"):
    if tag in tags:
        print(tag, " ".join(f"{e.step}:{e.value:.1f}" for e in events.Scalars(tag)))
print("wrote", out)
EOF
fi
echo "---- summary ($SUMMARY)"
cat "$SUMMARY"
