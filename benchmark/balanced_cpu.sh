#!/usr/bin/env bash
# CPU-scale experiment (issue 4): balanced replay vs uniform vs online-only replay (paper Fig. 4a/4c, small scale).
#
# One locally written Hopper-v4 dataset (sac.py, random policy by default), ONE small CQL ensemble
# (cql_pretrain.py), then balanced_finetune.py from that same checkpoint in each --sampling mode for
# several seeds; finally curves.csv, summary.csv and balanced_cpu.png under $OUT_DIR.
# Everything runs offline on the CPU, $WORKERS jobs at a time with one torch thread each.
#
#   bash benchmark/balanced_cpu.sh                       # defaults below: ~20-30 min on 2 free cores (measured:
#                                                        # CQL ~13 ms/step, one arm ~3 min CPU; 9 arms, 2 at a time)
#   SEEDS="1 2" ONLINE_STEPS=5000 bash benchmark/balanced_cpu.sh   # quicker look
#   SMOKE=1 bash benchmark/balanced_cpu.sh               # toy sizes, < 3 min: checks the pipeline only
set -euo pipefail
cd "$(dirname "$0")/.."

# ---- sizes (override from the environment) ----
PYTHON=${PYTHON:-python}
ENV_ID=${ENV_ID:-Hopper-v4}
SEEDS=${SEEDS:-"1 2 3"}                       # fine-tuning seeds (the CQL ensemble is shared, seed 1)
MODES=${MODES:-"balanced uniform online-only"}
DATA_STEPS=${DATA_STEPS:-50000}               # transitions in the offline dataset
DATA_LEARNING_STARTS=${DATA_LEARNING_STARTS:-$DATA_STEPS}  # = DATA_STEPS: random policy; smaller: SAC replay data
N_ENSEMBLE=${N_ENSEMBLE:-2}
HIDDEN=${HIDDEN:-64}                          # actor/critic width (CQL) and density-ratio width (fine-tuning)
BATCH=${BATCH:-128}
CQL_STEPS=${CQL_STEPS:-20000}
ONLINE_STEPS=${ONLINE_STEPS:-20000}
EPOCH_LENGTH=${EPOCH_LENGTH:-1000}
FIRST_EPOCH_MULTIPLIER=${FIRST_EPOCH_MULTIPLIER:-5}
EVAL_EPISODES=${EVAL_EPISODES:-5}
WORKERS=${WORKERS:-2}
OUT_DIR=${OUT_DIR:-benchmark/results/balanced_cpu}
if [[ "${SMOKE:-0}" == 1 ]]; then
    SEEDS="1 2"; DATA_STEPS=2000; DATA_LEARNING_STARTS=2000; HIDDEN=32; BATCH=32; CQL_STEPS=100
    ONLINE_STEPS=300; EPOCH_LENGTH=100; FIRST_EPOCH_MULTIPLIER=2; EVAL_EPISODES=1; OUT_DIR=${OUT_DIR}_smoke
fi

mkdir -p "$OUT_DIR"/runs "$OUT_DIR"/checkpoints
DATA="$OUT_DIR/dataset_${ENV_ID}_${DATA_STEPS}.hdf5"
CQL="$OUT_DIR/checkpoints/cql_${ENV_ID}_seed1.pt"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
LOG="$OUT_DIR/commands.txt"
: > "$LOG"
run() { echo "$*" >> "$LOG"; "$@"; }

# 1. dataset (skipped when present)
if [[ ! -f "$DATA" ]]; then
    run "$PYTHON" sac.py --env-id "$ENV_ID" --seed 0 --total-timesteps "$DATA_STEPS" \
        --learning-starts "$DATA_LEARNING_STARTS" --hidden-dim "$HIDDEN" --eval-every "$DATA_STEPS" \
        --eval-episodes 1 --dataset-out "$DATA" --run-dir "$OUT_DIR/runs/sac_dataset" \
        --checkpoint "$OUT_DIR/checkpoints/sac_dataset.pt" --no-cuda > "$OUT_DIR/dataset.log" 2>&1
fi

# 2. one small CQL ensemble, shared by every arm (skipped when present)
if [[ ! -f "$CQL" ]]; then
    run "$PYTHON" cql_pretrain.py --env-id "$ENV_ID" --dataset-path "$DATA" --n-ensemble "$N_ENSEMBLE" \
        --hidden-dim "$HIDDEN" --batch-size "$BATCH" --offline-steps "$CQL_STEPS" --eval-every "$CQL_STEPS" \
        --eval-episodes "$EVAL_EPISODES" --checkpoint "$CQL" --run-dir "$OUT_DIR/runs/cql" --seed 1 --no-cuda \
        > "$OUT_DIR/cql.log" 2>&1
fi

# 3. fine-tuning arms, $WORKERS at a time
JOBS="$OUT_DIR/jobs.txt"
: > "$JOBS"
for seed in $SEEDS; do
    for mode in $MODES; do
        echo "$PYTHON balanced_finetune.py --env-id $ENV_ID --dataset-path $DATA --checkpoint $CQL" \
             "--n-ensemble $N_ENSEMBLE --sampling $mode --seed $seed --online-steps $ONLINE_STEPS" \
             "--epoch-length $EPOCH_LENGTH --first-epoch-multiplier $FIRST_EPOCH_MULTIPLIER --batch-size $BATCH" \
             "--ratio-batch-size $BATCH --hidden-dim $HIDDEN --eval-episodes $EVAL_EPISODES --no-cuda" \
             "--run-dir $OUT_DIR/runs/${mode}_seed$seed --save-checkpoint $OUT_DIR/checkpoints/${mode}_seed$seed.pt" \
             "> $OUT_DIR/${mode}_seed$seed.log 2>&1" >> "$JOBS"
    done
done
cat "$JOBS" >> "$LOG"
xargs -P "$WORKERS" -I{} -d '\n' bash -c '{} || { echo "FAILED: {}" >&2; exit 255; }' < "$JOBS"

# 4. curves.csv, summary.csv, balanced_cpu.png
"$PYTHON" - "$OUT_DIR" "$SEEDS" "$MODES" <<'EOF'
import csv, os, sys
import numpy as np
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

out, seeds, modes = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
tags = ("eval/normalized_score", "eval/return", "balanced/offline_fraction", "balanced/auroc")
curves = {}
with open(os.path.join(out, "curves.csv"), "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["sampling", "seed", "tag", "step", "value"])
    for mode in modes:
        for seed in seeds:
            ea = EventAccumulator(os.path.join(out, "runs", f"{mode}_seed{seed}"), size_guidance={"scalars": 0})
            ea.Reload()
            for tag in tags:
                points = [(e.step, e.value) for e in ea.Scalars(tag)]
                curves[mode, seed, tag] = points
                writer.writerows([mode, seed, tag, s, v] for s, v in points)
rows = []
for mode in modes:
    start = [curves[mode, s, "eval/normalized_score"][0][1] for s in seeds]
    final = [curves[mode, s, "eval/normalized_score"][-1][1] for s in seeds]
    last3 = [np.mean([v for _, v in curves[mode, s, "eval/normalized_score"][-3:]]) for s in seeds]
    frac = [curves[mode, s, "balanced/offline_fraction"][-1][1] for s in seeds]
    rows.append({"sampling": mode, "seeds": len(seeds), "score_at_start": round(float(np.mean(start)), 2),
                 "final_score_mean": round(float(np.mean(final)), 2), "final_score_std": round(float(np.std(final)), 2),
                 "last3_evals_mean": round(float(np.mean(last3)), 2), "last3_evals_std": round(float(np.std(last3)), 2),
                 "final_offline_fraction": round(float(np.mean(frac)), 3)})
with open(os.path.join(out, "summary.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
for row in rows:
    print(row)
fig, axes = plt.subplots(1, 3, figsize=(15, 4))
for ax, tag, title in zip(axes, ("eval/normalized_score", "balanced/offline_fraction", "balanced/auroc"),
                          ("normalized score", "offline share of the RL batch (Fig. 4a)", "AUROC of Q (Fig. 4b)")):
    for mode in modes:
        steps = np.array([s for s, _ in curves[mode, seeds[0], tag]])
        values = np.array([[v for _, v in curves[mode, s, tag]][:len(steps)] for s in seeds])
        mean, std = values.mean(0), values.std(0)
        ax.plot(steps, mean, label=mode)
        ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
    ax.set_title(title)
    ax.set_xlabel("online env steps")
axes[0].legend()
fig.suptitle(f"balanced_finetune.py CPU scale: mean ± std over seeds {' '.join(seeds)}")
fig.tight_layout()
fig.savefig(os.path.join(out, "balanced_cpu.png"), dpi=120)
print(f"wrote {out}/curves.csv, {out}/summary.csv, {out}/balanced_cpu.png; commands in {out}/commands.txt")
EOF
