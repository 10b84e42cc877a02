#!/usr/bin/env bash
# benchmark/ablations.sh: the paper's ablations at full scale, for GPU machines (same options and modes as paper.sh).
#
# Studies (each over {halfcheetah,hopper,walker2d} x {random,medium,medium-replay,medium-expert} x seeds 0..3 unless
# narrowed with --envs/--datasets/--seeds); every arm is balanced_finetune.py started from the N=5 CQL checkpoint:
#   fig4c  replay scheme:      --sampling balanced | uniform | online-only          (N=5, CQL-initialised Q)
#   fig4d  ensemble size:      --n-ensemble 1 | 2 | 5  (first N members of the N=5 checkpoint; balanced replay)
#   fig1c  Q initialisation:   --q-init cql | fqe  (fqe.py evaluates the CQL policy first; FIG1C_N, FIG1C_SAMPLING)
# Runs are named by configuration, OUT_DIR/<task>__<sampling>-N<N>-<q-init>__seed<seed>, so an arm shared by two
# studies (balanced-N5-cql is in all three) runs once.
#
# Stages; each starts when the previous one has finished without error:
#   0 download   each D4RL file (Minari dataset) once
#   1 pretrain   cql_pretrain.py --n-ensemble 5 (skip with --skip-pretrain to reuse paper.sh's checkpoints)
#   2 fine-tune  every CQL-initialised arm, and fqe.py for fig1c
#   3 fine-tune  the FQE-initialised arm of fig1c
#
# Usage (all commands run in the repository root; relative paths are relative to it):
#   benchmark/ablations.sh --dry-run
#   benchmark/ablations.sh --studies fig4c --envs walker2d --workers 4
#   benchmark/ablations.sh --slurm slurm/ablations.sbatch --skip-pretrain   then: bash slurm/ablations_submit.sh
# Options: as paper.sh (--suite d4rl|minari --envs --datasets --seeds --python --out-dir --checkpoint-dir --workers
# --skip-pretrain --dry-run --slurm FILE), with --studies LIST (STUDIES, default fig4c,fig4d,fig1c) in place of --methods.
# Plot afterwards, e.g. Fig. 4c for walker2d:
#   python benchmark/plot.py --method "Balanced replay=runs/walker2d-*__balanced-N5-cql__*" \
#       --method "Uniform replay=runs/walker2d-*__uniform-N5-cql__*" \
#       --method "Online only=runs/walker2d-*__online-only-N5-cql__*" --out-dir benchmark/results/fig4c --summary
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/paper.sh"   # options, job list, --dry-run / --slurm / local runner

FIG1C_N=${FIG1C_N:-5}                    # ensemble size of both fig1c arms (1 = a single SAC agent)
FIG1C_SAMPLING=${FIG1C_SAMPLING:-balanced}

STAGE_TITLE[1]="CQL pretraining"
STAGE_TITLE[2]="fine-tuning from CQL critics, and FQE"
STAGE_TITLE[3]="fine-tuning from FQE critics"

# add_finetune_job STAGE TASK SEED SAMPLING N Q_INIT [EXTRA ARGS...]: one balanced_finetune.py arm.
add_finetune_job() {
    local stage=$1 task=$2 seed=$3 sampling=$4 n=$5 q_init=$6; shift 6
    local tag; tag=$(tag_of "$task")
    local name="${tag}__${sampling}-N${n}-${q_init}__seed$seed"
    add_job "$stage" "$name" "$PYTHON" balanced_finetune.py --env-id "$task" \
        --cql-checkpoint "$(cql_checkpoint "$task" "$seed")" --n-ensemble "$n" --sampling "$sampling" --q-init "$q_init" \
        "$@" --online-steps "$ONLINE_STEPS" --seed "$seed" \
        --checkpoint "$CKPT_DIR/${sampling}-N${n}-${q_init}_${tag}_seed$seed.pt" --run-dir "$OUT_DIR/$name"
}

build_ablation_grid() {
    local study env ds seed task tag sampling n fqe
    for study in $SELECTION; do
        [[ $study =~ ^(fig4c|fig4d|fig1c)$ ]] || die "unknown study '$study' (fig4c, fig4d, fig1c)"
    done
    STAGE_TITLE[0]="download $([[ $SUITE == minari ]] && echo Minari || echo D4RL) datasets"
    add_download_jobs
    for env in $ENVS; do for ds in $DATASETS; do for seed in $SEEDS; do
        task=$(task_id "$env" "$ds") tag=$(tag_of "$(task_id "$env" "$ds")")
        add_pretrain_job "$task" "$seed"
        for study in $SELECTION; do
            case $study in
                fig4c)
                    for sampling in balanced uniform online-only; do
                        add_finetune_job 2 "$task" "$seed" "$sampling" "$N_ENSEMBLE" cql
                    done ;;
                fig4d)
                    for n in 1 2 5; do
                        add_finetune_job 2 "$task" "$seed" balanced "$n" cql
                    done ;;
                fig1c)
                    fqe="$CKPT_DIR/fqe_${tag}_seed$seed.pt"
                    add_job 2 "${tag}__fqe__seed$seed" "$PYTHON" fqe.py --env-id "$task" \
                        --policy-checkpoint "$(cql_checkpoint "$task" "$seed")" --n-ensemble "$FIG1C_N" \
                        --seed "$seed" --checkpoint "$fqe" --run-dir "$OUT_DIR/${tag}__fqe__seed$seed"
                    add_finetune_job 2 "$task" "$seed" "$FIG1C_SAMPLING" "$FIG1C_N" cql
                    add_finetune_job 3 "$task" "$seed" "$FIG1C_SAMPLING" "$FIG1C_N" fqe --fqe-checkpoint "$fqe" ;;
            esac
        done
    done; done; done
}

SELECTION=$(list "${STUDIES:-fig4c,fig4d,fig1c}")
parse_args studies "$@"
build_ablation_grid
emit_jobs
