#!/usr/bin/env bash
# benchmark/paper.sh: the paper's main comparison (Lee et al., CoRL 2021, Fig. 3) at full scale, for GPU machines.
#
# Grid: {halfcheetah,hopper,walker2d} x {random,medium,medium-replay,medium-expert} (-v2) x seeds 0..3, methods
# (--suite minari: the same grid on Minari's MuJoCo datasets, see below):
#   ours     balanced_finetune.py --n-ensemble 5 --sampling balanced  (balanced replay + pessimistic Q-ensemble)
#   sac-ft   balanced_finetune.py --n-ensemble 1 --sampling uniform   (first member of the same N=5 CQL checkpoint)
#   awac     awac.py   --n-ensemble 5   (offline phase, then online with the same update rule; --awac-lambda 1.0,
#            0.3333 on walker2d-medium-expert)
#   bcq-ft   bcq_ft.py --n-ensemble 5   (offline phase, then online with the same update rule)
#   sac      sac.py, online from scratch: one run per env and seed (it uses no dataset)
# ours and sac-ft fine-tune the checkpoint of cql_pretrain.py --n-ensemble 5, run once per task and seed.
#
# Suites (--suite, SUITE): d4rl (default) runs D4RL's -v2 files in gymnasium's -v4 envs, as the paper; minari runs
# Minari's MuJoCo datasets, mujoco/<env>/<dataset>-v0, in the -v5 envs they were collected in, scored with their own
# reference scores (not comparable with D4RL scores, see README "D4RL or Minari"). Minari publishes three levels for
# halfcheetah, hopper and walker2d (simple, medium, expert); the paper's four datasets map to them as
#   random        -> simple-v0   nearest only: Minari has no random-policy dataset; simple is a weak trained policy
#   medium        -> medium-v0
#   medium-replay -> none        (no replay-buffer dataset)
#   medium-expert -> none        (no medium + expert mixture; expert-v0, its expert half, is run as the third column)
# so --suite minari takes --datasets from {simple,medium,expert} (default: all three). Run, log and checkpoint names
# use the id with '/' as '-' (mujoco-hopper-medium-v0__ours__seed0); sac runs in the env of the first dataset of
# --datasets and is scored with that dataset's reference scores (mujoco-hopper__sac__seed0).
#
# Stages; each starts when the previous one has finished without error:
#   0 download   each D4RL file (Minari dataset) once (jobs started together would otherwise download it at once)
#   1 offline    CQL pretraining, and the jobs that need no checkpoint: AWAC, BCQ-ft, SAC
#   2 fine-tune  ours, SAC-ft (they read stage 1's CQL checkpoints)
#
# Usage (all commands run in the repository root; relative paths are relative to it):
#   benchmark/paper.sh --dry-run                      print every command, run nothing
#   benchmark/paper.sh --workers 4                    run here, 4 jobs at a time; logs in OUT_DIR/logs/NAME.log
#   benchmark/paper.sh --slurm slurm/paper.sbatch     write Slurm array jobs (one per stage), then submit them with
#                                                     bash slurm/paper_submit.sh (downloads, then sbatch with
#                                                     --dependency=afterok:<previous stage>)
#   benchmark/paper.sh --envs hopper --datasets medium,medium-replay --seeds 0,1 --methods ours,sac-ft --dry-run
# Options (lists are comma- or space-separated; the upper-case environment variables give the defaults):
#   --suite NAME         SUITE     d4rl          (or minari)
#   --envs LIST          ENVS      halfcheetah,hopper,walker2d
#   --datasets LIST      DATASETS  random,medium,medium-replay,medium-expert (minari: simple,medium,expert)
#   --seeds LIST         SEEDS     0,1,2,3
#   --methods LIST       METHODS   ours,sac-ft,awac,bcq-ft,sac
#   --python EXE         PYTHON    python
#   --out-dir DIR        OUT_DIR   runs          (TensorBoard runs: OUT_DIR/<task>__<method>__seed<seed>)
#   --checkpoint-dir DIR CKPT_DIR  checkpoints   (CQL checkpoints: CKPT_DIR/cql_<task>_seed<seed>.pt)
#                        (<task>: hopper-medium-v2, or for Minari mujoco-hopper-medium-v0)
#   --workers K          WORKERS   1             (local mode: jobs run at once)
#   --skip-pretrain      reuse existing CQL checkpoints in CKPT_DIR (no stage-1 CQL jobs)
#   --dry-run            print the commands stage by stage and exit
#   --slurm FILE         write FILE (stage 1), FILE's stem + _stage2.sbatch, one .commands file per stage
#                        (array task i runs line i+1) and FILE's stem + _submit.sh; run nothing
# Slurm resources are the #SBATCH lines written below (1 GPU, 4 CPUs, 2 days); override them at submission the
# usual way, e.g. SBATCH_PARTITION=gpu SBATCH_TIMELIMIT=12:00:00 bash slurm/paper_submit.sh. A task that reaches its
# time limit (or is preempted) gets SIGTERM 120 s before, writes a resumable checkpoint, is requeued and resumes.
# Plot afterwards: python benchmark/plot.py runs --exclude '*cql-pretrain*' --out-dir benchmark/results/paper --summary
set -euo pipefail

# Training budgets of the paper, passed explicitly so that every command states them.
OFFLINE_STEPS=1000000   # CQL / AWAC / BCQ offline gradient steps
ONLINE_STEPS=250000     # online environment steps (250 epochs of 1000)
N_ENSEMBLE=5

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# ---------------------------------------------------------------------------------------------------------------
# Machinery shared with ablations.sh (which sources this file): options, the job list, and the three ways to emit it.
# ---------------------------------------------------------------------------------------------------------------
JOB_STAGE=() JOB_NAME=() JOB_CMD=()   # the job list, in order
declare -A JOB_SEEN=()                # job names already added (a job shared by two studies runs once)
STAGE_TITLE=()                        # STAGE_TITLE[k]: what stage k does

die() { echo "error: $*" >&2; exit 1; }

usage() {  # the header comment of the script being run
    sed -n '2,/^set -euo pipefail/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'
}

list() { echo "${1//,/ }"; }  # "a,b c" -> "a b c"

# parse_args SELECT_FLAG ARGS...: the common options; SELECT_FLAG names the script's own selection option
# ("methods" here, "studies" in ablations.sh), stored in SELECTION.
parse_args() {
    local select_flag=$1; shift
    while (($#)); do
        case "$1" in  # every option but the flags takes a value: say which one is missing, not bash's "unbound variable"
            --suite|--envs|--datasets|--seeds|"--$select_flag"|--python|--out-dir|--checkpoint-dir|--workers|--slurm)
                [[ $# -ge 2 && -n $2 && $2 != --* ]] || die "$1 needs a value (see --help)" ;;
        esac
        case "$1" in
            --suite) SUITE=$2; shift 2 ;;
            --envs) ENVS=$(list "$2"); shift 2 ;;
            --datasets) DATASETS=$(list "$2"); shift 2 ;;
            --seeds) SEEDS=$(list "$2"); shift 2 ;;
            "--$select_flag") SELECTION=$(list "$2"); shift 2 ;;
            --python) PYTHON=$2; shift 2 ;;
            --out-dir) OUT_DIR=$2; shift 2 ;;
            --checkpoint-dir) CKPT_DIR=$2; shift 2 ;;
            --workers) WORKERS=$2; shift 2 ;;
            --skip-pretrain) SKIP_PRETRAIN=1; shift ;;
            --dry-run) MODE=dry-run; shift ;;
            --slurm) MODE=slurm; SLURM_FILE=$2; shift 2 ;;
            -h|--help) usage; exit 0 ;;
            *) die "unknown option $1 (see --help)" ;;
        esac
    done
    [[ $WORKERS =~ ^[1-9][0-9]*$ ]] || die "--workers must be a positive integer, got '$WORKERS'"
    for seed in $SEEDS; do [[ $seed =~ ^[0-9]+$ ]] || die "seeds must be integers, got '$seed'"; done
    for env in $ENVS; do [[ $env =~ ^(halfcheetah|hopper|walker2d)$ ]] || die "unknown env '$env'"; done
    case $SUITE in
        d4rl)
            DATASETS=${DATASETS:-random medium medium-replay medium-expert}
            for ds in $DATASETS; do
                [[ $ds =~ ^(random|medium|medium-replay|medium-expert|expert)$ ]] || die "unknown dataset '$ds'"
            done ;;
        minari)
            DATASETS=${DATASETS:-simple medium expert}
            for ds in $DATASETS; do
                case $ds in
                    simple|medium|expert) ;;
                    random) die "Minari has no random-policy MuJoCo dataset; the nearest is 'simple' (--datasets simple)" ;;
                    medium-replay|medium-expert) die "'$ds' has no Minari counterpart (Minari: simple, medium, expert)" ;;
                    *) die "unknown dataset '$ds' (Minari: simple, medium, expert)" ;;
                esac
            done ;;
        *) die "unknown suite '$SUITE' (d4rl or minari)" ;;
    esac
}

# task_id ENV DATASET: the --env-id of one dataset of the suite; tag_of TASK: its name in run, log and checkpoint
# names ('/' -> '-', so a Minari id makes one file name: mujoco/hopper/medium-v0 -> mujoco-hopper-medium-v0).
task_id() { if [[ $SUITE == minari ]]; then echo "mujoco/$1/$2-v0"; else echo "$1-$2-v2"; fi; }
tag_of() { echo "${1//\//-}"; }

# Defaults, overridable by the environment and then by the options.
SUITE=${SUITE:-d4rl}
ENVS=$(list "${ENVS:-halfcheetah,hopper,walker2d}")
DATASETS=$(list "${DATASETS:-}")   # empty: the suite's datasets (set in parse_args)
SEEDS=$(list "${SEEDS:-0,1,2,3}")
PYTHON=${PYTHON:-python}
OUT_DIR=${OUT_DIR:-runs}
CKPT_DIR=${CKPT_DIR:-checkpoints}
WORKERS=${WORKERS:-1}
SKIP_PRETRAIN=0
MODE=local
SLURM_FILE=

# add_job STAGE NAME PROGRAM ARGS...: append one command (quoted for the shell) unless NAME is already listed.
add_job() {
    local stage=$1 name=$2; shift 2
    [[ -n ${JOB_SEEN[$name]:-} ]] && return 0
    local cmd; printf -v cmd '%q ' "$@"
    JOB_SEEN[$name]=1; JOB_STAGE+=("$stage"); JOB_NAME+=("$name"); JOB_CMD+=("${cmd% }")
}

# add_download_jobs: stage 0, one download per task (the scripts' own download function; no-op when cached).
add_download_jobs() {
    local env ds py task tag fn=download_d4rl_file
    printf -v py '%q' "$PYTHON"
    [[ $SUITE == minari ]] && fn=minari_dataset
    for env in $ENVS; do for ds in $DATASETS; do
        task=$(task_id "$env" "$ds") tag=$(tag_of "$(task_id "$env" "$ds")")
        [[ -n ${JOB_SEEN[download_$tag]:-} ]] && continue
        JOB_SEEN[download_$tag]=1; JOB_STAGE+=(0); JOB_NAME+=("download_$tag")
        JOB_CMD+=("$py -c 'import cql_pretrain; cql_pretrain.$fn(\"$task\")'")
    done; done
}

# add_pretrain_job TASK SEED: stage 1, the N=5 CQL ensemble that the fine-tunes of TASK/SEED start from.
add_pretrain_job() {
    local task=$1 seed=$2 tag; tag=$(tag_of "$1")
    ((SKIP_PRETRAIN)) && return 0
    add_job 1 "${tag}__cql-pretrain__seed$seed" "$PYTHON" cql_pretrain.py --env-id "$task" \
        --n-ensemble "$N_ENSEMBLE" --offline-steps "$OFFLINE_STEPS" --seed "$seed" \
        --checkpoint "$(cql_checkpoint "$task" "$seed")" --run-dir "$OUT_DIR/${tag}__cql-pretrain__seed$seed"
}
cql_checkpoint() { echo "$CKPT_DIR/cql_$(tag_of "$1")_seed$2.pt"; }

stage_indices() { local i; for i in "${!JOB_STAGE[@]}"; do [[ ${JOB_STAGE[$i]} == "$1" ]] && echo "$i"; done; return 0; }
stages() { printf '%s\n' "${JOB_STAGE[@]}" | sort -nu; }

# Mode 1: print every command, stage by stage.
print_jobs() {
    local stage i idx
    for stage in $(stages); do
        idx=($(stage_indices "$stage"))
        echo "# stage $stage (${STAGE_TITLE[$stage]}): ${#idx[@]} commands"
        for i in "${idx[@]}"; do echo "${JOB_CMD[$i]}"; done
    done
}

# Mode 2: run here, WORKERS jobs at a time; each command is printed when it starts, its output goes to a log file.
run_one() {
    local name=$1 cmd=$2
    echo "+ $cmd"
    if eval "$cmd" >"$LOG_DIR/$name.log" 2>&1; then
        echo "done: $name"
    else
        echo "FAILED: $name (log: $LOG_DIR/$name.log)"
        return 1
    fi
}

run_jobs() {
    local stage i idx
    export LOG_DIR="$OUT_DIR/logs"
    mkdir -p "$LOG_DIR"
    export -f run_one
    for stage in $(stages); do
        idx=($(stage_indices "$stage"))
        echo "=== stage $stage (${STAGE_TITLE[$stage]}): ${#idx[@]} commands, $WORKERS at a time"
        for i in "${idx[@]}"; do printf '%s\0%s\0' "${JOB_NAME[$i]}" "${JOB_CMD[$i]}"; done |
            xargs -0 -n 2 -P "$WORKERS" bash -c 'run_one "$1" "$2"' _ ||
            die "stage $stage had failures (see $LOG_DIR); later stages were not started"
    done
}

# Mode 3: one Slurm array job per stage (array task i runs line i+1 of the stage's .commands file), and a submit
# script that downloads the datasets on the login node and chains the stages with --dependency=afterok.
write_slurm() {
    local stem=${SLURM_FILE%.sbatch} stage i idx file cmds prev=
    mkdir -p "$(dirname "$SLURM_FILE")" "$OUT_DIR/slurm-logs"
    local abs_stem; abs_stem="$(cd "$(dirname "$stem")" && pwd)/$(basename "$stem")"
    local log_dir; log_dir="$(cd "$OUT_DIR/slurm-logs" && pwd)"
    local submit="${stem}_submit.sh"
    {
        echo "#!/usr/bin/env bash"
        echo "# Written by benchmark/$(basename "$0"): submits its stages as Slurm array jobs, each after the previous"
        echo "# one succeeded. Run it on the login node (stage 0 downloads the datasets there)."
        echo "set -euo pipefail"
        echo "cd $(printf '%q' "$REPO_ROOT")"
    } >"$submit"
    for stage in $(stages); do
        idx=($(stage_indices "$stage"))
        if [[ $stage == 0 ]]; then
            { echo "# stage 0 (${STAGE_TITLE[0]})"; for i in "${idx[@]}"; do echo "${JOB_CMD[$i]}"; done; } >>"$submit"
            continue
        fi
        if [[ -z $prev ]]; then file=$SLURM_FILE; else file="${stem}_stage$stage.sbatch"; fi  # first array: FILE
        cmds="${abs_stem}_stage$stage.commands"
        for i in "${idx[@]}"; do echo "${JOB_CMD[$i]}"; done >"$cmds"
        cat >"$file" <<EOF
#!/bin/bash
# Stage $stage of benchmark/$(basename "$0") (${STAGE_TITLE[$stage]}): ${#idx[@]} commands, one per array task.
# Submit all stages in order with: bash $submit
#SBATCH --job-name=o2o-$(basename "$stem")-stage$stage
#SBATCH --array=0-$((${#idx[@]} - 1))
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=4
#SBATCH --mem=32G
#SBATCH --time=2-00:00:00
#SBATCH --output=$log_dir/%x_%A_%a.out
#SBATCH --signal=B:TERM@120
#SBATCH --requeue
set -euo pipefail
cd $(printf '%q' "$REPO_ROOT")
cmd=\$(sed -n "\$((SLURM_ARRAY_TASK_ID+1))p" $(printf '%q' "$cmds"))
# Time limit or preemption: Slurm sends this shell SIGTERM 120 s before (--signal), the trap passes it on, the script
# finishes its update, writes a resumable checkpoint and exits 75; the task is then requeued and goes on with --resume.
requeued=$(printf '%q' "$log_dir")/.requeued_\${SLURM_ARRAY_JOB_ID}_\${SLURM_ARRAY_TASK_ID}
if [[ -e \$requeued ]]; then cmd="\$cmd --resume"; fi
echo "+ \$cmd"
eval "exec \$cmd" &
pid=\$!
trap 'kill -TERM "\$pid" 2>/dev/null || true' TERM
rc=0
wait "\$pid" || rc=\$?
while kill -0 "\$pid" 2>/dev/null; do rc=0; wait "\$pid" || rc=\$?; done  # a signal interrupts wait, not the job
if [[ \$rc -eq 75 ]]; then
    touch "\$requeued"
    scontrol requeue "\${SLURM_ARRAY_JOB_ID}_\${SLURM_ARRAY_TASK_ID}"
fi
exit \$rc
EOF
        {
            echo "# stage $stage (${STAGE_TITLE[$stage]}): ${#idx[@]} array tasks"
            echo "jid$stage=\$(sbatch --parsable ${prev:+--dependency=afterok:\$jid$prev }$(printf '%q' "$file"))"
            echo "jid$stage=\${jid$stage%%;*}"
            echo "echo \"stage $stage: job \$jid$stage\""
        } >>"$submit"
        prev=$stage
        echo "wrote $file ($cmds: ${#idx[@]} commands)"
    done
    chmod +x "$submit"
    echo "wrote $submit; submit with: bash $submit"
}

emit_jobs() {  # run, print or write the job list, as the options asked
    ((${#JOB_CMD[@]})) || die "nothing to do for this selection"
    cd "$REPO_ROOT"
    case $MODE in
        dry-run) print_jobs ;;
        slurm) write_slurm ;;
        local) run_jobs ;;
    esac
}

# ---------------------------------------------------------------------------------------------------------------
# The paper's grid.
# ---------------------------------------------------------------------------------------------------------------
STAGE_TITLE[1]="CQL pretraining, AWAC, BCQ-ft, SAC"
STAGE_TITLE[2]="fine-tuning from CQL: ours, SAC-ft"

declare -A GYM_ID=([halfcheetah]=HalfCheetah-v4 [hopper]=Hopper-v4 [walker2d]=Walker2d-v4)

build_paper_grid() {
    local env ds seed method task tag run sac_env sac_name
    for method in $SELECTION; do
        [[ $method =~ ^(ours|sac-ft|awac|bcq-ft|sac)$ ]] || die "unknown method '$method' (ours, sac-ft, awac, bcq-ft, sac)"
    done
    if [[ $SUITE == minari ]]; then
        STAGE_TITLE[0]="download Minari datasets"
        # sac needs no data, but a Minari id gives it the env (-v5) and the reference scores of the other methods
        add_download_jobs
    else
        STAGE_TITLE[0]="download D4RL datasets"
        [[ " $SELECTION " =~ \ (ours|sac-ft|awac|bcq-ft)\  ]] && add_download_jobs
    fi
    for method in $SELECTION; do
        for env in $ENVS; do
            for seed in $SEEDS; do
                if [[ $method == sac ]]; then  # online from scratch: per env, not per dataset
                    sac_env=${GYM_ID[$env]} sac_name=$env
                    if [[ $SUITE == minari ]]; then
                        sac_env=$(task_id "$env" "${DATASETS%% *}") sac_name="mujoco-$env"
                    fi
                    add_job 1 "${sac_name}__sac__seed$seed" "$PYTHON" sac.py --env-id "$sac_env" \
                        --seed "$seed" --total-timesteps "$ONLINE_STEPS" --run-dir "$OUT_DIR/${sac_name}__sac__seed$seed"
                    continue
                fi
                for ds in $DATASETS; do
                    task=$(task_id "$env" "$ds")
                    tag=$(tag_of "$task") run="$OUT_DIR/$(tag_of "$task")__${method}__seed$seed"
                    case $method in
                        ours)
                            add_pretrain_job "$task" "$seed"
                            add_job 2 "${tag}__ours__seed$seed" "$PYTHON" balanced_finetune.py --env-id "$task" \
                                --cql-checkpoint "$(cql_checkpoint "$task" "$seed")" --n-ensemble "$N_ENSEMBLE" \
                                --sampling balanced --online-steps "$ONLINE_STEPS" --seed "$seed" \
                                --checkpoint "$CKPT_DIR/balanced_${tag}_seed$seed.pt" --run-dir "$run" ;;
                        sac-ft)
                            add_pretrain_job "$task" "$seed"
                            add_job 2 "${tag}__sac-ft__seed$seed" "$PYTHON" balanced_finetune.py --env-id "$task" \
                                --cql-checkpoint "$(cql_checkpoint "$task" "$seed")" --n-ensemble 1 \
                                --sampling uniform --online-steps "$ONLINE_STEPS" --seed "$seed" \
                                --checkpoint "$CKPT_DIR/sacft_${tag}_seed$seed.pt" --run-dir "$run" ;;
                        awac)  # lambda 1.0, except 0.3333 on walker2d-medium-expert (as CORL)
                            local lambda=1.0; [[ $task == walker2d-medium-expert-v2 ]] && lambda=0.3333
                            add_job 1 "${tag}__awac__seed$seed" "$PYTHON" awac.py --env-id "$task" \
                                --n-ensemble "$N_ENSEMBLE" --awac-lambda "$lambda" --offline-steps "$OFFLINE_STEPS" \
                                --online-steps "$ONLINE_STEPS" --seed "$seed" --run-dir "$run" ;;
                        bcq-ft)
                            add_job 1 "${tag}__bcq-ft__seed$seed" "$PYTHON" bcq_ft.py --env-id "$task" \
                                --n-ensemble "$N_ENSEMBLE" --offline-steps "$OFFLINE_STEPS" \
                                --online-steps "$ONLINE_STEPS" --seed "$seed" --run-dir "$run" ;;
                    esac
                done
            done
        done
    done
}

main() {
    SELECTION=$(list "${METHODS:-ours,sac-ft,awac,bcq-ft,sac}")
    parse_args methods "$@"
    build_paper_grid
    emit_jobs
}

# Run only when executed, not when sourced by ablations.sh.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi
