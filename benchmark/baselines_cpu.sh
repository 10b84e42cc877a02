#!/usr/bin/env bash
# CPU-scale learning runs of the two offline-to-online baselines, awac.py and bcq_ft.py (SPEC §6), on the locally
# written Hopper datasets (D4RL-format files from sac.py), then a summary CSV of their evaluation scores.
#
# Every run: an offline phase of OFFLINE_STEPS gradient steps on the dataset, then ONLINE_STEPS environment steps
# with the same update rule; TensorBoard x-axis = online env steps, the offline phase at x in [-OFFLINE_STEPS, 0],
# so x = 0 is the offline policy (as balanced_finetune.py's epoch 0). Networks are scaled down for the CPU
# (HIDDEN for every hidden layer of every network: AWAC's actor/critic, BCQ's VAE/perturbation/critic).
#
#   benchmark/baselines_cpu.sh                                   # the full CPU grid (hours on 2 cores)
#   SEEDS="0" METHODS="awac" benchmark/baselines_cpu.sh          # a subset
#   OFFLINE_STEPS=50 ONLINE_STEPS=50 HIDDEN=16 EVAL_EVERY=50 EVAL_EPISODES=1 SEEDS=0 \
#     DATASETS=/path/tiny.hdf5 OUT_DIR=/tmp/o2o_smoke RESULTS=/tmp/o2o_smoke.csv benchmark/baselines_cpu.sh   # smoke test
#
# Re-running continues: a finished run (checkpoint at its last step) is skipped, an interrupted one is resumed
# with --resume. Each variable below can be overridden from the environment.
set -euo pipefail
cd "$(dirname "$0")/.."

DATASETS=${DATASETS:-"data/hopper_random.hdf5 data/hopper_replay.hdf5"}  # written by sac.py (see below)
ENV_ID=${ENV_ID:-Hopper-v4}             # env to act and evaluate in (the datasets' env)
METHODS=${METHODS:-"awac bcq"}
SEEDS=${SEEDS:-"0 1 2"}
N_ENSEMBLE=${N_ENSEMBLE:-2}             # the paper ensembles both baselines (5 members on GPU, see paper.sh)
OFFLINE_STEPS=${OFFLINE_STEPS:-20000}   # GPU/paper: 1,000,000
ONLINE_STEPS=${ONLINE_STEPS:-20000}     # GPU/paper: 250,000
HIDDEN=${HIDDEN:-64}                    # GPU/paper: AWAC 256-256; BCQ VAE 750-750, actor and critic 400-300
BATCH=${BATCH:-256}
EVAL_EVERY=${EVAL_EVERY:-2000}
EVAL_EPISODES=${EVAL_EPISODES:-5}
AWAC_LAMBDA=${AWAC_LAMBDA:-1.0}
JOBS=${JOBS:-1}                         # runs at a time (one core each)
OUT_DIR=${OUT_DIR:-runs/baselines_cpu}
CKPT_DIR=${CKPT_DIR:-checkpoints/baselines_cpu}
RESULTS=${RESULTS:-benchmark/results/baselines_cpu.csv}
PYTHON=${PYTHON:-python}
export OMP_NUM_THREADS=1                # several runs share 2 cores; oversubscribed threads make torch crawl

for dataset in $DATASETS; do
    if [[ ! -f $dataset ]]; then
        echo "error: dataset $dataset not found; write it with sac.py, e.g." >&2
        echo "  python sac.py --env-id $ENV_ID --total-timesteps 100000 --learning-starts 100000 --dataset-out data/hopper_random.hdf5" >&2
        echo "  python sac.py --env-id $ENV_ID --total-timesteps 100000 --dataset-out data/hopper_replay.hdf5" >&2
        exit 1
    fi
done
mkdir -p "$OUT_DIR" "$CKPT_DIR" "$(dirname "$RESULTS")"
TOTAL=$((OFFLINE_STEPS + ONLINE_STEPS))

run_one() {  # method dataset seed
    local method=$1 dataset=$2 seed=$3 name script extra=()
    name="$(basename "$dataset" .hdf5)__${method}__seed$seed"
    local ckpt="$CKPT_DIR/$name.pt" resume=()
    if [[ -f $ckpt ]]; then
        local step
        step=$("$PYTHON" -c "import sys, torch; print(torch.load(sys.argv[1], weights_only=False)['step'])" "$ckpt")
        if [[ $step -ge $TOTAL ]]; then echo "done already: $name"; return 0; fi
        resume=(--resume)
    fi
    case $method in
        awac) script=awac.py; extra=(--awac-lambda "$AWAC_LAMBDA") ;;
        bcq) script=bcq_ft.py ;;
        *) echo "error: unknown method '$method' (awac, bcq)" >&2; return 1 ;;
    esac
    echo "run: $name"
    "$PYTHON" "$script" --env-id "$ENV_ID" --dataset-path "$dataset" --seed "$seed" --n-ensemble "$N_ENSEMBLE" \
        --offline-steps "$OFFLINE_STEPS" --online-steps "$ONLINE_STEPS" --hidden-dim "$HIDDEN" --batch-size "$BATCH" \
        --eval-every "$EVAL_EVERY" --eval-episodes "$EVAL_EPISODES" --checkpoint-every 5000 --no-cuda \
        --save-checkpoint "$ckpt" --run-dir "$OUT_DIR/$name" "${extra[@]}" "${resume[@]}" \
        > "$OUT_DIR/$name.log" 2>&1 || { echo "error: $name failed, see $OUT_DIR/$name.log" >&2; return 1; }
}

failed=0
for dataset in $DATASETS; do
    for seed in $SEEDS; do
        for method in $METHODS; do
            while [[ $(jobs -rp | wc -l) -ge $JOBS ]]; do wait -n || failed=1; done
            run_one "$method" "$dataset" "$seed" &
        done
    done
done
while [[ $(jobs -rp | wc -l) -gt 0 ]]; do wait -n || failed=1; done
[[ $failed -eq 0 ]] || { echo "error: some runs failed" >&2; exit 1; }

# Summary: per run, the score at x = 0 (end of the offline phase), at the end, and the best online evaluation.
"$PYTHON" - "$OUT_DIR" "$RESULTS" "$0 (OFFLINE_STEPS=$OFFLINE_STEPS ONLINE_STEPS=$ONLINE_STEPS HIDDEN=$HIDDEN BATCH=$BATCH N_ENSEMBLE=$N_ENSEMBLE SEEDS='$SEEDS' DATASETS='$DATASETS' ENV_ID=$ENV_ID EVAL_EVERY=$EVAL_EVERY EVAL_EPISODES=$EVAL_EPISODES AWAC_LAMBDA=$AWAC_LAMBDA)" <<'PY'
import csv, os, platform, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

out_dir, results, command = sys.argv[1:4]
rows = []
for name in sorted(os.listdir(out_dir)):
    if not os.path.isdir(os.path.join(out_dir, name)) or name.count("__") != 2:
        continue
    acc = EventAccumulator(os.path.join(out_dir, name), size_guidance={"scalars": 0})
    acc.Reload()
    if "eval/normalized_score" not in acc.Tags()["scalars"]:
        continue
    scores = {e.step: e.value for e in acc.Scalars("eval/normalized_score")}
    returns = {e.step: e.value for e in acc.Scalars("eval/return")}
    dataset, method, seed = name.split("__")
    last = max(scores)
    online = [v for s, v in scores.items() if s > 0]
    rows.append({"dataset": dataset, "method": method, "seed": seed.removeprefix("seed"),
                 "score_offline_end": scores.get(0, float("nan")), "return_offline_end": returns.get(0, float("nan")),
                 "final_step": last, "score_final": scores[last], "return_final": returns[last],
                 "score_best_online": max(online) if online else float("nan")})
with open(results, "w", newline="") as f:
    f.write(f"# command: {command}\n# machine: {platform.node()} {platform.processor() or platform.machine()}, CPU\n")
    f.write("# scores: D4RL-normalized (hopper); evaluation: AWAC tanh(mean of the eq. 5 policy), BCQ its candidate-selection policy; x = 0 is the end of the offline phase\n")
    writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["dataset"])
    writer.writeheader()
    writer.writerows(rows)
print(f"wrote {results} ({len(rows)} runs)")
for row in rows:
    print(f"{row['dataset']:>24} {row['method']:>5} seed {row['seed']}: x=0 {row['score_offline_end']:.1f}  "
          f"x={row['final_step']} {row['score_final']:.1f}")
PY
