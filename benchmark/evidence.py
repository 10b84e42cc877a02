"""The paper's comparisons (Lee et al., CoRL 2021, Fig. 3, 4c, 4d, 1c) on D4RL-style Hopper datasets and
walker2d-medium-expert, at CPU scale.

The datasets are made by benchmark/make_datasets.py with D4RL's recipes (medium, medium-replay, medium-expert of one
SAC run per environment). Every setting below was fixed before any fine-tuning result was seen and is the same for every arm.

Reductions from the paper (paper value in brackets):
  * Hopper-v4's medium, medium-replay and medium-expert and Walker2d-v4's medium-expert [halfcheetah, hopper,
    walker2d x random, medium, medium-replay, medium-expert]; datasets of 50k-200k transitions [1M-2M];
  * hidden layers of 128 units for every actor and critic, BCQ's VAE, perturbation net and critics included
    [256; BCQ 750-750 / 400-300]; the density-ratio network keeps its 256 units [256]. At 128 units sac.py from
    scratch reaches the width rule's 25 normalized on Hopper within the online budget (pilot: benchmark/results/
    evidence/pilot_width.csv); at 256 every N=5 arm would cost 2.5x as much;
  * CQL pretraining 30k gradient steps [1M], with a behaviour-cloning warm-up scaled alike, 1.2k [40k], N=5 kept;
    one CQL ensemble (seed 1) per dataset shared by all fine-tuning seeds [one per seed], so seeds differ in the
    online phase only (two more per dataset, seeds 2 and 3, for the independent-pretraining check: block below);
  * 50k online env steps [250k], in epochs of 1000 env steps with 5x updates in the first epoch, as the paper;
  * AWAC and BCQ-ft: 30k offline steps [1M] (the CQL budget) then 50k online; AWAC N=5 as the paper; BCQ-ft N=1
    [5] (at N=5 its update costs 5x AWAC's); FQE 100k steps [fqe.py default: 250k]: at 20k, the first choice, its
    estimate of the CQL policy's value (132) was still rising by ~30 per 5k steps toward the policy's Monte-Carlo
    return (231), so FQE-init would not have been an evaluation of the policy (raised before any fine-tuning run);
  * 3 seeds [4] (ours and SAC-ft 7, AWAC and BCQ-ft 5 in the independent-pretraining check); evaluation: 10
    deterministic episodes at the start of every epoch (and sac.py every 1000 steps);
  * on medium-replay and medium-expert every arm, those beyond ours, SAC-ft and SAC added after the first results
    (AWAC, BCQ-ft, uniform and online-only in block 3 below; N=2, N=1 and FQE-init in block 6) [every arm on every
    dataset]; on walker2d-medium-expert the arms of Fig. 3.

    python benchmark/evidence.py                # run (or continue) the campaign, 2 jobs at a time
    python benchmark/evidence.py --dry-run      # the commands, and which are finished
    python benchmark/evidence.py --report       # figures, curves.csv, summary.csv, claims.csv from the finished runs
                                                # (and README.md's study tables)

The paper's claims (a)-(e) are judged in claims.csv by the rule above CLAIMS (fixed before any fine-tuning result).

Restartable: a finished job leaves status/<job>.done in the output folder (committed with the runs) and is
skipped; an interrupted job continues from its checkpoint with --resume; one that has no checkpoint starts over,
after its partial TensorBoard folder is removed. The CQL and FQE checkpoints are written into the output folder
(pretrained/) so that a later sitting on a fresh checkout finds them; the datasets are regenerated bit for bit
by make_datasets.py from the committed behaviour policies.
"""

import argparse
import csv
import fcntl
import functools
import hashlib
import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PY = "python"  # as written in commands.txt; run with the interpreter that runs this script
ENV_ID = "Hopper-v4"
WIDTH = 128
CQL_STEPS, BC_STEPS, FQE_STEPS = 30_000, 1_200, 100_000
OFFLINE_STEPS, ONLINE_STEPS = 30_000, 50_000
SEEDS = (1, 2, 3)
EVAL_EPISODES = 10
DATASETS = ("medium", "medium-replay", "medium-expert")
FULL_ARMS_ON = "medium"
README_MARKERS = ("<!-- study-results -->", "<!-- /study-results -->")
POLL_SECONDS = 5
# arm -> (balanced_finetune.py flags) for the arms that fine-tune the CQL ensemble
FINETUNE_ARMS = {
    "balanced-N5": ("--n-ensemble", 5, "--sampling", "balanced"),
    "sac-ft": ("--n-ensemble", 1, "--sampling", "uniform"),
    "uniform-N5": ("--n-ensemble", 5, "--sampling", "uniform"),
    "online-only-N5": ("--n-ensemble", 5, "--sampling", "online-only"),
    "balanced-N2": ("--n-ensemble", 2, "--sampling", "balanced"),
    "balanced-N1": ("--n-ensemble", 1, "--sampling", "balanced"),
    "fqe-init-N5": ("--n-ensemble", 5, "--sampling", "balanced", "--q-init", "fqe"),
}
ARMS_ELSEWHERE = ("balanced-N5", "sac-ft")

# ---- The first online epoch on hopper-medium (fixed 2026-12-01, before any of these jobs ran) ----
# 1. Diagnosis at the committed 30k-step CQL ensemble: ours (balanced, N=5) for 3 epochs (3000 env steps) as is, with
#    frozen critics (--q-lr 0: only the actor and alpha learn) and with a frozen actor (--policy-lr 0: only the
#    critics and alpha learn), seeds 1-3, a checkpoint kept after every epoch, then the critics' Qbar against the
#    Monte-Carlo return of the ensemble policy at each (benchmark/diagnose.py --policy).
# 2. Dose-response of CQL depth: the committed run (seed 1, every setting as CQL_STEPS' run) continued to 150k steps,
#    kept at 30k, 60k, 100k, 150k; at each depth the CQL gap (losses/cql / alpha_cql = logsumexp Q - Q(data), logged
#    by cql_pretrain.py), Qbar vs Monte-Carlo of the ensemble policy, and a probe: ours (balanced, N=5) and SAC-ft,
#    seeds 1-3, 3 epochs, every other setting as the full runs.
#    Reading, pre-registered: kept = score after the first epoch / score at 0, per seed. The depth hypothesis is
#    SUPPORTED if ours' kept at the deepest checkpoint exceeds its kept at 30k by more than MARGIN_SE standard errors
#    (the claims' rule) and its mean is at least KEEP_SUPPORTED; PARTLY SUPPORTED if it exceeds it but the mean stays
#    below KEEP_SUPPORTED (depth reduces the fall without removing it); REFUTED if it does not exceed it.
DEPTHS = (30_000, 60_000, 100_000, 150_000)
PROBE_STEPS = 3_000  # 3 epochs of 1000 env steps (5000 + 1000 + 1000 updates)
PROBE_ARMS = ("balanced-N5", "sac-ft")
KEEP_SUPPORTED = 0.8
DIAGNOSIS_VARIANTS = {"frozen-critics": ("--q-lr", 0), "frozen-actor": ("--policy-lr", 0)}
# 3. Every arm of claims (a) and (b) on every dataset (3 seeds, the settings above): AWAC and BCQ-ft on medium-replay
#    and medium-expert, uniform and online-only replay on both; queued after 1-2.
ARMS_ADDED_ELSEWHERE = ("uniform-N5", "online-only-N5", "awac-N5", "bcq-ft-N1")
# 4. (fixed 2026-12-01, before the deepest checkpoint existed) Full runs at the deepest checkpoint (DEPTHS[-1]): ours,
#    uniform, online-only and SAC-ft, seeds 1-3, every setting as the 30k full runs (ONLINE_STEPS, evaluations,
#    checkpoints), in depth/full/. Claim (b) on hopper-medium at that depth is judged by the same two rules as at 30k
#    (CLAIMS' 2-SE rule on drop, the interval rule on drop below) over these runs, reported beside 30k's.
DEEP_FULL_ARMS = ("balanced-N5", "uniform-N5", "online-only-N5", "sac-ft")
# 5. (fixed 2026-12-01, before the depth verdict and before any of these jobs ran) The second axis: CQL's weight
#    alpha_cql (cql_pretrain.py --alpha-cql; BASE_ALPHA_CQL in every run above). Why this one rather than critic width:
#    the depth test logged that more CQL steps leave the conservative gap where it was (CQL gap 2.42 at 30k, 2.47 at
#    60k; Qbar - Monte-Carlo -36 and -30), and the critic-side test puts the fall on critics that over-value the
#    actions the actor moves to once CQL's penalty is dropped online; alpha_cql is the setting that sets that gap,
#    width is not (and at 256 units every run would cost 2.5x). Two fresh N=5 CQL runs on hopper-medium, every
#    setting as the committed 30k run except --alpha-cql (ALPHA_LEVELS), each with Qbar vs Monte-Carlo of its
#    ensemble policy and the depth test's probes (ours and SAC-ft, seeds 1-3, 3 epochs), in alpha/. Reading, as for
#    depth: SUPPORTED if ours' kept at the highest alpha exceeds its kept at BASE_ALPHA_CQL (the committed ensemble's
#    30k probes) by more than MARGIN_SE SE and its mean is at least KEEP_SUPPORTED; PARTLY SUPPORTED if it exceeds it
#    but stays below; REFUTED otherwise. Run whatever the depth verdict, so that both answers arrive together.
BASE_ALPHA_CQL = 5.0
ALPHA_LEVELS = (10.0, 20.0)
# 6. (fixed 2026-12-01, before any of these jobs ran) The arms of claims (c) and (d) on medium-replay and
#    medium-expert too, so that every claim has every comparison on every Hopper dataset: an FQE run of each dataset's
#    CQL policy (every setting as hopper-medium's), then N=2, N=1 and FQE-init, seeds 1-3, every setting as on
#    hopper-medium. Queued after 3 (so that every Hopper claim has its comparisons), before the independent
#    pretraining.
ARMS_ADDED_LAST = ("balanced-N2", "balanced-N1", "fqe-init-N5")

# ---- Interval estimates (Agarwal et al., "Deep RL at the Edge of the Statistical Precipice", NeurIPS 2021), fixed
# 2026-12-01 before any run they will judge. The pre-registered "final" metric and its 2-SE rule (CLAIMS) stay and
# are reported beside these:
#  * late = the mean score over the last 40% of the online steps (every evaluation from 20k to 50k);
#    auc = the area under the whole curve (trapezoid, 0 to 50k) / 50k, in normalized-score units;
#  * per dataset and across the three Hopper datasets: the interquartile mean (IQM) over runs with its 95%
#    stratified bootstrap interval (rliable, INTERVAL_RESAMPLES resamples, seed 0), and the probability of
#    improvement P(first > second) with its interval;
#  * verdict on intervals: a comparison holds when the 95% interval of IQM(first) - IQM(second) (runs resampled
#    within each arm and dataset) lies above 0, is reversed when it lies below 0, else a tie; a claim's verdict from
#    its comparisons as for CLAIMS. Runs of the shared seed-1 CQL ensemble are labelled as such wherever they appear.
INTERVAL_METRICS = ("late", "auc")
LATE_FROM = 20_000
INTERVAL_RESAMPLES = 10_000
INTERVAL_CONFIDENCE = 0.95

# ---- Independent pretraining (seeds that each pretrain), fixed 2026-12-01 before any of these runs started ----
# The paper's seeds each pretrain their own CQL ensemble; the runs above share one per dataset (seed 1), so their
# spread is the online phase's alone. Five own pretrainings per arm would cost 10 more N=5 CQL runs (~77 min of one
# core each at CQL_STEPS, ~6.5 h at 150k), so the issue's fallback, said plainly: 3 independent pretrainings x 2
# fine-tuning seeds.
#  * Per dataset, two more CQL ensembles, seeds 2 and 3, every setting as the shared seed-1 run (CQL_STEPS: the depth
#    of the shared ensemble, so the three are exchangeable draws; the depth study is judged on hopper-medium's own
#    continuation, and 150k for six ensembles, ~40 h of one core, is beyond the budget).
#  * Ours (balanced, N=5) and SAC-ft fine-tuned from each: pretraining 1 (the shared one) with its runs of seeds 1, 2
#    (chosen by number: seed 3 is left out of this set only so that every pretraining has two runs), pretraining 2
#    with seeds 4, 5, pretraining 3 with seeds 6, 7 (a seed of its own for every run).
#  * AWAC and BCQ-ft pretrain inside every run: seeds 4 and 5 added to 1-3, five pretrainings each.
# Reading, beside (not instead of) the verdicts above, which stay as they are: on each dataset and across the three,
# the interval rule above (holds when the 95% interval of IQM(first) - IQM(second) lies above 0, reversed below, else
# tie; late, auc and final; drop for (b)) on these sets, with a two-stage bootstrap that makes the pretraining the
# unit: each resample draws pretrainings with replacement within each arm and dataset, then runs with replacement
# within each drawn pretraining (benchmark/intervals.py, INTERVAL_RESAMPLES, seed 0); the point estimate is the IQM
# of all the set's runs. Comparisons: (a) ours against SAC-ft, AWAC, BCQ-ft; (b) ours against SAC-ft (the only (b)
# baseline in the set). Labelled "independent pretraining" wherever shown.
PRETRAIN_SEEDS = (2, 3)
FINETUNE_SEEDS_OF = {1: (1, 2), 2: (4, 5), 3: (6, 7)}  # pretraining seed -> fine-tuning seeds of the set
INDEPENDENT_CQL_ARMS = ("balanced-N5", "sac-ft")
OWN_PRETRAINING_ARMS = ("awac-N5", "bcq-ft-N1")
OWN_PRETRAINING_SEEDS = (1, 2, 3, 4, 5)
INDEPENDENT_CLAIMS = [
    (
        "(a) ours ends above every baseline",
        ("late", "auc", "final"),
        [("balanced-N5", a) for a in ("sac-ft", "awac-N5", "bcq-ft-N1")],
    ),
    ("(b) no early collapse with balanced replay", ("drop",), [("balanced-N5", "sac-ft")]),
]
INDEPENDENT_ORDER = ("medium-replay", "medium", "medium-expert")  # the headline success first (queue: see jobs())

# ---- walker2d-medium-expert, the README's first command (fixed 2026-12-01, before any of its jobs ran) ----
# The Hopper study's settings and verdict rules on Walker2d-v4: the datasets by make_datasets.py --env walker2d (the
# behaviour run, the medium and expert rollouts, the medium-expert mixture; statistics in WALKER/datasets.csv); one
# N=5 CQL ensemble (seed 1) at CQL_STEPS: the first-epoch study's depth verdict needs its 150k stage, which ends after
# these datasets are ready, so the Hopper depth is kept (as the issue allows); then ours (balanced, N=5), SAC-ft, AWAC
# (N=5), BCQ-ft (N=1) and SAC from scratch (Walker2d-v4), seeds 1-3, ONLINE_STEPS; claims (a), (b) as far as these
# arms go (SAC-ft), (e); the first-epoch drop as for Hopper. One setting differs, as this repository documents for
# this task (awac.py's docstring, after CORL): AWAC's lambda = 1/3 on walker2d-medium-expert (1.0 on Hopper). Queued
# last (the datasets right after the first-epoch study): first the first-epoch and independent-pretraining questions,
# which this study builds on. The order of the queue is not a setting; it was changed once, before any of these jobs
# ran (2026-12-01 08:30 UTC), from "after the missing Hopper arms" to last, and again on 2026-12-02, before any of
# them ran, to between the independent-pretraining sets of hopper-medium and hopper-medium-expert (see jobs()).
WALKER = "walker2d-medium-expert"
WALKER_ENV_ID = "Walker2d-v4"
WALKER_ARMS = ("balanced-N5", "sac-ft", "awac-N5", "bcq-ft-N1", "sac")
WALKER_AWAC_FLAGS = ("--awac-lambda", 0.3333)
# (fixed 2026-12-02 14:07 UTC, before any of these jobs ran; seen by then: ours' and SAC-ft's seed-1 runs end at 10.8
# and 18.2, and both fall to about 0 in the first online epoch on seeds 1 and 2) The critic-side test of hopper-medium
# on walker2d-medium-expert, to tell whether its fall has the same cause: ours (balanced, N=5) for PROBE_STEPS as is,
# with frozen critics and with a frozen actor (DIAGNOSIS_VARIANTS), seeds 1-3, a checkpoint after every epoch; then
# Qbar against the Monte-Carlo return of each of those policies (benchmark/diagnose.py --policy) and what ours' and
# SAC-ft's full runs logged per epoch (--runs: alpha, Qbar, offline fraction). Reading, fixed now: the same cause as
# on hopper-medium if the frozen-critics runs score higher than the as-is runs after the first epoch by the claims'
# rule (MARGIN_SE standard errors of the difference of seed means) and the as-is critics over-estimate the policy
# after it (mean Qbar - Monte-Carlo > 0) while they under-estimate the CQL policy before it (< 0). Queued right after
# the Walker2d runs, before hopper-medium-expert's set.
WALKER_DIAGNOSIS_VARIANTS = {"as-is": (), **DIAGNOSIS_VARIANTS}


@dataclass
class Job:
    name: str
    command: list
    checkpoint: Path | None = None  # --resume is added when this exists and the job is not finished
    run_dir: Path | None = None  # removed before a fresh start (no checkpoint): no half-written curves
    deps: list = field(default_factory=list)
    outputs: list = field(default_factory=list)  # files (not committed) whose presence means done, instead of a marker
    init_from: Path | None = None  # a continuation: its checkpoint starts as a copy of this file (then --resume)


def dataset_file(dataset: str) -> str:
    """A Hopper dataset by its short name (medium, ...), or a task by its full name (walker2d-medium-expert)."""
    return f"data/cpu_d4rl/{task_of(dataset).replace('-', '_')}.hdf5"


def jobs(out: Path) -> list[Job]:
    """Every job of the campaign in priority order (the first ready job runs first)."""
    runs, pre, ck = out / "runs", out / "pretrained", Path("checkpoints/evidence")
    cql = {d: cql_checkpoint(out, d, 1) for d in DATASETS}
    fqe = pre / "fqe_hopper-medium_N5.pt"
    data_args = lambda d: ["--env-id", ENV_ID, "--dataset-path", dataset_file(d), "--no-cuda"]
    # the datasets are not committed: a fresh checkout regenerates them from the committed behaviour policies
    out_jobs = [
        Job(
            "data_all",
            [PY, "benchmark/make_datasets.py", "--env", "hopper", "--csv", str(out / "datasets.csv")],
            outputs=[Path(dataset_file(d)) for d in ("medium", "medium-replay", "expert", "medium-expert")],
        ),
        Job(
            "data_medium",
            [PY, "benchmark/make_datasets.py", "--env", "hopper", "--datasets", "medium"],
            outputs=[Path(dataset_file("medium"))],
        ),
    ]
    sac_jobs = []
    for seed in SEEDS:
        run_dir = runs / f"hopper__sac__seed{seed}"
        sac_jobs.append(
            Job(
                job_name("", "sac", seed),
                sac_command(ENV_ID, seed, ck / f"sac_s{seed}.pt", run_dir),
                ck / f"sac_s{seed}.pt",
                run_dir,
            )
        )

    def cql_job(d: str, seed: int) -> Job:
        name, checkpoint = f"cql_{d}" + ("" if seed == 1 else f"_seed{seed}"), cql_checkpoint(out, d, seed)
        run_dir = runs / f"hopper-{d}__cql-pretrain__seed{seed}"
        command = cql_command(data_args(d), checkpoint, run_dir, seed)
        return Job(name, command, checkpoint, run_dir, ["data_medium" if d == "medium" else "data_all"])

    cql_jobs = [cql_job(d, 1) for d in DATASETS]
    out_jobs.append(cql_jobs[0])

    def fqe_job(d: str) -> Job:
        checkpoint, run_dir = pre / f"fqe_hopper-{d}_N5.pt", runs / f"hopper-{d}__fqe__seed1"
        command = [PY, "fqe.py", *data_args(d), "--policy-checkpoint", cql[d], "--checkpoint", checkpoint]
        command += ["--n-ensemble", 5, "--steps", FQE_STEPS, "--eval-every", 5000, "--eval-episodes", EVAL_EPISODES]
        return Job(f"fqe_{d}", [*command, "--run-dir", run_dir, "--seed", 1], checkpoint, run_dir, [f"cql_{d}"])

    out_jobs.append(fqe_job("medium"))
    # every claim is tested on hopper medium: its arms (3 seeds) come first, the other datasets' CQL after them
    for d in DATASETS:
        if d != FULL_ARMS_ON:
            out_jobs.append(cql_jobs[DATASETS.index(d)])
        for seed in SEEDS:
            if d == FULL_ARMS_ON:
                out_jobs.append(sac_jobs[seed - 1])
            arms = FINETUNE_ARMS if d == FULL_ARMS_ON else ARMS_ELSEWHERE
            for arm in arms:
                name, run_dir = job_name(d, arm, seed), runs / f"hopper-{d}__{arm}__seed{seed}"
                extra = ("--fqe-checkpoint", fqe) if arm.startswith("fqe-init") else ()
                deps = [f"cql_{d}"] + (["fqe_medium"] if extra else [])
                out_jobs.append(finetune_job(name, data_args(d), cql[d], arm, seed, ck / f"{name}.pt", run_dir, deps, extra))
            if d == FULL_ARMS_ON:
                for arm in ("awac-N5", "bcq-ft-N1"):
                    name, run_dir = job_name(d, arm, seed), runs / f"hopper-{d}__{arm}__seed{seed}"
                    command = offline_online_command(arm, data_args(d), seed, ck / f"{name}.pt", run_dir)
                    out_jobs.append(Job(name, command, ck / f"{name}.pt", run_dir, ["data_medium"]))
    out_jobs += first_epoch_jobs(out, data_args, cql)
    # 3. the arms of claims (a) and (b) missing on medium-replay and medium-expert
    for d in DATASETS:
        if d == FULL_ARMS_ON:
            continue
        for seed in SEEDS:
            for arm in ARMS_ADDED_ELSEWHERE:
                name, run_dir = job_name(d, arm, seed), runs / f"hopper-{d}__{arm}__seed{seed}"
                if arm in FINETUNE_ARMS:
                    deps = [f"cql_{d}", "data_all"]
                    job = finetune_job(name, data_args(d), cql[d], arm, seed, ck / f"{name}.pt", run_dir, deps)
                else:
                    command = offline_online_command(arm, data_args(d), seed, ck / f"{name}.pt", run_dir)
                    job = Job(name, command, ck / f"{name}.pt", run_dir, ["data_all"])
                out_jobs.append(job)
    # 6. the arms of claims (c) and (d) on medium-replay and medium-expert: FQE of each dataset's CQL policy, then
    #    N=2, N=1 and FQE-init, 3 seeds, as on hopper-medium
    for d in DATASETS:
        if d == FULL_ARMS_ON:
            continue
        out_jobs.append(fqe_job(d))
        for seed in SEEDS:
            for arm in ARMS_ADDED_LAST:
                name, run_dir = job_name(d, arm, seed), runs / f"hopper-{d}__{arm}__seed{seed}"
                extra = ("--fqe-checkpoint", pre / f"fqe_hopper-{d}_N5.pt") if arm.startswith("fqe-init") else ()
                deps = [f"cql_{d}"] + ([f"fqe_{d}"] if extra else [])
                out_jobs.append(finetune_job(name, data_args(d), cql[d], arm, seed, ck / f"{name}.pt", run_dir, deps, extra))
    # order revised 2026-12-02, before any moved job ran but medium-replay's AWAC and BCQ-ft seed 4 (a slower CPU:
    # CQL 2.8 steps/s, not 4.5-5): the CQL-based sets of medium-replay and medium, then Walker2d, then medium-expert's
    # set; AWAC's and BCQ-ft's seeds 4 and 5 last, since each of their runs already has a pretraining of its own
    cql_based, own_pretraining = independent_pretraining_jobs(out, data_args, cql_job)
    out_jobs += cql_based["medium-replay"] + cql_based["medium"] + walker_jobs(out) + walker_diagnosis_jobs(out)
    out_jobs += cql_based["medium-expert"]
    out_jobs += own_pretraining
    for job in out_jobs:
        job.command = [str(part) for part in job.command]
    return out_jobs


def cql_command(data_args: list, checkpoint: Path, run_dir: Path, seed: int, steps: int = CQL_STEPS, eval_every: int = 2500):
    """An N=5 CQL pretraining run (cql_pretrain.py) with the study's settings."""
    command = [PY, "cql_pretrain.py", *data_args, "--n-ensemble", 5, "--hidden-dim", WIDTH, "--offline-steps", steps]
    command += ["--bc-steps", BC_STEPS, "--eval-every", eval_every, "--eval-episodes", EVAL_EPISODES]
    return command + ["--checkpoint", checkpoint, "--checkpoint-every", 2500, "--run-dir", run_dir, "--seed", seed]


def sac_command(env_id: str, seed: int, checkpoint: Path, run_dir: Path) -> list:
    """SAC from scratch (sac.py) for ONLINE_STEPS with the study's settings."""
    command = [PY, "sac.py", "--env-id", env_id, "--seed", seed, "--total-timesteps", ONLINE_STEPS, "--hidden-dim", WIDTH]
    command += ["--eval-every", 1000, "--eval-episodes", EVAL_EPISODES, "--checkpoint", checkpoint]
    return command + ["--checkpoint-every", 5000, "--run-dir", run_dir, "--no-cuda"]


def cql_checkpoint(out: Path, dataset: str, seed: int) -> Path:
    """The N=5 CQL ensemble of one dataset and pretraining seed (seed 1: the shared one)."""
    suffix = "" if seed == 1 else f"_seed{seed}"
    return out / "pretrained" / f"cql_hopper-{dataset}_N5{suffix}.pt"


def finetune_job(
    name: str,
    data_args: list,
    cql_checkpoint: Path,
    arm: str,
    seed: int,
    checkpoint: Path,
    run_dir: Path,
    deps: list,
    extra=(),
) -> Job:
    """A full fine-tuning run (ONLINE_STEPS) of one arm of balanced_finetune.py from a CQL ensemble."""
    command = [
        PY,
        "balanced_finetune.py",
        *data_args,
        "--cql-checkpoint",
        cql_checkpoint,
        *FINETUNE_ARMS[arm],
        *extra,
        "--online-steps",
        ONLINE_STEPS,
        "--eval-episodes",
        EVAL_EPISODES,
        "--seed",
        seed,
        "--checkpoint",
        checkpoint,
        "--checkpoint-every",
        5000,
        "--run-dir",
        run_dir,
    ]
    return Job(name, command, checkpoint, run_dir, deps)


def walker_jobs(out: Path) -> list[Job]:
    """walker2d-medium-expert (block above): its CQL ensemble, then every arm, seed by seed."""
    runs, ck = out / "runs", Path("checkpoints/evidence")
    data_args = ["--env-id", WALKER_ENV_ID, "--dataset-path", dataset_file(WALKER), "--no-cuda"]
    cql = out / "pretrained" / f"cql_{WALKER}_N5.pt"
    cql_run = runs / f"{WALKER}__cql-pretrain__seed1"
    out_jobs = [Job(f"cql_{WALKER}", cql_command(data_args, cql, cql_run, 1), cql, cql_run, ["data_walker2d"])]
    for seed in SEEDS:
        for arm in WALKER_ARMS:
            name = job_name(WALKER, arm, seed)
            run_dir = runs / (f"walker2d__sac__seed{seed}" if arm == "sac" else f"{WALKER}__{arm}__seed{seed}")
            if arm in FINETUNE_ARMS:
                job = finetune_job(name, data_args, cql, arm, seed, ck / f"{name}.pt", run_dir, [f"cql_{WALKER}"])
            elif arm == "sac":
                job = Job(name, sac_command(WALKER_ENV_ID, seed, ck / f"{name}.pt", run_dir), ck / f"{name}.pt", run_dir)
            else:
                command = offline_online_command(arm, data_args, seed, ck / f"{name}.pt", run_dir)
                command += list(WALKER_AWAC_FLAGS) if arm == "awac-N5" else []
                job = Job(name, command, ck / f"{name}.pt", run_dir, ["data_walker2d"])
            out_jobs.append(job)
    return out_jobs


def walker_diagnosis_jobs(out: Path) -> list[Job]:
    """The critic-side test on walker2d-medium-expert (block above): the probes, then one diagnose.py run."""
    folder, cql = out / "diagnosis" / "walker2d", out / "pretrained" / f"cql_{WALKER}_N5.pt"
    data_args = ["--env-id", WALKER_ENV_ID, "--dataset-path", dataset_file(WALKER), "--no-cuda"]
    probes, policies = [], ["--policy", f"CQL 30k, step 0={cql}"]
    for seed in SEEDS:
        for variant, flags in WALKER_DIAGNOSIS_VARIANTS.items():
            name = f"walker_diag_{variant}_s{seed}"
            checkpoint = folder / "checkpoints" / f"{name}.pt"
            run = folder / "runs" / f"{WALKER}__balanced-N5-{variant}__seed{seed}"
            flags = (*FINETUNE_ARMS["balanced-N5"], *flags)
            probes.append(probe_job(name, data_args, cql, flags, seed, run, checkpoint, f"cql_{WALKER}"))
            for step in range(1000, PROBE_STEPS + 1, 1000):
                policies += ["--policy", f"{variant}, seed {seed}, step {step}={folder / 'checkpoints' / name}_step{step}.pt"]
    full_runs = []
    for arm, label in (("balanced-N5", "Ours"), ("sac-ft", "SAC-ft")):
        full_runs += ["--runs", f"{label}={out / 'runs' / f'{WALKER}__{arm}__seed'}[{''.join(map(str, SEEDS))}]"]
    command = [PY, "benchmark/diagnose.py", "--env-id", WALKER_ENV_ID, "--episodes", EVAL_EPISODES, "--seed", 1]
    command += [*policies, *full_runs, "--out-dir", folder]
    deps = [job.name for job in probes] + [job_name(WALKER, arm, seed) for arm in ("balanced-N5", "sac-ft") for seed in SEEDS]
    return probes + [Job("walker_diag_q_vs_mc", command, deps=deps)]


def independent_pretraining_jobs(out: Path, data_args, cql_job) -> tuple[dict[str, list[Job]], list[Job]]:
    """The independent-pretraining runs (block above): per dataset, the CQL ensembles of seeds 2 and 3 and ours and
    SAC-ft from each (2 fine-tuning seeds); and, apart, AWAC's and BCQ-ft's seeds 4 and 5 of every dataset."""
    runs, ck = out / "runs", Path("checkpoints/evidence")
    cql_based, own_pretraining = {}, []
    for d in INDEPENDENT_ORDER:
        pretrainings, finetuning = [], []
        for pretrain_seed in PRETRAIN_SEEDS:
            pretrainings.append(cql_job(d, pretrain_seed))
            for seed in FINETUNE_SEEDS_OF[pretrain_seed]:
                for arm in INDEPENDENT_CQL_ARMS:
                    name, run_dir = job_name(d, arm, seed), runs / f"hopper-{d}__{arm}__seed{seed}"
                    cql, deps = cql_checkpoint(out, d, pretrain_seed), [pretrainings[-1].name]
                    finetuning.append(finetune_job(name, data_args(d), cql, arm, seed, ck / f"{name}.pt", run_dir, deps))
        cql_based[d] = pretrainings + finetuning
    for d in INDEPENDENT_ORDER:
        for seed in OWN_PRETRAINING_SEEDS:
            for arm in OWN_PRETRAINING_ARMS:
                if seed in SEEDS:
                    continue  # run above
                name, run_dir = job_name(d, arm, seed), runs / f"hopper-{d}__{arm}__seed{seed}"
                command = offline_online_command(arm, data_args(d), seed, ck / f"{name}.pt", run_dir)
                own_pretraining.append(
                    Job(name, command, ck / f"{name}.pt", run_dir, ["data_medium" if d == "medium" else "data_all"])
                )
    return cql_based, own_pretraining


def offline_online_command(arm: str, data_args: list, seed: int, checkpoint: Path, run_dir: Path) -> list:
    """AWAC (N=5) or BCQ-ft (N=1): offline pretraining then online fine-tuning, in one run."""
    script, n = {"awac-N5": ("awac.py", 5), "bcq-ft-N1": ("bcq_ft.py", 1)}[arm]
    return [
        PY,
        script,
        *data_args,
        "--n-ensemble",
        n,
        "--hidden-dim",
        WIDTH,
        "--offline-steps",
        OFFLINE_STEPS,
        "--online-steps",
        ONLINE_STEPS,
        "--eval-every",
        1000,
        "--eval-episodes",
        EVAL_EPISODES,
        "--seed",
        seed,
        "--checkpoint",
        checkpoint,
        "--checkpoint-every",
        5000,
        "--run-dir",
        run_dir,
    ]


def depth_checkpoint(out: Path, steps: int) -> Path:
    pre = out / "pretrained"
    return pre / "cql_hopper-medium_N5.pt" if steps == CQL_STEPS else pre / f"cql_hopper-medium_N5_{steps // 1000}k.pt"


def depth_job(steps: int) -> str:
    return "cql_medium" if steps == CQL_STEPS else f"cql_medium_{steps // 1000}k"


def first_epoch_jobs(out: Path, data_args, cql: dict) -> list[Job]:
    """The first-epoch study (1-2 above): the CQL continuation first (it is the long pole), then Qbar vs Monte-Carlo
    at each depth, the diagnosis probes, the per-epoch Q vs MC of the diagnosis, the depth probes, the CQL-weight
    runs and probes, then the full runs at the deepest checkpoint."""
    depth, diagnosis = out / "depth", out / "diagnosis"
    chain, q_jobs, probes, diag = [], [], [], []
    for previous, steps in zip(DEPTHS, DEPTHS[1:]):
        run_dir = out / "runs" / "hopper-medium__cql-pretrain-deep__seed1"
        command = cql_command(data_args("medium"), depth_checkpoint(out, steps), run_dir, 1, steps, eval_every=10_000)
        chain.append(
            Job(
                depth_job(steps),
                command,
                depth_checkpoint(out, steps),
                None,
                [depth_job(previous)],
                init_from=depth_checkpoint(out, previous),
            )
        )
    for steps in DEPTHS:
        k = f"{steps // 1000}k"
        q_jobs.append(
            Job(
                f"q_vs_mc_{k}",
                [
                    PY,
                    "benchmark/diagnose.py",
                    "--env-id",
                    ENV_ID,
                    "--episodes",
                    EVAL_EPISODES,
                    "--seed",
                    1,
                    "--policy",
                    f"CQL {k}={depth_checkpoint(out, steps)}",
                    "--out-dir",
                    depth / "q_vs_mc" / k,
                ],
                deps=[depth_job(steps)],
            )
        )
        for seed in SEEDS:
            for arm in PROBE_ARMS:
                name = f"depth{k}_{arm}_s{seed}"
                probes.append(
                    probe_job(
                        name,
                        data_args("medium"),
                        depth_checkpoint(out, steps),
                        FINETUNE_ARMS[arm],
                        seed,
                        depth / "runs" / f"hopper-medium__{arm}__cql{k}__seed{seed}",
                        depth / "checkpoints" / f"{name}.pt",
                        depth_job(steps),
                    )
                )
    for seed in SEEDS:
        for variant, flags in DIAGNOSIS_VARIANTS.items():
            name = f"diag_{variant}_s{seed}"
            diag.append(
                probe_job(
                    name,
                    data_args("medium"),
                    cql["medium"],
                    (*FINETUNE_ARMS["balanced-N5"], *flags),
                    seed,
                    diagnosis / "runs" / f"hopper-medium__balanced-N5-{variant}__seed{seed}",
                    diagnosis / "checkpoints" / f"{name}.pt",
                    "cql_medium",
                )
            )
    # Qbar vs Monte-Carlo after each epoch of the diagnosis probes (and of the depth-30k probe of ours, the unfrozen run)
    policies, deps = ["--policy", f"CQL 30k, step 0={cql['medium']}"], []
    for seed in SEEDS:
        for variant, folder, name in (
            ("as is", depth, f"depth30k_balanced-N5_s{seed}"),
            *((v, diagnosis, f"diag_{v}_s{seed}") for v in DIAGNOSIS_VARIANTS),
        ):
            deps.append(name)
            for step in range(1000, PROBE_STEPS + 1, 1000):
                policies += ["--policy", f"{variant}, seed {seed}, step {step}={folder / 'checkpoints' / name}_step{step}.pt"]
    diag_q = Job(
        "diag_q_vs_mc",
        [
            PY,
            "benchmark/diagnose.py",
            "--env-id",
            ENV_ID,
            "--episodes",
            EVAL_EPISODES,
            "--seed",
            1,
            *policies,
            "--out-dir",
            diagnosis / "critic_side",
        ],
        deps=deps,
    )
    # 4. full runs at the deepest checkpoint
    deepest, k = DEPTHS[-1], f"{DEPTHS[-1] // 1000}k"
    deep_full = []
    for seed in SEEDS:
        for arm in DEEP_FULL_ARMS:
            name = f"full{k}_{arm}_s{seed}"
            run_dir = depth / "full" / "runs" / f"hopper-medium__{arm}__cql{k}__seed{seed}"
            checkpoint, deps = Path("checkpoints/evidence") / f"{name}.pt", [depth_job(deepest)]
            deep_full.append(
                finetune_job(name, data_args("medium"), depth_checkpoint(out, deepest), arm, seed, checkpoint, run_dir, deps)
            )
    probes_30k = [job for job in probes if job.name.startswith("depth30k_")]
    later = [job for job in probes if not job.name.startswith("depth30k_")]
    # 5. the second axis: CQL's weight
    alpha_jobs = []  # per level: its CQL run, Q vs MC, then its probes
    for alpha in ALPHA_LEVELS:
        tag = f"alpha{alpha:g}"
        checkpoint = out / "pretrained" / f"cql_hopper-medium_N5_{tag}.pt"
        run_dir = out / "runs" / f"hopper-medium__cql-pretrain-{tag}__seed1"
        command = [*cql_command(data_args("medium"), checkpoint, run_dir, 1), "--alpha-cql", alpha]
        alpha_jobs.append(Job(f"cql_medium_{tag}", command, checkpoint, run_dir, ["data_medium"]))
        q_command = [PY, "benchmark/diagnose.py", "--env-id", ENV_ID, "--episodes", EVAL_EPISODES, "--seed", 1]
        q_command += ["--policy", f"CQL alpha {alpha:g}={checkpoint}", "--out-dir", out / "alpha" / "q_vs_mc" / f"{alpha:g}"]
        alpha_jobs.append(Job(f"q_vs_mc_{tag}", q_command, deps=[f"cql_medium_{tag}"]))
        for seed in SEEDS:
            for arm in PROBE_ARMS:
                name, run = f"{tag}_{arm}_s{seed}", ALPHA_AXIS.run_dir(out, alpha, arm, seed)
                ck = out / "alpha" / "checkpoints" / f"{name}.pt"
                alpha_jobs.append(
                    probe_job(name, data_args("medium"), checkpoint, FINETUNE_ARMS[arm], seed, run, ck, f"cql_medium_{tag}")
                )
    walker_data = Job(
        "data_walker2d",
        [
            PY,
            "benchmark/make_datasets.py",
            "--env",
            "walker2d",
            "--datasets",
            "medium-expert",
            "--csv",
            str(out / WALKER / "datasets.csv"),
        ],
        outputs=[Path(dataset_file(WALKER))],
    )
    queue = chain + q_jobs + probes_30k + diag + [diag_q] + showcase_jobs(out, data_args, cql) + later + alpha_jobs
    return queue + deep_full + [walker_data]  # the short probes of both axes before the full runs: both answers first


def showcase_jobs(out: Path, data_args, cql: dict) -> list[Job]:
    """The README's picture: hopper-medium-replay ours seed 1 run again (same command as the study's, so on the
    same kind of CPU it logs the same values: reproducibility.csv checks it) for its final checkpoint, then the CQL
    policy and the fine-tuned one side by side (benchmark/record.py)."""
    folder, checkpoint = out / "showcase", Path("checkpoints/evidence/showcase_medium-replay_balanced-N5_s1.pt")
    rerun = Job(
        "showcase_rerun",
        [
            PY,
            "balanced_finetune.py",
            *data_args("medium-replay"),
            "--cql-checkpoint",
            cql["medium-replay"],
            *FINETUNE_ARMS["balanced-N5"],
            "--online-steps",
            ONLINE_STEPS,
            "--eval-episodes",
            EVAL_EPISODES,
            "--seed",
            1,
            "--checkpoint",
            checkpoint,
            "--checkpoint-every",
            5000,
            "--run-dir",
            folder / "runs" / "hopper-medium-replay__balanced-N5__seed1",
        ],
        checkpoint,
        folder / "runs" / "hopper-medium-replay__balanced-N5__seed1",
        ["cql_medium-replay", "data_all"],
    )
    record = Job(
        "showcase_record",
        [
            PY,
            "benchmark/record.py",
            "--side-by-side",
            cql["medium-replay"],
            checkpoint,
            "--labels",
            "CQL (offline, 30k steps)",
            "Ours, after 50k online steps",
            "--episodes",
            EVAL_EPISODES,
            "--seed",
            1,
            "--video",
            "--video-episodes",
            1,
            "--formats",
            "gif",
            "png",
            "--size",
            200,
            "--out-dir",
            folder,
            "--name",
            "hopper-medium-replay_before_after",
        ],
        deps=["showcase_rerun"],
    )
    return [rerun, record]


def probe_job(
    name: str, data_args: list, cql_checkpoint: Path, flags: tuple, seed: int, run_dir: Path, checkpoint: Path, dep: str
) -> Job:
    """A short fine-tuning run (PROBE_STEPS) on the dataset of data_args, keeping its checkpoint after every epoch."""
    return Job(
        name,
        [
            PY,
            "balanced_finetune.py",
            *data_args,
            "--cql-checkpoint",
            cql_checkpoint,
            *flags,
            "--online-steps",
            PROBE_STEPS,
            "--eval-episodes",
            EVAL_EPISODES,
            "--seed",
            seed,
            "--checkpoint",
            checkpoint,
            "--checkpoint-every",
            1000,
            "--keep-checkpoints",
            "--run-dir",
            run_dir,
        ],
        checkpoint,
        run_dir,
        [dep],
    )


def lock_is_held(path: Path) -> bool:
    """Whether a job's lock file is held (flock) by a live process: its job is running, from this or another
    sitting of the campaign (the lock dies with the process, so a crash leaves no stale lock)."""
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the lock if this call took it


def dataset_record(command: list[str]) -> str | None:
    """The dataset a job reads, as a comment for commands.txt: its SHA-256 and the CPU that wrote it. Datasets are
    regenerated on each machine (make_datasets.py), and another CPU writes other bytes of the same distribution, so
    this line says which file a run was started or resumed on."""
    if "--dataset-path" not in command:
        return None
    relative = command[command.index("--dataset-path") + 1]
    path = ROOT / relative
    if not path.exists():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    made_on = path.with_name(path.name + ".made_on")
    cpu = made_on.read_text().strip() if made_on.exists() else "unknown"
    return f"#   dataset {relative}: sha256 {digest.hexdigest()}, made on {cpu}"


CAMPAIGN_MODULES = ("torch", "gymnasium", "mujoco", "h5py", "tyro", "tensorboard", "tqdm")  # what the jobs import


def check_campaign_modules():
    """One message before any job starts, not one failed job per module missing on a fresh machine."""
    missing = [module for module in CAMPAIGN_MODULES if importlib.util.find_spec(module) is None]
    if missing:
        raise SystemExit(
            f"error: the campaign's scripts need {', '.join(missing)}, not installed here: "
            "pip install torch==2.13.0 (the CPU build), then pip install -r requirements.txt"
        )


def run_campaign(out: Path, workers: int, dry_run: bool, only: list[str]):
    """Run every pending job whose dependencies are done, at most `workers` at a time across every sitting.

    Each job runs under an exclusive lock (status/<job>.lock) that its process inherits and holds until it exits,
    and marks itself done (status/<job>.done) or failed (status/<job>.failed); so a second `evidence.py` (say with
    more jobs, after this file changed) can start beside a running one: it counts the running jobs against
    --workers, never starts a job twice, and waits for what it depends on.
    """
    status = out / "status"
    logs = out / "logs"
    (ROOT / status).mkdir(parents=True, exist_ok=True)
    (ROOT / logs).mkdir(parents=True, exist_ok=True)
    all_jobs = jobs(out)
    todo = [job for job in all_jobs if not only or any(key in job.name for key in only)]
    outputs = {job.name: job.outputs for job in all_jobs}
    started_at = time.time()

    def done(name: str) -> bool:
        if outputs.get(name):
            return all((ROOT / path).exists() for path in outputs[name])
        return (ROOT / status / f"{name}.done").exists()

    def failed_elsewhere(name: str) -> bool:  # failed in another sitting since this one started
        marker = ROOT / status / f"{name}.failed"
        return marker.exists() and marker.stat().st_mtime >= started_at

    if dry_run:
        for job in todo:
            print(("# done: " if done(job.name) else "") + " ".join(job.command))
        return
    check_campaign_modules()
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    running, failed = {}, set()
    with open(ROOT / out / "commands.txt", "a") as commands:
        commands.write(
            f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} python benchmark/evidence.py"
            f" --workers {workers}{' --only ' + ' '.join(only) if only else ''}"
            " (finished jobs are skipped, interrupted ones resumed)\n"
        )
        while True:
            failed.update(job.name for job in todo if failed_elsewhere(job.name))
            busy = {job.name for job in all_jobs if lock_is_held(ROOT / status / f"{job.name}.lock")} | set(running)
            pending = [job for job in todo if not done(job.name) and job.name not in busy and job.name not in failed]
            ready = [
                job for job in pending if all(done(dep) for dep in job.deps) and not any(dep in failed for dep in job.deps)
            ]
            while ready and len(busy) < workers:
                job = ready.pop(0)
                lock = os.open(ROOT / status / f"{job.name}.lock", os.O_CREAT | os.O_RDWR, 0o644)
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # another sitting took it just now
                    os.close(lock)
                    continue
                busy.add(job.name)
                command = list(job.command)
                checkpoint = None if job.checkpoint is None else ROOT / job.checkpoint
                if checkpoint is not None and job.init_from is not None and not checkpoint.exists():
                    shutil.copyfile(ROOT / job.init_from, f"{checkpoint}.tmp")  # a continuation of a finished run
                    os.replace(f"{checkpoint}.tmp", checkpoint)
                if checkpoint is not None and checkpoint.exists():
                    command.append("--resume")
                elif job.run_dir is not None and (ROOT / job.run_dir).exists():
                    shutil.rmtree(ROOT / job.run_dir)
                commands.write(" ".join(command) + "\n")
                if (record := dataset_record(command)) is not None:
                    commands.write(record + "\n")
                commands.flush()
                log = open(ROOT / logs / f"{job.name}.log", "a")
                print(f"{time.strftime('%H:%M:%S')} start {job.name}", flush=True)
                mark_done = "" if outputs.get(job.name) else f"touch {shlex.quote(str(ROOT / status / job.name))}.done"
                marks = (
                    f'"$@"; rc=$?; if [ $rc -eq 0 ]; then {mark_done or ":"}; '
                    f"else echo $rc > {shlex.quote(str(ROOT / status / job.name))}.failed; fi; exit $rc"
                )
                # the job's own session: it outlives this process (and a Ctrl-C to it), holding its lock to the end
                process = subprocess.Popen(
                    ["sh", "-c", marks, "sh", sys.executable, *command[1:]],
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    pass_fds=(lock,),
                    start_new_session=True,
                )
                os.close(lock)
                running[job.name] = (process, log)
            if not running and not ready and not busy:
                break
            time.sleep(POLL_SECONDS)
            for name, (process, log) in list(running.items()):
                if process.poll() is None:
                    continue
                log.close()
                del running[name]
                if process.returncode == 0:
                    print(f"{time.strftime('%H:%M:%S')} done {name}", flush=True)
                else:
                    failed.add(name)
                    print(
                        f"{time.strftime('%H:%M:%S')} FAILED {name} (exit {process.returncode}); see {logs / (name + '.log')}",
                        flush=True,
                    )
    left = [job.name for job in todo if not done(job.name)]
    print(f"finished; {len(left)} jobs not done" + (f": {', '.join(left)}" if left else ""))
    if failed:
        sys.exit(1)


# ---------------------------------------------------------------------------------
# report: figures and CSVs through plot.py, then the tables of the README
# ---------------------------------------------------------------------------------
LABELS = {
    "balanced-N5": "Ours (balanced, N=5)",
    "sac-ft": "SAC-ft",
    "awac-N5": "AWAC (N=5)",
    "bcq-ft-N1": "BCQ-ft (N=1)",
    "sac": "SAC (from scratch)",
    "uniform-N5": "Uniform replay (N=5)",
    "online-only-N5": "Online only (N=5)",
    "balanced-N2": "Ours, N=2",
    "balanced-N1": "Ours, N=1",
    "fqe-init-N5": "Ours, FQE-init",
}
FIGURES = {  # folder -> (plot.py figures, arms)
    "fig3_methods": ("fig3", ["balanced-N5", "sac-ft", "awac-N5", "bcq-ft-N1", "sac"]),
    "fig4c_sampling": ("fig3 fig4a fig4b", ["balanced-N5", "uniform-N5", "online-only-N5"]),
    "fig4d_ensemble": ("fig3", ["balanced-N1", "balanced-N2", "balanced-N5"]),
    "fig1c_q_init": ("fig3", ["balanced-N5", "fqe-init-N5"]),
}


REPORT_DATASETS = (*DATASETS, WALKER)  # the report's datasets: the Hopper ones by short name, then Walker2d's


def task_of(dataset: str) -> str:
    """A dataset's task name: hopper-<short name>, or the Walker2d task as it is."""
    return dataset if dataset.startswith("walker2d-") else f"hopper-{dataset}"


def env_of(dataset: str) -> str:
    return WALKER_ENV_ID if dataset.startswith("walker2d-") else ENV_ID


def job_name(dataset: str, arm: str, seed: int) -> str:
    """The job of one run: SAC from scratch has no dataset (one run serves every dataset's figure)."""
    if arm == "sac":
        return f"walker2d_sac_s{seed}" if dataset.startswith("walker2d") else f"sac_s{seed}"
    return f"{dataset}_{arm}_s{seed}"


def finished_seeds(out: Path, dataset: str, arm: str) -> list[int]:
    return [seed for seed in SEEDS if (ROOT / out / "status" / f"{job_name(dataset, arm, seed)}.done").exists()]


def run_dir_of(out: Path, dataset: str, arm: str, seeds: list[int]) -> str:
    """The run folder of one seed, or a glob over several (what plot.py --method takes)."""
    task = task_of(dataset).split("-")[0] if arm == "sac" else task_of(dataset)
    seed = seeds[0] if len(seeds) == 1 else "[" + "".join(map(str, seeds)) + "]"
    return str(out / "runs" / f"{task}__{arm}__seed{seed}")


def load_events(run_dir: Path):
    """The run's TensorBoard scalars (None when the folder does not exist)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not (ROOT / run_dir).exists():
        return None
    events = EventAccumulator(str(ROOT / run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return events


def logs_tag(run_dir: Path, tag: str) -> bool:
    events = load_events(run_dir)
    return events is not None and tag in events.Tags()["scalars"]


def eval_curve(run_dir: Path):
    points = {}
    for event in load_events(run_dir).Scalars("eval/normalized_score"):
        points[event.step] = event.value  # a step logged twice (resumed run): the last value
    steps = np.array(sorted(s for s in points if s >= 0))
    return steps, np.array([points[s] for s in steps])


# The paper's claims as comparisons of per-seed metrics, written before any fine-tuning run had finished. A comparison
# "holds" when the mean of the first arm exceeds the second's by more than MARGIN_SE standard errors of the difference
# (sqrt(s_a^2/n_a + s_b^2/n_b), sample stds), is "reversed" when the second exceeds the first by as much, else "tie".
# A claim is reproduced when every comparison holds, not reproduced when any is reversed, inconclusive otherwise.
# drop = score at step 0 - lowest score over 1k-10k steps (the early collapse, Fig. 1; lower is better: there
# "holds" means the first arm's drop is smaller); early = mean score over 1k-10k steps.
MARGIN_SE = 2.0
LOWER_IS_BETTER = ("drop",)
CLAIMS = [  # (claim, metric, [(first arm, second arm), ...]): the first arm better than the second on the metric
    (
        "(a) ours ends above every baseline",
        "final",
        [("balanced-N5", arm) for arm in ("sac-ft", "awac-N5", "bcq-ft-N1", "sac")],
    ),
    (
        "(b) no early collapse with balanced replay; a dip with uniform, online-only and SAC-ft",
        "drop",
        [("balanced-N5", arm) for arm in ("uniform-N5", "online-only-N5", "sac-ft")],
    ),
    ("(c) N=5 >= N=2 >= N=1", "final", [("balanced-N5", "balanced-N2"), ("balanced-N2", "balanced-N1")]),
    ("(d) FQE-init falls early where CQL-init does not", "drop", [("balanced-N5", "fqe-init-N5")]),
    (
        "(e) offline-initialised methods lead SAC from scratch early on",
        "early",
        [(arm, "sac") for arm in ("balanced-N5", "sac-ft", "awac-N5", "bcq-ft-N1")],
    ),
]


def seed_metrics(steps: np.ndarray, scores: np.ndarray) -> dict:
    """One seed's curve -> the numbers the summary and the claims use (NaN where the curve has no such point)."""
    at = lambda x: float(scores[np.searchsorted(steps, x)]) if x in steps else np.nan
    early = scores[(steps >= 1000) & (steps <= 10_000)]
    return {
        "final": float(scores[-3:].mean()),  # the mean of the last 3 evaluations (48k-50k)
        "start": at(0),
        "after_first_epoch": at(1000),
        "min_1k_10k": float(early.min()),
        "early": float(early.mean()),
        "at_10k": at(10_000),
        "best": float(scores.max()),
        "drop": at(0) - float(early.min()),
    }


def compare(a: np.ndarray, b: np.ndarray) -> tuple:
    """(difference of means, its standard error, holds / reversed / tie / n/a)."""
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) < 2 or len(b) < 2:
        return np.nan, np.nan, "n/a (fewer than 2 seeds)"
    diff, se = a.mean() - b.mean(), float(np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)))
    return diff, se, "holds" if diff > MARGIN_SE * se else "reversed" if -diff > MARGIN_SE * se else "tie"


def claim_rows(per_seed: dict) -> list:
    """per_seed[(dataset, arm)] = list of seed_metrics -> one row per comparison and one verdict row per claim."""
    rows = []
    for claim, metric, pairs in CLAIMS:
        for dataset in REPORT_DATASETS:
            results = []
            for first, second in pairs:
                if (dataset, first) not in per_seed or (dataset, second) not in per_seed:
                    continue
                a = np.array([m[metric] for m in per_seed[(dataset, first)]])
                b = np.array([m[metric] for m in per_seed[(dataset, second)]])
                sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
                diff, se, result = compare(sign * a, sign * b)
                diff *= sign  # reported as first - second either way
                results.append(result)
                rows.append(
                    {
                        "claim": claim,
                        "task": task_of(dataset),
                        "metric": metric,
                        "first": first,
                        "second": second,
                        "first_mean": round(float(np.nanmean(a)), 2),
                        "second_mean": round(float(np.nanmean(b)), 2),
                        "n_first": len(a),
                        "n_second": len(b),
                        "difference": round(float(diff), 2),
                        "se": round(float(se), 2),
                        "result": result,
                    }
                )
            if not results:
                continue
            intervals = benchmark_module("intervals")  # a claim is read from its comparisons alike under both rules
            verdict, ran = intervals.claim_verdict(results, len(pairs)), intervals.ran(results)
            rows.append(
                {
                    "claim": claim,
                    "task": task_of(dataset),
                    "metric": metric,
                    "first": "",
                    "second": "",
                    "first_mean": "",
                    "second_mean": "",
                    "n_first": "",
                    "n_second": "",
                    "difference": "",
                    "se": "",
                    "result": f"verdict: {verdict} ({ran}/{len(pairs)} comparisons run)",
                }
            )
    return rows


def write_tables(out: Path, rows: list, claims: list):
    """tables.md: the README's tables, from the same numbers as summary.csv and claims.csv."""
    lines = []
    num = lambda x: "—" if np.isnan(x) else f"{x:.1f}"
    for dataset in REPORT_DATASETS:
        task_rows = [row for row in rows if row["task"] == task_of(dataset)]
        if all(row["arm"] == "sac" for row in task_rows):  # SAC from scratch alone: nothing of this dataset yet
            continue
        lines += [
            f"**{task_of(dataset)}** (normalized score; mean ± std over seeds)",
            "",
            "| method | seeds | final (48k-50k) | at 0 | after the first epoch | lowest 1k-10k | mean 1k-10k |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['method']} | {r['n_seeds']} | {num(r['final_mean'])} ± {num(r['final_std'])} | "
            f"{num(r['start_mean'])} | {num(r['after_first_epoch_mean'])} ± {num(r['after_first_epoch_std'])} | "
            f"{num(r['min_1k_10k_mean'])} | {num(r['early_mean'])} |"
            for r in task_rows
        ]
        lines.append("")
    score_tables = "\n".join(lines).strip()
    if claims:
        lines += ["| claim | task | comparison (metric: first vs second, difference ± SE) | result |", "|---|---|---|---|"]
        for c in claims:
            if c["first"]:
                lines.append(
                    f"| {c['claim']} | {c['task']} | {c['metric']}: {c['first']} {c['first_mean']} vs "
                    f"{c['second']} {c['second_mean']} ({c['difference']} ± {c['se']}; n {c['n_first']}/"
                    f"{c['n_second']}) | {c['result']} |"
                )
            else:
                lines.append(f"| {c['claim']} | {c['task']} | | **{c['result']}** |")
    with open(ROOT / out / "tables.md", "w") as f:
        f.write("<!-- written by: python benchmark/evidence.py --report (from summary.csv and claims.csv) -->\n\n")
        f.write("\n".join(lines) + "\n")
    return score_tables


def fill_readme(out: Path, readme: Path, score_tables: str, claims: list):
    """Replace the README's block between README_MARKERS with the score tables (as in tables.md), the claims' verdicts
    with their comparisons (claims.csv's rows), and each dataset's Fig. 3 figure, so every number is the CSVs' one."""
    block = [
        "<!-- written by: python benchmark/evidence.py --report (from summary.csv and claims.csv) -->",
        "Final = mean of the last three evaluations (48k-50k steps); the paper's early collapse shows in the "
        "columns after it. Each study's folder (`hopper-<dataset>/fig3_methods/`, `fig4c_sampling/`, "
        "`fig4d_ensemble/`, `fig1c_q_init/` under `" + str(out) + "/`) holds its `commands.txt`, "
        "`summary.csv`, `curves.csv`, `datasets.csv` and figures.",
        "",
        score_tables,
    ]
    if claims:
        block += [
            "",
            "The paper's claims, judged by the rule fixed before the results (`CLAIMS` in "
            f"`benchmark/evidence.py`; every comparison in `{out / 'claims.csv'}`; a drop is better when smaller):",
            "",
            "| claim (metric) | task | verdict | first − second: difference ± SE (seeds) → result |",
            "|---|---|---|---|",
        ]
        comparisons = []
        for c in claims:  # comparison rows, then their claim's verdict row
            if c["first"]:
                numbers = "n/a" if np.isnan(c["se"]) else f"{c['difference']:+.1f} ± {c['se']:.1f}"
                comparisons.append(
                    f"{LABELS[c['first']]} − {LABELS[c['second']]}: {numbers} "
                    f"({c['n_first']}/{c['n_second']}) → {c['result'].split(' (')[0]}"
                )
            else:
                verdict = c["result"].removeprefix("verdict: ")
                block.append(
                    f"| {c['claim']} ({c['metric']}) | {c['task']} | **{verdict}** | " + "; ".join(comparisons) + " |"
                )
                comparisons = []
    for dataset in REPORT_DATASETS:
        figure = out / task_of(dataset) / "fig3_methods" / "fig3_score.png"
        if (ROOT / figure).exists():
            block += ["", f"![{task_of(dataset)}, Fig. 3 arms]({figure})"]
    if replace_block(readme, README_MARKERS, block):
        print(f"wrote {readme.name}'s study tables")
    else:
        print(f"{readme.name}: no {README_MARKERS[0]} ... {README_MARKERS[1]} block, left as it is")


def replace_block(readme: Path, markers: tuple, block: list) -> bool:
    """Replace the README's lines between the two markers with block; False (nothing written) without the markers."""
    start, end = markers
    text = readme.read_text() if readme.exists() else ""
    if start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    readme.write_text(head + start + "\n" + "\n".join(block) + "\n" + end + rest.split(end, 1)[1])
    return True


HEADLINE_MARKERS = ("<!-- headline -->", "<!-- /headline -->")
INTERVAL_METRIC_OF = {"(a)": "late", "(b)": "drop", "(c)": "late", "(d)": "drop", "(e)": "early"}


def read_csv(path: Path) -> list:
    return list(csv.DictReader(open(path))) if path.exists() else []


def headline(out: Path, claims: list) -> list:
    """The README's first screen: claims x datasets with both verdicts, and the first-epoch finding in numbers."""
    interval_rows = read_csv(ROOT / out / "intervals" / "claims.csv")
    short = lambda text: text.removeprefix("verdict: ").replace(" comparisons run", "")
    datasets = [d for d in REPORT_DATASETS if d in DATASETS or any(c["task"] == task_of(d) for c in claims)]
    lines = ["| claim | " + " | ".join(map(task_of, datasets)) + " |", "|---|" + "---|" * len(datasets)]
    deepest = {}  # (claim, task) -> rule -> verdict row of the deepest CQL checkpoint's full runs (depth/full/)
    for r in read_csv(ROOT / out / "depth" / "full" / "claims.csv"):
        if r["cql_steps"] == str(DEPTHS[-1]) and not r["first"]:
            deepest.setdefault((r["claim"], r["task"]), {})[r["rule"]] = r
    for claim, metric, _ in CLAIMS:
        cells = []
        for dataset in datasets:
            rule = next(
                (c["result"] for c in claims if c["claim"] == claim and c["task"] == task_of(dataset) and not c["first"]),
                None,
            )
            interval = next(
                (
                    r["result"]
                    for r in interval_rows
                    if r["claim"] == claim
                    and not r["first"]
                    and r["task"] == task_of(dataset)
                    and r["metric"] == INTERVAL_METRIC_OF[claim[:3]]
                ),
                None,
            )
            cells.append(
                "not run"
                if rule is None
                else f"{short(rule)}; IQM {INTERVAL_METRIC_OF[claim[:3]]}: {short(interval) if interval else 'n/a'}"
            )
            deep = deepest.get((claim, task_of(dataset)), {})
            if "2 SE" in deep:  # after this dataset's own verdicts, the deepest checkpoint's by both rules
                interval = deep.get("interval (IQM, 95%)")
                cells[-1] += (
                    f"; from {DEPTHS[-1] // 1000}k CQL steps: {short(deep['2 SE']['result'])}, "
                    f"IQM {INTERVAL_METRIC_OF[claim[:3]]}: {short(interval['result']) if interval else 'n/a'}"
                )
        lines.append(f"| {claim} ({metric}) | " + " | ".join(cells) + " |")
    critic = {(r["variant"], int(r["step"])): r for r in read_csv(ROOT / out / "diagnosis" / "critic_side" / "summary.csv")}
    finding = []  # the first-epoch finding: its cause, then what more pessimism in pretraining does to it
    if ("as is", 1000) in critic and ("frozen-actor", 1000) in critic and ("frozen-critics", 1000) in critic:
        v = lambda variant, key, step=1000: float(critic[(variant, step)][key])
        finding.append(
            f"**The first online epoch on hopper-medium** (`{out}/diagnosis/critic_side/summary.csv`, 3 seeds): ours "
            f"falls from {v('as is', 'score_mean', 0):.1f} to {v('as is', 'score_mean'):.1f} because the online critic "
            "updates (SAC's, without CQL's penalty, as in the paper) make the critics optimistic about the actions the "
            f"actor moves to (Qbar - Monte-Carlo {v('as is', 'q_minus_mc_mean', 0):+.0f} before the epoch, "
            f"{v('as is', 'q_minus_mc_mean'):+.0f} after it); with the critics frozen it does not fall "
            f"({v('frozen-critics', 'score_mean'):.1f}), and with the actor frozen the critics stay pessimistic "
            f"({v('frozen-actor', 'q_minus_mc_mean'):+.0f})."
        )
    axes, number = [], lambda row, key: float(row[key])
    for folder, csv_name, what, base_key, kept_key in (
        (
            "alpha",
            "alpha_verdict.csv",
            lambda r: f"a CQL weight of {number(r, 'highest_alpha_cql'):g} instead of 5",
            "kept_5",
            "kept_highest",
        ),
        (
            "depth",
            "depth_verdict.csv",
            lambda r: f"{number(r, 'deepest_cql_steps') / 1000:.0f}k CQL steps instead of 30k",
            "kept_30k",
            "kept_deepest",
        ),
    ):
        verdict = {r["arm"]: r for r in read_csv(ROOT / out / folder / csv_name)}
        if "balanced-N5" not in verdict:
            continue
        r, control = verdict["balanced-N5"], verdict.get("sac-ft")
        text = f"{what(r)} (`{out}/{folder}/`): ours keeps {number(r, kept_key):.0%} of its start after the first epoch, "
        text += (
            f"not {number(r, base_key):.0%} ({number(r, 'difference') * 100:+.0f} ± {number(r, 'se') * 100:.0f} points, SE)"
        )
        if control:
            text += f", SAC-ft {number(control, kept_key):.0%} not {number(control, base_key):.0%}"
        axes.append(text + f": **{r['verdict']}**")
    if axes:
        finding.append("More pessimism in pretraining, read by the rules fixed before its runs: " + "; ".join(axes) + ".")
    walker = read_csv(ROOT / out / "diagnosis" / "walker2d" / "verdict.csv")
    walker_scores = {
        (r["variant"], int(r["step"])): r for r in read_csv(ROOT / out / "diagnosis" / "walker2d" / "summary.csv")
    }
    if walker:  # the same test on walker2d-medium-expert, read by the rule fixed before its runs
        r, score = walker[0], lambda variant, step: float(walker_scores[(variant, step)]["score_mean"])
        finding.append(
            f"The same test on walker2d-medium-expert (`{out}/diagnosis/walker2d/verdict.csv`, 3 seeds): ours goes "
            f"from {score('as-is', 0):.1f} to {score('as-is', 1000):.1f} in the first epoch, with the critics frozen to "
            f"{score('frozen-critics', 1000):.1f} (frozen - as is {float(r['difference']):+.1f} ± {float(r['se']):.1f}: "
            f"{r['result']}); Qbar - Monte-Carlo {float(r['q_minus_mc_before']):+.0f} before the epoch, "
            f"{float(r['q_minus_mc_after_epoch_1']):+.0f} after it: **{r['verdict']}**."
        )
    if finding:
        lines += ["", " ".join(finding)]
    independent = [r for r in read_csv(ROOT / out / "intervals" / "independent" / "claims.csv") if not r["first"]]
    shown = [r for r in independent if r["metric"] == INTERVAL_METRIC_OF[r["claim"][:3]] and "(0/" not in r["result"]]
    if shown:  # the independent-pretraining check, once it has a comparison
        cells = "; ".join(f"{r['claim'][:3]} {r['metric']} on {r['task']}: {short(r['result'])}" for r in shown)
        lines += [
            "",
            f"**Independent pretraining** (`{out}/intervals/independent/claims.csv`; 3 CQL pretrainings x 2 seeds for "
            f"ours and SAC-ft, an own pretraining per run for AWAC and BCQ-ft; intervals resample pretrainings): {cells}.",
        ]
    return lines


def fill_headline(out: Path, readme: Path, claims: list):
    block = [
        "<!-- written by: python benchmark/evidence.py --report (from claims.csv, intervals/claims.csv, "
        "diagnosis/critic_side/summary.csv, diagnosis/walker2d/verdict.csv, depth/depth_verdict.csv, depth/full/claims.csv, "
        "alpha/alpha_verdict.csv and intervals/independent/claims.csv) -->",
        *headline(out, claims),
    ]
    replace_block(readme, HEADLINE_MARKERS, block)


SIDE_BY_SIDE_MARKERS = ("<!-- independent-pretraining -->", "<!-- /independent-pretraining -->")


def side_by_side_rows(out: Path) -> list:
    """Each comparison of the independent-pretraining check (on its claim's interval metric) beside the same
    comparison on the shared ensemble's runs, by the 2-SE rule (claims.csv; (a) on the final score) and by the interval
    rule (intervals/claims.csv); agree: whether the results (holds, tie, reversed) are the same wherever they exist."""
    key = lambda r, *extra: (r["claim"][:3], r["task"], *extra, r["first"], r["second"])  # "(a)": wordings differ
    two_se = {key(r): r for r in read_csv(ROOT / out / "claims.csv") if r["first"]}
    shared = {key(r, r["metric"]): r for r in read_csv(ROOT / out / "intervals" / "claims.csv") if r["first"]}
    rows = []
    for r in read_csv(ROOT / out / "intervals" / "independent" / "claims.csv"):
        if not r["first"] or r["metric"] != INTERVAL_METRIC_OF[r["claim"][:3]] or r["result"].startswith("n/a"):
            continue
        a, b = two_se.get(key(r), {}), shared.get(key(r, r["metric"]), {})
        row = {"claim": r["claim"], "task": r["task"], "first": r["first"], "second": r["second"]}
        row |= {f"two_se_{k}": a.get(k, "") for k in ("metric", "difference", "se", "result")}
        row |= {f"shared_{k}": b.get(k, "") for k in ("metric", "iqm_difference", "ci_low", "ci_high", "result")}
        row |= {f"independent_{k}": r[k] for k in ("metric", "iqm_difference", "ci_low", "ci_high", "result")}
        row |= {k: r[k] for k in ("n_pretrainings_first", "n_pretrainings_second", "n_first", "n_second")}
        results = {x for x in (row["two_se_result"], row["shared_result"], row["independent_result"]) if x}
        rows.append(row | {"agree": "yes" if len(results) == 1 else "no"})
    return rows


def fill_side_by_side(out: Path, readme: Path):
    """intervals/independent/side_by_side.csv and the README's block between SIDE_BY_SIDE_MARKERS: the table of
    side_by_side_rows (nothing while the check has no comparison)."""
    rows = side_by_side_rows(out)
    if not rows:
        return
    write_csv(ROOT / out / "intervals" / "independent" / "side_by_side.csv", rows)
    number = lambda r, key, form: format(float(r[key]), form)
    interval = lambda r, p: (
        f"{number(r, p + 'iqm_difference', '+.1f')} [{number(r, p + 'ci_low', '.1f')}, {number(r, p + 'ci_high', '.1f')}] "
        f"{r[p + 'result']}"
    )
    block = [
        "<!-- written by: python benchmark/evidence.py --report (from intervals/independent/side_by_side.csv) -->",
        "| claim | task | comparison | 2-SE rule, shared ensemble: difference ± SE | interval rule, shared ensemble: "
        "IQM difference [95%] | two-stage, independent pretrainings: IQM difference [95%] (pretrainings) | agree |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        two_se = (
            f"{r['two_se_metric']} {number(r, 'two_se_difference', '+.1f')} ± {number(r, 'two_se_se', '.1f')} "
            f"{r['two_se_result']}"
            if r["two_se_result"]
            else "—"
        )
        shared = f"{r['shared_metric']} {interval(r, 'shared_')}" if r["shared_result"] else "—"
        independent = (
            f"{r['independent_metric']} {interval(r, 'independent_')} "
            f"({r['n_pretrainings_first']}/{r['n_pretrainings_second']})"
        )
        comparison = f"{LABELS[r['first']]} − {LABELS[r['second']]}"
        block.append(f"| {r['claim'][:3]} | {r['task']} | {comparison} | {two_se} | {shared} | {independent} | {r['agree']} |")
    replace_block(readme, SIDE_BY_SIDE_MARKERS, block)


def report(out: Path):
    rows, per_seed, curves_of = [], {}, {}
    for dataset in REPORT_DATASETS:
        for arm in LABELS:
            seeds = finished_seeds(out, dataset, arm)
            if not seeds:
                continue
            curves = curves_of[(task_of(dataset), arm)] = [
                eval_curve(Path(run_dir_of(out, dataset, arm, [seed]))) for seed in seeds
            ]
            metrics = per_seed[(dataset, arm)] = [seed_metrics(steps, scores) for steps, scores in curves]
            mean, std = (
                {key: round(float(reduce([m[key] for m in metrics])), 2) for key in metrics[0]} for reduce in (np.mean, np.std)
            )
            rows.append(
                {
                    "task": task_of(dataset),
                    "method": LABELS[arm],
                    "arm": arm,
                    "final_mean": mean["final"],
                    "final_std": std["final"],
                    "n_seeds": len(seeds),
                    "start_mean": mean["start"],
                    "after_first_epoch_mean": mean["after_first_epoch"],
                    "after_first_epoch_std": std["after_first_epoch"],
                    "min_1k_10k_mean": mean["min_1k_10k"],
                    "early_mean": mean["early"],
                    "at_10k_mean": mean["at_10k"],
                    "best_mean": mean["best"],
                    "final_step": int(min(steps[-1] for steps, _ in curves)),
                }
            )
    claims = claim_rows(per_seed)
    interval_report(out, curves_of)
    score_tables = write_tables(out, rows, claims)
    for name, table in (("summary.csv", rows), ("claims.csv", claims)):
        if not table:
            print(f"no fine-tuning run has finished yet: no {name}")
            continue
        with open(ROOT / out / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
        print(f"wrote {out / name}")
    commands = []
    # CQL pretraining curves (ensemble policy of eq. 5 and the members' range) against each dataset's mean return
    for datasets, datasets_csv, figure in (
        (DATASETS, out / "datasets.csv", out / "cql_offline"),
        ((WALKER,), out / WALKER / "datasets.csv", out / WALKER / "cql_offline"),
    ):
        cql_runs = [
            task_of(d) for d in datasets if logs_tag(out / "runs" / f"{task_of(d)}__cql-pretrain__seed1", "eval/return")
        ]
        if not cql_runs or not (ROOT / datasets_csv).exists():
            continue
        command = [PY, "benchmark/plot_offline.py", "--datasets-csv", str(datasets_csv), "--out", str(figure)]
        for task in cql_runs:
            command += ["--run", f"{task}={out / 'runs' / f'{task}__cql-pretrain__seed1'}", "--dataset", f"{task}={task}"]
        commands.append(command)
        subprocess.run([sys.executable, *command[1:]], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    by_name = {job.name: job for job in jobs(out)}
    for dataset in REPORT_DATASETS:
        for folder, (figures, arms) in FIGURES.items():
            methods, runs = [], []
            for arm in arms:
                seeds = finished_seeds(out, dataset, arm)
                if seeds:
                    methods += ["--method", f"{LABELS[arm]}={run_dir_of(out, dataset, arm, seeds)}"]
                    runs += [job_name(dataset, arm, seed) for seed in seeds]
            if len(methods) < 4:  # a comparison needs two methods
                continue
            study = out / task_of(dataset) / folder
            command = [
                PY,
                "benchmark/plot.py",
                *methods,
                "--one-panel",
                "--panel-title",
                f"{env_of(dataset)}, {task_of(dataset)} (CPU-scale D4RL recipe), {ONLINE_STEPS // 1000}k online steps",
                "--figures",
                *figures.split(),
                "--final-window",
                "3",
                "--formats",
                "png",
                "--out-dir",
                str(study),
            ]
            commands.append(command)
            subprocess.run([sys.executable, *command[1:]], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
            write_study_files(study, dataset, [by_name[name] for name in runs], by_name, command, out)
    write_fqe_convergence(out)
    first_epoch_report(out)
    deep_full_report(out)
    independent_report(out)
    showcase_reproducibility(out)
    # diagnostics (benchmark/diagnose.py): the pretrained critics' Q against Monte-Carlo returns of the CQL policy,
    # and alpha, Qbar and the offline fraction along the runs, on the dataset that has every arm
    pre = out / "pretrained"
    cql, fqe = pre / f"cql_hopper-{FULL_ARMS_ON}_N5.pt", pre / f"fqe_hopper-{FULL_ARMS_ON}_N5.pt"
    inputs = []
    if (ROOT / fqe).exists() and (ROOT / out / "status" / f"fqe_{FULL_ARMS_ON}.done").exists():
        inputs += ["--policy", f"CQL (N=5)={cql}", "--policy", f"FQE critics of the CQL policy={cql}:{fqe}"]
    for arm in FINETUNE_ARMS:
        seeds = finished_seeds(out, FULL_ARMS_ON, arm)
        if seeds:
            inputs += ["--runs", f"{LABELS[arm]}={run_dir_of(out, FULL_ARMS_ON, arm, seeds)}"]
    if inputs:
        command = [
            str(part)
            for part in [
                PY,
                "benchmark/diagnose.py",
                "--env-id",
                ENV_ID,
                "--episodes",
                EVAL_EPISODES,
                "--seed",
                1,
                *inputs,
                "--out-dir",
                out / f"hopper-{FULL_ARMS_ON}" / "diagnostics",
            ]
        ]
        commands.append(command)
        subprocess.run([sys.executable, *command[1:]], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    fill_readme(out, ROOT / "README.md", score_tables, claims)
    fill_headline(out, ROOT / "README.md", claims)
    fill_side_by_side(out, ROOT / "README.md")
    with open(ROOT / out / "report_commands.txt", "w") as f:
        f.write("# written by: python benchmark/evidence.py --report\n")
        f.writelines(shlex.join(c) + "\n" for c in commands)


PRETRAINING = {arm: "shared CQL ensemble (seed 1)" for arm in FINETUNE_ARMS} | {
    "awac-N5": "own offline phase per seed",
    "bcq-ft-N1": "own offline phase per seed",
    "sac": "none (the same runs on every dataset)",
}


@functools.cache
def benchmark_module(name: str):
    """A tool of benchmark/ (intervals, plot) as a module (loaded once)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def curve_numbers(steps, scores) -> dict:
    """One finished run's numbers from its evaluation curve: seed_metrics and intervals.py's late and auc."""
    return {**benchmark_module("intervals").run_metrics(steps, scores, LATE_FROM), **seed_metrics(steps, scores)}


def independent_report(out: Path):
    """The independent-pretraining check (block above): intervals/independent/runs.csv (every run of the set with its
    pretraining), claims.csv (the interval rule with the two-stage bootstrap over pretrainings), curves.csv and
    iqm_curves.png (each arm's IQM curve with its two-stage band) and probability_of_improvement.png. A pretraining
    enters when all its fine-tuning runs of the set have finished."""
    intervals, rows, per_group, curves = benchmark_module("intervals"), [], {}, {}
    sets = {arm: FINETUNE_SEEDS_OF for arm in INDEPENDENT_CQL_ARMS}  # arm -> pretraining -> its runs' seeds
    sets |= {arm: {seed: (seed,) for seed in OWN_PRETRAINING_SEEDS} for arm in OWN_PRETRAINING_ARMS}
    for dataset in DATASETS:
        for arm, groups in sets.items():
            for pretraining, seeds in groups.items():
                if not all((ROOT / out / "status" / f"{job_name(dataset, arm, s)}.done").exists() for s in seeds):
                    continue
                runs = [eval_curve(Path(run_dir_of(out, dataset, arm, [s]))) for s in seeds]
                group = [curve_numbers(*run) for run in runs]
                per_group.setdefault((f"hopper-{dataset}", arm), []).append(group)
                curves.setdefault((f"hopper-{dataset}", arm), []).append(runs)
                for seed, numbers in zip(seeds, group):
                    row = {"task": f"hopper-{dataset}", "arm": arm, "pretraining_seed": pretraining, "seed": seed}
                    rows.append(row | {key: round(numbers[key], 2) for key in ("late", "auc", "final", "drop")})
    if not rows:
        return
    folder = ROOT / out / "intervals" / "independent"
    write_csv(folder / "runs.csv", rows)
    claims = [(claim, metric, pairs) for claim, metrics, pairs in INDEPENDENT_CLAIMS for metric in metrics]
    settings = dict(reps=INTERVAL_RESAMPLES, confidence=INTERVAL_CONFIDENCE, seed=0)
    rows = intervals.two_stage_claim_rows(per_group, claims, across="all Hopper datasets", **settings)
    write_csv(folder / "claims.csv", rows)
    curve_rows = intervals.two_stage_curve_rows(curves, **settings)
    write_csv(folder / "curves.csv", curve_rows)
    colours = benchmark_module("plot").METHOD_COLOURS
    intervals.plot_iqm_curves(curve_rows, folder / "iqm_curves.png", colours, LABELS)
    comparisons = [r for r in rows if r["first"] == "balanced-N5" and r["metric"] == "late" and r["p_improvement"] != ""]
    if comparisons:  # claim (a) on late: P(ours > each baseline), pretrainings resampled
        intervals.plot_improvement(
            comparisons, folder / "probability_of_improvement.png", "balanced-N5", "late", colours, LABELS
        )
    print(f"wrote {out / 'intervals' / 'independent'}")


def deep_full_report(out: Path):
    """Full runs at the deepest checkpoint beside the 30k ones (block "4." above): depth/full/summary.csv (per depth
    and arm) and claims.csv (claim (b) on hopper-medium at each depth, by the 2-SE rule and by the interval rule)."""
    intervals, k = benchmark_module("intervals"), f"{DEPTHS[-1] // 1000}k"
    by_name = {job.name: job for job in jobs(out)}
    per_seed, summary = {}, []
    for steps, prefix in ((CQL_STEPS, "medium"), (DEPTHS[-1], f"full{k}")):
        for arm in DEEP_FULL_ARMS:
            names = [f"{prefix}_{arm}_s{s}" for s in SEEDS if (ROOT / out / "status" / f"{prefix}_{arm}_s{s}.done").exists()]
            if not names:
                continue
            numbers = per_seed[(steps, arm)] = [curve_numbers(*eval_curve(by_name[name].run_dir)) for name in names]
            mean = lambda key, numbers=numbers: round(float(np.mean([n[key] for n in numbers])), 2)
            std = lambda key, numbers=numbers: round(float(np.std([n[key] for n in numbers])), 2)
            summary.append(
                {"cql_steps": steps, "arm": arm, "n_seeds": len(names)}
                | {f"{key}_mean": mean(key) for key in ("start", "after_first_epoch", "min_1k_10k", "drop", "late", "final")}
                | {"drop_std": std("drop"), "final_std": std("final")}
            )
    if not any(steps == DEPTHS[-1] for steps, _ in per_seed):
        return
    claim, _, pairs = next(c for c in CLAIMS if c[0].startswith("(b)"))
    pairs = [(first, second) for first, second in pairs if second in DEEP_FULL_ARMS]
    claims, settings = [], dict(reps=INTERVAL_RESAMPLES, confidence=INTERVAL_CONFIDENCE, seed=0, across=None)
    for steps in (CQL_STEPS, DEPTHS[-1]):
        mine = {("medium", arm): numbers for (at, arm), numbers in per_seed.items() if at == steps}
        claims += [{"cql_steps": steps, "rule": "2 SE"} | row for row in claim_rows(mine) if row["claim"] == claim]
        per_run = {("hopper-medium", arm): numbers for (_, arm), numbers in mine.items()}
        claims += [
            {"cql_steps": steps, "rule": "interval (IQM, 95%)"} | row
            for row in intervals.claim_interval_rows(per_run, [(claim, "drop", pairs)], **settings)
        ]
    write_csv(ROOT / out / "depth" / "full" / "summary.csv", summary)
    write_csv(ROOT / out / "depth" / "full" / "claims.csv", claims)
    print(f"wrote {out / 'depth' / 'full'}")


def interval_report(out: Path, curves_of: dict):
    """The interval estimates pre-registered above (benchmark/intervals.py): intervals/iqm.csv (IQM and interval per
    arm, dataset and metric, and across datasets), intervals/claims.csv (every claim on late and auc, and (b), (d),
    (e) also on their own metric, by the interval rule), intervals/curves.csv and the figures."""
    intervals = benchmark_module("intervals")
    per_run = {key: [curve_numbers(steps, scores) for steps, scores in curves] for key, curves in curves_of.items()}
    if not per_run:
        return
    folder = ROOT / out / "intervals"
    settings = dict(reps=INTERVAL_RESAMPLES, confidence=INTERVAL_CONFIDENCE, seed=0)
    tasks = list(dict.fromkeys(task for task, _ in per_run))
    hopper = dict(tasks=[t for t in tasks if t.startswith("hopper-")], across="all Hopper datasets")
    alone = [dict(tasks=[t], across=None) for t in tasks if not t.startswith("hopper-")]  # Walker2d: on its own
    iqm = [row for scope in (hopper, *alone) for row in intervals.iqm_rows(per_run, INTERVAL_METRICS, **scope, **settings)]
    for row in iqm:
        row["pretraining"] = PRETRAINING[row["arm"]]
    write_csv(folder / "iqm.csv", iqm)
    claims = [(claim, metric, pairs) for claim, _, pairs in CLAIMS for metric in INTERVAL_METRICS]
    claims += [(claim, metric, pairs) for claim, metric, pairs in CLAIMS if metric not in ("final",)]
    interval_claims = [
        row for scope in (hopper, *alone) for row in intervals.claim_interval_rows(per_run, claims, **scope, **settings)
    ]
    write_csv(folder / "claims.csv", interval_claims)
    curve_rows = intervals.curve_rows(curves_of, **settings)
    write_csv(folder / "curves.csv", curve_rows)
    labels = {arm: LABELS[arm] for arm in LABELS}
    colours = benchmark_module("plot").METHOD_COLOURS  # the same colour for a method in every figure
    methods = FIGURES.get("fig3_methods", ("", list(LABELS)))[1]
    intervals.plot_iqm_curves([r for r in curve_rows if r["arm"] in methods], folder / "iqm_curves.png", colours, labels)
    comparisons = [
        r
        for scope in (hopper, *alone)
        for r in intervals.claim_interval_rows(per_run, claims[:1], **scope, **settings)
        if r["first"] and r["p_improvement"] != ""
    ]
    if comparisons:  # claim (a) on late: ours against each baseline
        intervals.plot_improvement(
            comparisons, folder / "probability_of_improvement.png", "balanced-N5", "late", colours, labels
        )
    print(f"wrote {out / 'intervals'}")


def scalar_points(run_dir: Path, tag: str) -> dict:
    """step -> value of one scalar of a run ({} when the run or the tag is missing; a step logged twice: the last)."""
    events = load_events(run_dir)
    if events is None or tag not in events.Tags()["scalars"]:
        return {}
    return {event.step: event.value for event in events.Scalars(tag)}


def cql_pessimism(run: Path, alpha_cql: float, steps: int, q_file: Path) -> dict:
    """What pessimism means for one CQL ensemble: the CQL gap logsumexp Q - Q(data) (losses/cql / alpha_cql, the mean
    of the run's logs over the last 5000 steps up to `steps`), the ensemble policy's score at `steps`, and Qbar vs
    Monte-Carlo of the ensemble policy (diagnose.py's q_vs_mc.csv, when it exists)."""
    window = [value / alpha_cql for step, value in scalar_points(run, "losses/cql").items() if steps - 5000 < step <= steps]
    numbers = {
        "cql_gap": round(float(np.mean(window)), 2) if window else np.nan,
        "cql_score": round(scalar_points(run, "eval/normalized_score").get(steps, np.nan), 2),
    }
    if (ROOT / q_file).exists():
        row = next(csv.DictReader(open(ROOT / q_file)))
        numbers.update(
            {"q_start": float(row["q_start"]), "mc_start": float(row["mc_start"]), "q_minus_mc": float(row["q_minus_mc_mean"])}
        )
    return numbers


def cql_depth_numbers(out: Path, steps: int) -> dict:
    """The pessimism numbers of the hopper-medium ensemble at one CQL depth (alpha_cql 5.0 at every depth)."""
    run = (
        out
        / "runs"
        / ("hopper-medium__cql-pretrain__seed1" if steps == CQL_STEPS else "hopper-medium__cql-pretrain-deep__seed1")
    )
    q_file = out / "depth" / "q_vs_mc" / f"{steps // 1000}k" / "q_vs_mc.csv"
    return {"cql_steps": steps, **cql_pessimism(run, BASE_ALPHA_CQL, steps, q_file)}


def cql_alpha_numbers(out: Path, alpha: float) -> dict:
    """The pessimism numbers of the hopper-medium ensemble (30k steps) with CQL weight alpha."""
    if alpha == BASE_ALPHA_CQL:
        return {"alpha_cql": alpha, **{k: v for k, v in cql_depth_numbers(out, CQL_STEPS).items() if k != "cql_steps"}}
    run, q_file = (
        out / "runs" / f"hopper-medium__cql-pretrain-alpha{alpha:g}__seed1",
        out / "alpha" / "q_vs_mc" / f"{alpha:g}" / "q_vs_mc.csv",
    )
    return {"alpha_cql": alpha, **cql_pessimism(run, alpha, CQL_STEPS, q_file)}


def probe_scores(run_dir: Path) -> list:
    """A probe's evaluations at 0, 1000, ..., PROBE_STEPS (None when it has not finished)."""
    points = scalar_points(run_dir, "eval/normalized_score")
    steps = range(0, PROBE_STEPS + 1, 1000)
    return [points[step] for step in steps] if all(step in points for step in steps) else None


def showcase_reproducibility(out: Path):
    """showcase/reproducibility.csv: the rerun of hopper-medium-replay ours seed 1 against the study's run, step by
    step (the same command on the same kind of CPU: identical values expected)."""
    study = scalar_points(out / "runs" / "hopper-medium-replay__balanced-N5__seed1", "eval/normalized_score")
    rerun = scalar_points(out / "showcase" / "runs" / "hopper-medium-replay__balanced-N5__seed1", "eval/normalized_score")
    if study and rerun and (ROOT / out / "status" / "showcase_rerun.done").exists():
        write_csv(
            ROOT / out / "showcase" / "reproducibility.csv",
            [
                {"step": step, "study": study[step], "rerun": rerun.get(step, ""), "identical": study[step] == rerun.get(step)}
                for step in sorted(study)
            ],
        )


@dataclass
class ProbeAxis:
    """One dose-response test of the first online epoch on hopper-medium: levels of one CQL setting, each probed with
    PROBE_ARMS (seeds 1-3, PROBE_STEPS), read by the pre-registered rule (the extreme level against the base one)."""

    folder: str  # under the output folder: <folder>_probes.csv, _summary.csv, _verdict.csv and the figure
    level_key: str  # the level's CSV column
    levels: tuple
    base: float  # the committed ensemble's level
    extreme: str  # what the last level is called in the verdict's columns
    base_label: str
    job: object  # level -> the probes' job-name prefix
    run_dir: object  # (out, level, arm, seed) -> the probe's run folder
    numbers: object  # (out, level) -> {level_key: level, cql_gap, cql_score, q_start, mc_start, q_minus_mc}
    x_label: str
    x_scale: float  # the figure's x: level / x_scale
    figure: str


DEPTH_AXIS = ProbeAxis(
    "depth",
    "cql_steps",
    DEPTHS,
    CQL_STEPS,
    "deepest",
    "30k",
    lambda steps: f"depth{steps // 1000}k",
    lambda out, steps, arm, seed: out / "depth" / "runs" / f"hopper-medium__{arm}__cql{steps // 1000}k__seed{seed}",
    cql_depth_numbers,
    "CQL pretraining steps (thousands)",
    1000,
    "first_epoch_vs_depth.png",
)
ALPHA_AXIS = ProbeAxis(
    "alpha",
    "alpha_cql",
    (BASE_ALPHA_CQL, *ALPHA_LEVELS),
    BASE_ALPHA_CQL,
    "highest",
    f"{BASE_ALPHA_CQL:g}",
    lambda alpha: f"depth{CQL_STEPS // 1000}k" if alpha == BASE_ALPHA_CQL else f"alpha{alpha:g}",
    lambda out, alpha, arm, seed: (
        DEPTH_AXIS.run_dir(out, CQL_STEPS, arm, seed)
        if alpha == BASE_ALPHA_CQL
        else out / "alpha" / "runs" / f"hopper-medium__{arm}__alpha{alpha:g}__seed{seed}"
    ),
    cql_alpha_numbers,
    "CQL weight alpha_cql (30k steps)",
    1,
    "first_epoch_vs_alpha.png",
)


def first_epoch_report(out: Path):
    """The first-epoch study: depth/ and alpha/ (dose-response of CQL depth and of CQL's weight: CSVs, the
    pre-registered verdicts, figures) and diagnosis/critic_side/ (frozen critics, frozen actor, as is: scores and Qbar
    vs Monte-Carlo per epoch)."""
    for axis in (DEPTH_AXIS, ALPHA_AXIS):
        axis_report(out, axis)
    critic_side_report(out)


def axis_report(out: Path, axis: ProbeAxis):
    """One ProbeAxis: kept = score after epoch 1 / score at 0 per probe; per level the pessimism numbers and the
    probes' means; the verdict of the last level run against the base."""
    rows, kept = [], {}
    for level in axis.levels:
        for arm in PROBE_ARMS:
            for seed in SEEDS:
                scores = probe_scores(axis.run_dir(out, level, arm, seed))
                if scores is None or not (ROOT / out / "status" / f"{axis.job(level)}_{arm}_s{seed}.done").exists():
                    continue
                kept.setdefault((level, arm), []).append(scores[1] / scores[0])
                rows.append(
                    {
                        axis.level_key: level,
                        "arm": arm,
                        "seed": seed,
                        **{f"score_{step}": round(score, 2) for step, score in zip(range(0, PROBE_STEPS + 1, 1000), scores)},
                        "kept_after_epoch_1": round(scores[1] / scores[0], 3),
                    }
                )
    if not any(level != axis.base for level, _ in kept):
        return
    folder = ROOT / out / axis.folder
    write_csv(folder / f"{axis.folder}_probes.csv", rows)
    summary = []
    for level in axis.levels:
        numbers = axis.numbers(out, level)
        for arm in PROBE_ARMS:
            mine = [r for r in rows if r[axis.level_key] == level and r["arm"] == arm]
            if mine:
                column = lambda key, mine=mine: np.array([r[key] for r in mine])
                summary.append(
                    {
                        **numbers,
                        "arm": arm,
                        "n_seeds": len(mine),
                        "start_mean": round(float(column("score_0").mean()), 2),
                        "after_epoch_1_mean": round(float(column("score_1000").mean()), 2),
                        "after_epoch_1_std": round(float(column("score_1000").std()), 2),
                        f"after_epoch_{PROBE_STEPS // 1000}_mean": round(float(column(f"score_{PROBE_STEPS}").mean()), 2),
                        "kept_mean": round(float(column("kept_after_epoch_1").mean()), 3),
                        "kept_std": round(float(column("kept_after_epoch_1").std()), 3),
                    }
                )
    write_csv(folder / f"{axis.folder}_summary.csv", summary)
    # the pre-registered reading: ours' kept at the last level run against the base level
    last = max((level for level, arm in kept if arm == "balanced-N5"), default=axis.base)
    verdict_rows = []
    for arm in PROBE_ARMS:
        if (axis.base, arm) not in kept or (last, arm) not in kept or last == axis.base:
            continue
        high, base = np.array(kept[(last, arm)]), np.array(kept[(axis.base, arm)])
        diff, se, result = compare(high, base)
        verdict = (
            "supported"
            if result == "holds" and high.mean() >= KEEP_SUPPORTED
            else "partly supported (the fall shrinks but stays)"
            if result == "holds"
            else "refuted"
        )
        complete = last == axis.levels[-1] and len(high) == len(SEEDS)
        shown = f"{last // 1000}k" if axis is DEPTH_AXIS else f"{last:g}"
        verdict_rows.append(
            {
                "arm": arm,
                f"{axis.extreme}_{axis.level_key}": last,
                f"kept_{axis.extreme}": round(float(high.mean()), 3),
                f"kept_{axis.base_label}": round(float(base.mean()), 3),
                "difference": round(float(diff), 3),
                "se": round(float(se), 3),
                "comparison": result,
                "verdict": (verdict if arm == "balanced-N5" else "(control)")
                + ("" if complete else f" [interim: {axis.extreme} run so far {shown}]"),
            }
        )
    write_csv(folder / f"{axis.folder}_verdict.csv", verdict_rows)
    plot_axis(folder, axis, summary, rows)


def write_csv(path: Path, rows: list):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        columns = list(dict.fromkeys(key for row in rows for key in row)) or ["empty"]  # every row's, in order
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


def plot_axis(folder: Path, axis: ProbeAxis, summary: list, probe_rows: list):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for arm, color in (("balanced-N5", "#1f77b4"), ("sac-ft", "#ff7f0e")):  # plot.py's METHOD_COLOURS
        rows = [r for r in summary if r["arm"] == arm]
        x = [r[axis.level_key] / axis.x_scale for r in rows]
        left.plot(x, [r["start_mean"] for r in rows], ls=":", marker="o", color=color, label=f"{LABELS[arm]}: at 0")
        left.plot(x, [r["after_epoch_1_mean"] for r in rows], marker="o", color=color, label=f"{LABELS[arm]}: after epoch 1")
        seeds = [r for r in probe_rows if r["arm"] == arm]
        left.scatter(
            [r[axis.level_key] / axis.x_scale for r in seeds], [r["score_1000"] for r in seeds], s=10, color=color, alpha=0.4
        )
    left.set(xlabel=axis.x_label, ylabel="normalized score", title="hopper-medium, first epoch")
    left.legend(fontsize=7)
    levels = [r for r in summary if r["arm"] == "balanced-N5"]
    x = [r[axis.level_key] / axis.x_scale for r in levels]
    right.plot(x, [r["cql_gap"] for r in levels], marker="o", color="k", label="CQL gap: logsumexp Q - Q(data)")
    if all("q_minus_mc" in r for r in levels):
        right.plot(
            x, [r["q_minus_mc"] for r in levels], marker="s", color="tab:green", label="Qbar - Monte-Carlo (ensemble policy)"
        )
    right.axhline(0, color="0.6", lw=0.8)
    right.set(xlabel=axis.x_label, title="pessimism of the loaded critics")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / axis.figure, dpi=120)
    plt.close(fig)


def critic_side_report(out: Path):
    """diagnosis/critic_side/summary.csv (hopper-medium; its as-is runs are the depth-30k probes of ours) and
    diagnosis/walker2d/summary.csv with its verdict (walker2d-medium-expert, block above WALKER_DIAGNOSIS_VARIANTS)."""
    runs = {
        "as is": lambda seed: out / "depth" / "runs" / f"hopper-medium__balanced-N5__cql30k__seed{seed}",
        **{
            variant: (lambda seed, v=variant: out / "diagnosis" / "runs" / f"hopper-medium__balanced-N5-{v}__seed{seed}")
            for variant in DIAGNOSIS_VARIANTS
        },
    }
    critic_side_summary(ROOT / out / "diagnosis" / "critic_side", runs)
    folder = out / "diagnosis" / "walker2d"
    runs = {
        variant: (lambda seed, v=variant: folder / "runs" / f"{WALKER}__balanced-N5-{v}__seed{seed}")
        for variant in WALKER_DIAGNOSIS_VARIANTS
    }
    rows = critic_side_summary(ROOT / folder, runs)
    after = {variant: [probe_scores(run_of(seed)) for seed in SEEDS] for variant, run_of in runs.items()}
    if not rows or any(None in scores for scores in after.values()):
        return
    q = {(r["variant"], int(r["step"])): r["q_minus_mc_mean"] for r in rows}
    if q.get(("as-is", 0), "") == "" or q.get(("as-is", 1000), "") == "":
        return
    frozen, as_is = (np.array([s[1] for s in after[v]]) for v in ("frozen-critics", "as-is"))
    diff, se, result = compare(frozen, as_is)
    same_cause = result == "holds" and float(q[("as-is", 1000)]) > 0 > float(q[("as-is", 0)])
    verdict = {
        "comparison": "frozen-critics vs as-is, score after the first epoch",
        "difference": round(diff, 2),
        "se": round(se, 2),
        "result": result,
        "q_minus_mc_before": q[("as-is", 0)],
        "q_minus_mc_after_epoch_1": q[("as-is", 1000)],
        "verdict": "same cause as on hopper-medium" if same_cause else "not the same cause",
    }
    write_csv(ROOT / folder / "verdict.csv", [verdict])


def critic_side_summary(folder: Path, runs: dict) -> list:
    """summary.csv in folder: per variant and epoch, the score of the runs (runs: variant -> seed -> run folder) and
    Qbar vs Monte-Carlo of the policy after that epoch from folder/q_vs_mc.csv (mean and std over seeds); step 0 is
    the CQL policy itself (label "CQL 30k, step 0"). Returns the rows."""
    q_rows = list(csv.DictReader(open(folder / "q_vs_mc.csv"))) if (folder / "q_vs_mc.csv").exists() else []
    rows = []
    for variant, run_of in runs.items():
        for step in range(0, PROBE_STEPS + 1, 1000):
            scores = [probe_scores(run_of(seed)) for seed in SEEDS]
            scores = [s[step // 1000] for s in scores if s is not None]
            labels = [f"{variant}, seed {seed}, step {step}" for seed in SEEDS] if step else ["CQL 30k, step 0"]
            q = [r for r in q_rows if r["label"] in labels]
            if not scores:
                continue
            rows.append(
                {
                    "variant": variant,
                    "step": step,
                    "n_seeds": len(scores),
                    "score_mean": round(float(np.mean(scores)), 2),
                    "score_std": round(float(np.std(scores)), 2),
                    **(
                        {
                            "q_mean": round(float(np.mean([float(r["q_mean"]) for r in q])), 2),
                            "mc_mean": round(float(np.mean([float(r["mc_mean"]) for r in q])), 2),
                            "q_minus_mc_mean": round(float(np.mean([float(r["q_minus_mc_mean"]) for r in q])), 2),
                            "q_minus_mc_std": round(float(np.std([float(r["q_minus_mc_mean"]) for r in q])), 2),
                        }
                        if q
                        else {"q_mean": "", "mc_mean": "", "q_minus_mc_mean": "", "q_minus_mc_std": ""}
                    ),
                }
            )
    if rows:
        write_csv(folder / "summary.csv", rows)
    return rows


def write_fqe_convergence(out: Path):
    """fqe_convergence.csv: FQE's estimate of the CQL policy's value at the episodes' start states against the
    Monte-Carlo return it measured, at every evaluation (why FQE_STEPS is 100k)."""
    events = load_events(out / "runs" / f"hopper-{FULL_ARMS_ON}__fqe__seed1")
    tags = ("eval/q_estimate_env_starts", "eval/mc_return")
    if events is None or not set(tags) <= set(events.Tags()["scalars"]):
        return
    curves = [{e.step: e.value for e in events.Scalars(tag)} for tag in tags]  # a resumed step: the last value
    path = out / f"hopper-{FULL_ARMS_ON}" / "diagnostics" / "fqe_convergence.csv"
    (ROOT / path.parent).mkdir(parents=True, exist_ok=True)
    with open(ROOT / path, "w", newline="") as f:
        csv.writer(f).writerows(
            [["step", "q_estimate_env_starts", "mc_return"]]
            + [
                [step, round(curves[0][step], 2), round(curves[1][step], 2)]
                for step in sorted(set(curves[0]) & set(curves[1]))
            ]
        )


def write_study_files(study: Path, dataset: str, runs: list, by_name: dict, plot_command: list, out: Path):
    """A study folder stands alone: commands.txt (dataset, pretraining, every run it plots, the plot) and the
    datasets.csv row of its dataset."""
    needed, seen = [], set()

    def add(job):
        for dep in job.deps:
            add(by_name[dep])
        if job.name not in seen:
            seen.add(job.name)
            needed.append(job)

    for job in runs:
        add(job)
    (ROOT / study).mkdir(parents=True, exist_ok=True)
    with open(ROOT / study / "commands.txt", "w") as f:
        f.write(
            "# the dataset, its CQL (and FQE) pretraining, each plotted run (seed), then the figure; from the\n"
            "# repository root. `python benchmark/evidence.py` runs all of them, 2 at a time, and resumes\n"
        )
        f.writelines(" ".join(job.command) + "\n" for job in needed)
        f.write(shlex.join(plot_command) + "\n")
    with open(ROOT / out / ("datasets.csv" if dataset in DATASETS else f"{dataset}/datasets.csv")) as f:
        rows = list(csv.reader(f))
    with open(ROOT / study / "datasets.csv", "w", newline="") as f:
        csv.writer(f).writerows([rows[0]] + [row for row in rows[1:] if row[0] == task_of(dataset)])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmark/results/evidence"), help="output folder")
    parser.add_argument("--workers", type=int, default=2, help="jobs at a time, one torch thread each")
    parser.add_argument("--only", nargs="+", default=[], help="run only jobs whose name contains one of these")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and what is finished")
    parser.add_argument("--report", action="store_true", help="figures, curves and summary of the finished runs")
    args = parser.parse_args()
    if args.report:
        report(args.out)
    else:
        run_campaign(args.out, args.workers, args.dry_run, args.only)


if __name__ == "__main__":
    main()
