#!/usr/bin/env bash
# Offline-to-online RL end to end on a CPU, offline, in a few minutes:
#   1. sac.py writes a small random-policy Hopper-v4 dataset in D4RL's format (no download);
#   2. cql_pretrain.py trains a small CQL ensemble on it (offline);
#   3. balanced_finetune.py fine-tunes the ensemble online with balanced replay (the paper's method),
#      printing the normalized score before and after;
#   4. benchmark/plot.py draws the fine-tuning curve.
# Everything is small (64-unit networks, N=3, a few thousand steps) so it runs in minutes; the real-scale
# commands are in README.md. Outputs go to demo/ (override with OUT=...). The paths printed are OUT's: with the
# default, or any folder inside the repository, they are repository-relative, so a recorded output holds no machine
# path (benchmark/results/demo/output.txt is recorded with the default).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python}
OUT=${OUT:-demo}
case $OUT in "$PWD"/*) OUT=${OUT#"$PWD"/} ;; esac  # an absolute folder inside the repository: relative to it
SEED=${SEED:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT"

echo "== 1/4 random-policy dataset (sac.py, 20k uniform-random steps)"
$PYTHON sac.py --env-id Hopper-v4 --seed 0 --total-timesteps 20000 --learning-starts 20000 --eval-every 20000 \
    --eval-episodes 1 --dataset-out "$OUT/hopper_random_20k.hdf5" --run-dir "$OUT/runs/dataset" \
    --checkpoint "$OUT/checkpoints/sac_dataset.pt" --no-cuda 2> "$OUT/dataset.log"

echo "== 2/4 CQL ensemble, N=3, offline (cql_pretrain.py, 3k gradient steps)"
$PYTHON cql_pretrain.py --env-id Hopper-v4 --dataset-path "$OUT/hopper_random_20k.hdf5" --n-ensemble 3 \
    --hidden-dim 64 --offline-steps 3000 --eval-every 3000 --eval-episodes 5 --seed "$SEED" \
    --checkpoint "$OUT/checkpoints/cql.pt" --run-dir "$OUT/runs/cql" --no-cuda 2> "$OUT/cql.log"

echo "== 3/4 online fine-tuning with balanced replay + pessimistic Q-ensemble (balanced_finetune.py, 4k env steps)"
$PYTHON balanced_finetune.py --env-id Hopper-v4 --dataset-path "$OUT/hopper_random_20k.hdf5" \
    --cql-checkpoint "$OUT/checkpoints/cql.pt" --n-ensemble 3 --online-steps 4000 --epoch-length 500 \
    --first-epoch-multiplier 2 --hidden-dim 64 --eval-episodes 5 --seed "$SEED" \
    --checkpoint "$OUT/checkpoints/balanced.pt" --run-dir "$OUT/runs/hopper-random__balanced__seed$SEED" \
    --no-cuda 2> "$OUT/finetune.log"

echo "== 4/4 curve"
$PYTHON benchmark/plot.py --method "Balanced replay + pessimistic Q-ensemble (3 members)=$OUT/runs/hopper-random__balanced__seed$SEED" \
    --one-panel --figures fig3 fig4a --formats png --out-dir "$OUT" > /dev/null
echo "curve: $OUT/fig3_score.png (offline fraction: $OUT/fig4a_offline_fraction.png); tensorboard --logdir $OUT/runs"
