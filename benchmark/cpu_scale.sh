#!/usr/bin/env bash
# The paper's comparisons (Fig. 3, 4a-d, 1c) scaled down to a 2-core CPU: a few hours, no GPU, no download.
#
#   bash benchmark/cpu_scale.sh              # everything below; results in benchmark/results/cpu_scale/
#   bash benchmark/cpu_scale.sh --dry-run    # print the commands only
#   SEEDS="1" ONLINE_STEPS=5000 bash benchmark/cpu_scale.sh   # a quicker look
#   ONLINE_STEPS=50000 ARMS="balanced-N5 uniform-N5 online-only-N5 sac-ft" OUT=benchmark/results/cpu_scale_50k \
#       bash benchmark/cpu_scale.sh                          # a longer online phase for a subset of the arms
#
# Reductions from the paper (paper value in brackets), every one a variable below:
#   * one environment, Hopper-v4 [halfcheetah, hopper, walker2d], with two datasets written here by sac.py
#     instead of D4RL's: "replay", the 30k-step replay buffer of a SAC run (like medium-replay) [D4RL: 402k],
#     and "random", 100k uniform-random steps [D4RL: 1M]; the fine-tuning comparisons use the replay dataset;
#   * hidden layers of 64 units for every network [256; BCQ 750-750 / 400-300];
#   * CQL pretraining 10k gradient steps [1M], N=5 kept; one CQL ensemble (seed 1) shared by all fine-tuning
#     seeds [one per seed], so seeds differ in the online phase only;
#   * 10k online env steps [250k], still in epochs of 1000 steps with 5x updates in the first epoch;
#     AWAC and BCQ-ft 10k offline steps [1M] then 10k online; BCQ-ft with N=2 members [5] (its update costs
#     ~4x AWAC's); FQE 10k steps;
#   * 3 seeds [4]; evaluation with 5 episodes [5-10].
# Jobs run $WORKERS at a time with one torch thread each; each stage waits for the one before. A job that
# finished leaves $OUT/logs/NAME.done and is not run again, so rerunning the script continues where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
ENV_ID=${ENV_ID:-Hopper-v4}
SEEDS=${SEEDS:-"1 2 3"}
HIDDEN=${HIDDEN:-64}
CQL_STEPS=${CQL_STEPS:-10000}
ONLINE_STEPS=${ONLINE_STEPS:-10000}
OFFLINE_STEPS=${OFFLINE_STEPS:-10000}       # AWAC / BCQ-ft offline phase
FQE_STEPS=${FQE_STEPS:-10000}
BCQ_N=${BCQ_N:-2}
EVAL_EPISODES=${EVAL_EPISODES:-5}
WORKERS=${WORKERS:-2}
# fine-tuning arms to run (all by default)
ARMS=${ARMS:-"balanced-N5 uniform-N5 online-only-N5 balanced-N2 balanced-N1 sac-ft awac-N5 bcq-ft sac fqe-init"}
DATA_DIR=${DATA_DIR:-data}
OUT=${OUT:-benchmark/results/cpu_scale}
CKPT=${CKPT:-checkpoints/cpu_scale}
DRY_RUN=0
[[ "${1:-}" == "--dry-run" ]] && DRY_RUN=1

REPLAY=$DATA_DIR/hopper_replay_30k.hdf5
RANDOM_DATA=$DATA_DIR/hopper_random_100k.hdf5
CQL_REPLAY=$CKPT/cql_replay_N5.pt
CQL_RANDOM=$CKPT/cql_random_N5.pt
FQE_REPLAY=$CKPT/fqe_replay_N5.pt
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$OUT/logs" "$OUT/runs" "$CKPT" "$DATA_DIR"
COMMANDS=$OUT/commands.txt
[[ $DRY_RUN == 1 ]] || echo "# $(date -u '+%F %T UTC') bash benchmark/cpu_scale.sh with ONLINE_STEPS=$ONLINE_STEPS OFFLINE_STEPS=$OFFLINE_STEPS CQL_STEPS=$CQL_STEPS HIDDEN=$HIDDEN SEEDS='$SEEDS' ARMS='$ARMS' (finished jobs are skipped)" >> "$COMMANDS"

# run_stage NAME: runs the commands collected in $JOBS, $WORKERS at a time; each line "name|command"
run_stage() {
    echo "== stage $1"
    while IFS='|' read -r name cmd; do echo "$cmd"; done < "$JOBS"
    [[ $DRY_RUN == 1 ]] && return 0
    cut -d'|' -f2- "$JOBS" >> "$COMMANDS"
    while IFS='|' read -r name cmd; do printf '%s\0' "$cmd > $OUT/logs/$name.log 2>&1 && touch $OUT/logs/$name.done || { echo FAILED: $name >&2; exit 255; }"; done < "$JOBS" \
        | xargs -0 -P "$WORKERS" -I{} bash -c '{}'
}
JOBS=$(mktemp)
trap 'rm -f "$JOBS"' EXIT
add() { [[ -f "$OUT/logs/$1.done" ]] || echo "$1|$2" >> "$JOBS"; }   # add NAME COMMAND (unless it finished before)
want() { [[ " $ARMS " == *" $1 "* ]]; }  # want ARM: is ARM in $ARMS
skip_if() { [[ -f "$1" ]]; }        # a dataset, written atomically at the end, is not made again
finished() {                        # finished CKPT STEPS: the checkpoint exists and holds the final step
    [[ -f "$1" ]] && [[ "$($PYTHON -c 'import sys, torch; print(torch.load(sys.argv[1], weights_only=False)["step"])' "$1")" -ge "$2" ]]
}

# ---- stage 1: datasets (sac.py writes D4RL-format files) ----
: > "$JOBS"
skip_if "$REPLAY" || add dataset_replay "$PYTHON sac.py --env-id $ENV_ID --seed 2 --total-timesteps 30000 --eval-every 5000 --eval-episodes $EVAL_EPISODES --dataset-out $REPLAY --run-dir $OUT/runs/dataset_replay --checkpoint $CKPT/sac_dataset_replay.pt --no-cuda"
skip_if "$RANDOM_DATA" || add dataset_random "$PYTHON sac.py --env-id $ENV_ID --seed 0 --total-timesteps 100000 --learning-starts 100000 --eval-every 100000 --eval-episodes $EVAL_EPISODES --dataset-out $RANDOM_DATA --run-dir $OUT/runs/dataset_random --checkpoint $CKPT/sac_dataset_random.pt --no-cuda"
run_stage datasets
[[ $DRY_RUN == 1 ]] || $PYTHON benchmark/dataset_stats.py "$REPLAY" "$RANDOM_DATA" --csv "$OUT/datasets.csv"

# ---- stage 2: CQL ensembles (N=5) on both datasets ----
: > "$JOBS"
for data in replay random; do
    path=$REPLAY; ckpt=$CQL_REPLAY
    [[ $data == random ]] && { path=$RANDOM_DATA; ckpt=$CQL_RANDOM; }
    finished "$ckpt" "$CQL_STEPS" || add "cql_$data" "$PYTHON cql_pretrain.py --env-id $ENV_ID --dataset-path $path --n-ensemble 5 --hidden-dim $HIDDEN --offline-steps $CQL_STEPS --eval-every 2000 --eval-episodes $EVAL_EPISODES --checkpoint $ckpt --run-dir $OUT/runs/hopper-${data}__cql-pretrain__seed1 --seed 1 --no-cuda"
done
run_stage cql

# ---- stage 3: fine-tuning from the replay CQL ensemble, baselines, SAC from scratch, FQE ----
: > "$JOBS"
FT="$PYTHON balanced_finetune.py --env-id $ENV_ID --dataset-path $REPLAY --cql-checkpoint $CQL_REPLAY --online-steps $ONLINE_STEPS --hidden-dim $HIDDEN --eval-episodes $EVAL_EPISODES --no-cuda"
want fqe-init && ! finished "$FQE_REPLAY" "$FQE_STEPS" && add fqe_replay "$PYTHON fqe.py --env-id $ENV_ID --dataset-path $REPLAY --policy-checkpoint $CQL_REPLAY --checkpoint $FQE_REPLAY --n-ensemble 5 --hidden-dim $HIDDEN --steps $FQE_STEPS --eval-every 2000 --eval-episodes $EVAL_EPISODES --run-dir $OUT/runs/hopper-replay__fqe__seed1 --seed 1 --no-cuda"
for seed in $SEEDS; do
    # longest first, so the two workers finish together
    want bcq-ft && add "bcq_s$seed" "$PYTHON bcq_ft.py --env-id $ENV_ID --dataset-path $REPLAY --n-ensemble $BCQ_N --offline-steps $OFFLINE_STEPS --online-steps $ONLINE_STEPS --hidden-dim $HIDDEN --vae-hidden-sizes $HIDDEN $HIDDEN --actor-hidden-sizes $HIDDEN $HIDDEN --critic-hidden-sizes $HIDDEN $HIDDEN --eval-every 1000 --eval-episodes $EVAL_EPISODES --seed $seed --checkpoint $CKPT/bcq_s$seed.pt --run-dir $OUT/runs/hopper-replay__bcq-ft-N${BCQ_N}__seed$seed --no-cuda"
    want awac-N5 && add "awac_s$seed" "$PYTHON awac.py --env-id $ENV_ID --dataset-path $REPLAY --n-ensemble 5 --offline-steps $OFFLINE_STEPS --online-steps $ONLINE_STEPS --hidden-dim $HIDDEN --eval-every 1000 --eval-episodes $EVAL_EPISODES --seed $seed --checkpoint $CKPT/awac_s$seed.pt --run-dir $OUT/runs/hopper-replay__awac-N5__seed$seed --no-cuda"
    for mode in balanced uniform online-only; do
        want "$mode-N5" && add "${mode}_N5_s$seed" "$FT --n-ensemble 5 --sampling $mode --seed $seed --checkpoint $CKPT/${mode}_N5_s$seed.pt --run-dir $OUT/runs/hopper-replay__${mode}-N5__seed$seed"
    done
    want balanced-N2 && add "balanced_N2_s$seed" "$FT --n-ensemble 2 --sampling balanced --seed $seed --checkpoint $CKPT/balanced_N2_s$seed.pt --run-dir $OUT/runs/hopper-replay__balanced-N2__seed$seed"
    want balanced-N1 && add "balanced_N1_s$seed" "$FT --n-ensemble 1 --sampling balanced --seed $seed --checkpoint $CKPT/balanced_N1_s$seed.pt --run-dir $OUT/runs/hopper-replay__balanced-N1__seed$seed"
    want sac-ft && add "sac_ft_s$seed" "$FT --n-ensemble 1 --sampling uniform --seed $seed --checkpoint $CKPT/sac_ft_s$seed.pt --run-dir $OUT/runs/hopper-replay__sac-ft__seed$seed"
    want sac && add "sac_s$seed" "$PYTHON sac.py --env-id $ENV_ID --seed $seed --total-timesteps $ONLINE_STEPS --learning-starts 5000 --hidden-dim $HIDDEN --eval-every 1000 --eval-episodes $EVAL_EPISODES --checkpoint $CKPT/sac_s$seed.pt --run-dir $OUT/runs/hopper-replay__sac__seed$seed --no-cuda"
done
run_stage finetune

# ---- stage 4: FQE-initialised fine-tuning (paper Fig. 1c) ----
: > "$JOBS"
for seed in $SEEDS; do
    want fqe-init && add "fqe_init_s$seed" "$FT --n-ensemble 5 --sampling balanced --q-init fqe --fqe-checkpoint $FQE_REPLAY --seed $seed --checkpoint $CKPT/fqe_init_s$seed.pt --run-dir $OUT/runs/hopper-replay__balanced-N5-fqe-init__seed$seed"
done
run_stage fqe_init
[[ $DRY_RUN == 1 ]] && exit 0

# ---- figures and tables: each figure shows the arms of it that ran ----
R=$OUT/runs
PANEL="$ENV_ID, replay dataset (30k SAC transitions), $ONLINE_STEPS online steps"
run_name() {  # the run-folder name of an arm
    case $1 in bcq-ft) echo "bcq-ft-N$BCQ_N" ;; fqe-init) echo "balanced-N5-fqe-init" ;; *) echo "$1" ;; esac
}
figure() {  # figure OUT_NAME FIGURES -- LABEL=ARM ...: plot.py over the wanted arms, if at least two
    local name=$1 figures=$2; shift 3
    local methods=() pair
    for pair in "$@"; do want "${pair##*=}" && methods+=(--method "${pair%=*}=$R/*__$(run_name "${pair##*=}")__*"); done  # LABEL=ARM, split at the last "="
    (( ${#methods[@]} >= 4 )) || return 0
    echo "$PYTHON benchmark/plot.py ${methods[*]} --one-panel --panel-title \"$PANEL\" --figures $figures --final-window 3 --out-dir $OUT/$name --summary" >> "$COMMANDS"
    $PYTHON benchmark/plot.py "${methods[@]}" --one-panel --panel-title "$PANEL" --figures $figures --final-window 3 --out-dir "$OUT/$name" --summary
}
figure fig3_methods fig3 -- "Ours (balanced, N=5)=balanced-N5" "SAC-ft=sac-ft" "AWAC (N=5)=awac-N5" \
    "BCQ-ft (N=$BCQ_N)=bcq-ft" "SAC (from scratch)=sac"
figure fig4c_sampling "fig3 fig4a fig4b" -- "Balanced replay=balanced-N5" "Uniform replay=uniform-N5" "Online only=online-only-N5"
figure fig4d_ensemble fig3 -- "1 member=balanced-N1" "2 members=balanced-N2" "5 members=balanced-N5"
figure fig1c_q_init fig3 -- "CQL-init=balanced-N5" "FQE-init=fqe-init"
offline_plot=("$PYTHON" benchmark/plot_offline.py --datasets-csv "$OUT/datasets.csv" --out "$OUT/cql_offline"
    --run "Hopper replay 30k (SAC replay)=$R/hopper-replay__cql-pretrain__seed1" --dataset "Hopper replay 30k (SAC replay)=$REPLAY"
    --run "Hopper random 100k=$R/hopper-random__cql-pretrain__seed1" --dataset "Hopper random 100k=$RANDOM_DATA")
if [[ -d $R/hopper-replay__cql-pretrain__seed1 && -d $R/hopper-random__cql-pretrain__seed1 ]]; then
    echo "${offline_plot[*]}" >> "$COMMANDS"
    "${offline_plot[@]}"
fi
echo "results in $OUT"
