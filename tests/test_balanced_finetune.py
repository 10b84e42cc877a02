"""Tests of balanced_finetune.py: sum-tree, eq. (4)/(5) pieces against independent formulas, end-to-end runs
from a cql_pretrain.py checkpoint in every sampling mode, error messages, SIGKILL + --resume, determinism."""

import math
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, load_script, scalars

bf = load_script("balanced_finetune")

PAPER_TAGS = {
    "eval/normalized_score",
    "eval/return",
    "balanced/offline_fraction",
    "balanced/auroc",
    "balanced/w_offline",
    "balanced/w_online",
    "charts/alpha",
    "charts/SPS",
}
TINY = [
    "--env-id",
    "Hopper-v4",
    "--n-ensemble",
    "2",
    "--epoch-length",
    "100",
    "--first-epoch-multiplier",
    "2",
    "--batch-size",
    "32",
    "--ratio-batch-size",
    "32",
    "--hidden-dim",
    "32",
    "--eval-episodes",
    "1",
    "--no-cuda",
]


def subprocess_env(tmp_path):
    return dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1", D4RL_DATASET_DIR=str(tmp_path / "d4rl_cache"))


# ---------------------------------------------------------------------------------
# SumTree
# ---------------------------------------------------------------------------------
def test_sumtree_sampling_frequencies_match_priorities():
    """Chi-square of 200k stratified draws vs priorities/total; stratification only lowers the variance below the
    multinomial one, so chi2 < df + 5 sqrt(2 df) (about 5 sigma under the multinomial null) is a conservative bound."""
    rng = np.random.default_rng(0)
    capacity = 37  # not a power of two: padding leaves must never be drawn
    priorities = rng.uniform(0.1, 3.0, capacity)
    priorities[[0, 5, 6, 36]] = 0.0
    tree = bf.SumTree(capacity)
    tree.update(np.arange(capacity), priorities)
    draws = np.concatenate([tree.sample(1000, rng) for _ in range(200)])
    assert draws.min() >= 0 and draws.max() < capacity
    counts = np.bincount(draws, minlength=capacity)
    positive = priorities > 0
    expected = priorities[positive] / priorities.sum() * len(draws)
    chi2 = ((counts[positive] - expected) ** 2 / expected).sum()
    df = positive.sum() - 1
    assert chi2 < df + 5 * math.sqrt(2 * df), chi2
    assert np.abs(counts / len(draws) - priorities / priorities.sum()).max() < 0.005


def test_sumtree_zero_priority_leaves_never_drawn():
    rng = np.random.default_rng(1)
    tree = bf.SumTree(1000)
    priorities = np.zeros(1000)
    priorities[[1, 2, 500, 998]] = [1e-6, 5.0, 1.0, 3.0]  # tiny, large, and neighbours of zeros at both ends
    tree.update(np.arange(1000), priorities)
    draws = np.concatenate([tree.sample(256, rng) for _ in range(400)])
    assert set(np.unique(draws)) <= {1, 2, 500, 998}
    single = bf.SumTree(16)
    single.update(np.array([15]), np.array([0.3]))  # all mass on the very last leaf
    assert np.all(single.sample(64, rng) == 15)


def test_sumtree_repeated_indices_keep_last_value():
    tree = bf.SumTree(10)
    tree.update(np.array([3, 5, 3, 3, 7, 5]), np.array([1.0, 2.0, 7.0, 4.0, 0.5, 9.0]))
    np.testing.assert_array_equal(tree.get(np.array([3, 5, 7, 0])), [4.0, 9.0, 0.5, 0.0])
    assert tree.total == pytest.approx(13.5)


def test_sumtree_total_and_internal_nodes_after_many_updates():
    rng = np.random.default_rng(2)
    capacity = 3000
    tree = bf.SumTree(capacity)
    reference = np.zeros(capacity)
    for _ in range(2000):
        indices = rng.integers(0, capacity, 64)  # with repeats
        values = rng.exponential(1.0, 64) * (rng.random(64) > 0.1)
        tree.update(indices, values)
        for i, v in zip(indices, values):  # sequential reference: last write wins
            reference[i] = v
    np.testing.assert_array_equal(tree.get(np.arange(capacity)), reference)
    assert tree.total == pytest.approx(reference.sum(), rel=1e-10)
    n = tree.n_leaves
    np.testing.assert_allclose(tree.nodes[1:n], tree.nodes[2 : 2 * n : 2] + tree.nodes[3 : 2 * n : 2], rtol=1e-12)
    rebuilt = bf.SumTree(capacity)
    rebuilt.set_all(reference)  # the resume path rebuilds from leaves
    np.testing.assert_allclose(rebuilt.nodes, tree.nodes, rtol=1e-12)


# ---------------------------------------------------------------------------------
# eq. (5) and eq. (4) pieces
# ---------------------------------------------------------------------------------
def test_ensemble_moments_match_mixture_samples():
    torch.manual_seed(0)
    n, b, a = 4, 3, 2
    mu = torch.randn(n, b, a) * 2.0
    std = torch.rand(n, b, a) + 0.2
    mean, mixture_std = bf.ensemble_moments(mu, std)
    assert mean.shape == (b, a) and mixture_std.shape == (b, a)
    # eq. (5) written as in the paper
    np.testing.assert_allclose(mean, mu.mean(0), atol=1e-6)
    np.testing.assert_allclose(mixture_std**2, (std**2 + mu**2).mean(0) - mu.mean(0) ** 2, atol=1e-4)
    # against samples of the mixture: pick a member uniformly, then draw from it
    n_samples = 400_000
    member = torch.randint(0, n, (n_samples,))
    samples = mu[member] + std[member] * torch.randn(n_samples, b, a)
    np.testing.assert_allclose(samples.mean(0), mean, atol=0.02)
    np.testing.assert_allclose(samples.std(0), mixture_std, rtol=0.01)


def test_ensemble_moments_std_clamped_like_a_members():
    """The mixture std is kept in [e^-20, e^2] (the authors' clamp), below and above; inside it is eq. (5)."""
    mu = torch.tensor([[[0.0, 0.0, 100.0]], [[0.0, 0.0, -100.0]]])  # [N=2, B=1, A=3]
    std = torch.tensor([[[1e-30, 1.0, 1.0]], [[1e-30, 1.0, 1.0]]])
    _, mixture_std = bf.ensemble_moments(mu, std)
    np.testing.assert_allclose(mixture_std[0], [math.exp(-20.0), 1.0, math.exp(2.0)], rtol=1e-5)


def test_density_ratio_loss_formula():
    w_on, w_off = torch.tensor([0.5, 2.0, 0.0]), torch.tensor([1.0, 3.0])
    expected = (-math.log(2 / 2.0 + 1e-10) - math.log(2 / 4.0 + 1e-10)) / 2 - (
        math.log(2 * 0.5 / 1.5 + 1e-10) + math.log(4.0 / 3.0 + 1e-10) + math.log(1e-10)
    ) / 3
    assert bf.density_ratio_loss(w_on, w_off).item() == pytest.approx(expected, rel=1e-6)
    assert bf.density_ratio_loss(torch.ones(5), torch.ones(7)).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.slow
def test_density_ratio_net_recovers_gaussian_ratio():
    """Pointwise minimiser of p_off log((w+1)/2) - p_on log(2w/(w+1)): d/dw = p_off/(w+1) - p_on/(w(w+1)) = 0
    gives w* = p_on/p_off. With p_on = N(0.5, 1), p_off = N(-0.5, 1): w*(x) = exp(x)."""
    torch.manual_seed(0)
    net = bf.DensityRatioNet(obs_dim=1, act_dim=0, hidden_dim=64)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    empty = torch.zeros(512, 0)
    for _ in range(1500):
        x_on, x_off = torch.randn(512, 1) + 0.5, torch.randn(512, 1) - 0.5
        loss = bf.density_ratio_loss(net(x_on, empty), net(x_off, empty))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    grid = torch.linspace(-1.5, 1.5, 61)[:, None]
    with torch.no_grad():
        w = net(grid, torch.zeros(61, 0)).numpy()
    true_ratio = np.exp(grid[:, 0].numpy())
    assert np.corrcoef(w, true_ratio)[0, 1] > 0.97
    assert np.abs(w / true_ratio - 1).mean() < 0.25


def test_priorities_from_ratio_formula_and_clamp():
    w_batch = torch.tensor([0.0, 1e-20, 0.5, 1.0, 32.0, 1e20])
    w_off = torch.tensor([1.0, 4.0, 9.0])
    temperature = 5.0
    normalizer = np.mean(np.array([1.0, 4.0, 9.0]) ** 0.2) + 1e-10
    expected = np.clip(np.array([0.0, 1e-20, 0.5, 1.0, 32.0, 1e20]) ** 0.2 / normalizer, 1e-3, 1e3)
    got = bf.priorities_from_ratio(w_batch, w_off, temperature).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert got[0] == pytest.approx(1e-3) and got[-1] == pytest.approx(1e3)  # both clamps hit


def test_initial_p_max_formula():
    for m, f in ((2_000_000, 0.5), (1000, 0.25), (12345, 0.9)):
        p_max = bf.initial_p_max(m, f)
        assert p_max == pytest.approx(m * f / ((1 - f) * 1000))
        assert 1000 * p_max / (m * 1.0 + 1000 * p_max) == pytest.approx(f)  # online share of mass after 1000 steps


def test_auroc_rank_formula():
    rng = np.random.default_rng(3)
    pos, neg = rng.normal(1, 1, 300), rng.normal(0, 1, 200)
    brute = np.mean((pos[:, None] > neg[None]) + 0.5 * (pos[:, None] == neg[None]))
    assert bf.auroc(pos, neg) == pytest.approx(brute)
    assert bf.auroc(np.array([1.0, 2.0, 2.0]), np.array([2.0, 0.0])) == pytest.approx((1 + 0.5 + 0.5 + 1 + 1 + 0) / 6)


# ---------------------------------------------------------------------------------
# checkpoints and errors
# ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cql_checkpoint(tmp_path_factory, tiny_hopper_dataset):
    """A 2-member CQL ensemble made by cql_pretrain.py itself, as a user would."""
    folder = tmp_path_factory.mktemp("cql")
    path = folder / "cql_Hopper-v4_seed1.pt"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "cql_pretrain.py"),
            "--env-id",
            "Hopper-v4",
            "--dataset-path",
            str(tiny_hopper_dataset),
            "--n-ensemble",
            "2",
            "--offline-steps",
            "50",
            "--hidden-dim",
            "32",
            "--batch-size",
            "32",
            "--eval-every",
            "50",
            "--eval-episodes",
            "1",
            "--checkpoint",
            str(path),
            "--seed",
            "1",
            "--no-cuda",
        ],
        cwd=folder,
        env=subprocess_env(folder),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return path


@pytest.mark.slow
def test_loader_errors(cql_checkpoint, tmp_path):
    ckpt = torch.load(cql_checkpoint, weights_only=True)
    load = lambda path, **kw: bf.load_ensemble_checkpoint(
        str(path), "python cql_pretrain.py ...", kw.get("env", "Hopper-v4"), kw.get("obs", 11), 3, kw.get("k", 2)
    )
    sliced = load(cql_checkpoint, k=1)  # first k of a larger stored ensemble: actor [:k], critic [:2k]
    actor, critic = bf.EnsembleActor(11, 3, [32, 32], 1), bf.EnsembleCritic(11, 3, [32, 32], 1)
    actor.load_state_dict(sliced["actor"], strict=True)
    critic.load_state_dict(sliced["critic"], strict=True)
    torch.testing.assert_close(critic.net[0].weight, ckpt["critic"]["net.0.weight"][:2])
    with pytest.raises(SystemExit, match=r"--n-ensemble 3 but checkpoint .* holds 2"):
        load(cql_checkpoint, k=3)
    with pytest.raises(SystemExit, match=r"dims 11/3 but Hopper-v4 has 17/3"):
        load(cql_checkpoint, obs=17)
    with pytest.raises(SystemExit, match=r"trained for 'Hopper-v4', not for --env-id 'Walker2d-v4'"):
        load(cql_checkpoint, env="Walker2d-v4")
    wrong = tmp_path / "wrong.pt"
    torch.save(dict(ckpt, format="something-else"), wrong)
    with pytest.raises(SystemExit, match="format 'something-else'"):
        load(wrong)
    with pytest.raises(SystemExit, match="not found; create it with: python cql_pretrain.py"):
        load(tmp_path / "absent.pt")


@pytest.mark.slow
def test_missing_checkpoint_names_the_command(run_script, tiny_hopper_dataset):
    result = run_script("balanced_finetune.py", *TINY, "--dataset-path", tiny_hopper_dataset, "--online-steps", "100")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert (
        "checkpoints/cql_Hopper-v4_seed1.pt not found; create it with: python cql_pretrain.py --env-id Hopper-v4 "
        "--n-ensemble 2 --seed 1" in result.stderr
    )


def test_unwritable_checkpoint_path_fails_at_start(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(SystemExit, match="cannot write checkpoint"):
        bf.check_writable(str(tmp_path / "a_file" / "sub" / "ft.pt"))


@pytest.mark.slow
def test_nonfinite_loss_stops_with_loss_name_and_step(run_script, tiny_hopper_dataset, cql_checkpoint, tmp_path):
    result = run_script(
        "balanced_finetune.py",
        *TINY,
        "--dataset-path",
        tiny_hopper_dataset,
        "--online-steps",
        "200",
        "--cql-checkpoint",
        cql_checkpoint,
        "--first-epoch-multiplier",
        "1",
        "--gamma",
        "1e38",
        "--checkpoint",
        "out/ft.pt",
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert re.search(r"error: losses/qf_loss is (nan|inf) at online step 100 ", result.stderr), result.stderr[-500:]
    assert not (tmp_path / "out" / "ft.pt").exists()


@pytest.mark.slow
def test_missing_fqe_checkpoint_names_fqe(run_script, tiny_hopper_dataset, cql_checkpoint):
    result = run_script(
        "balanced_finetune.py",
        *TINY,
        "--dataset-path",
        tiny_hopper_dataset,
        "--online-steps",
        "100",
        "--cql-checkpoint",
        cql_checkpoint,
        "--q-init",
        "fqe",
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert (
        "checkpoints/fqe_Hopper-v4_seed1.pt not found; create it with: python fqe.py --env-id Hopper-v4 "
        f"--n-ensemble 2 --seed 1 --policy-checkpoint {cql_checkpoint} --checkpoint checkpoints/fqe_Hopper-v4_seed1.pt"
        in result.stderr
    )


@pytest.mark.slow
def test_q_init_fqe_takes_critics_from_fqe_and_policy_from_cql(tmp_path, tiny_hopper_dataset, cql_checkpoint):
    """fqe.py writes the critics; with zero learning rates nothing moves, so the saved networks show their source."""
    cql = torch.load(cql_checkpoint, weights_only=True)
    made = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "fqe.py"),
            "--env-id",
            "Hopper-v4",
            "--dataset-path",
            str(tiny_hopper_dataset),
            "--policy-checkpoint",
            str(cql_checkpoint),
            "--checkpoint",
            str(tmp_path / "fqe.pt"),
            "--n-ensemble",
            "2",
            "--steps",
            "20",
            "--batch-size",
            "32",
            "--eval-every",
            "20",
            "--eval-episodes",
            "1",
            "--no-cuda",
        ],
        cwd=tmp_path,
        env=subprocess_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0, made.stderr[-2000:]
    fqe = torch.load(tmp_path / "fqe.pt", weights_only=True)
    assert fqe["algo"] == "fqe"
    assert not torch.equal(fqe["critic"]["net.0.weight"], cql["critic"]["net.0.weight"])
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "balanced_finetune.py"),
            *TINY,
            "--n-ensemble",
            "1",
            "--dataset-path",
            str(tiny_hopper_dataset),
            "--cql-checkpoint",
            str(cql_checkpoint),
            "--q-init",
            "fqe",
            "--fqe-checkpoint",
            str(tmp_path / "fqe.pt"),
            "--online-steps",
            "100",
            "--first-epoch-multiplier",
            "1",
            "--q-lr",
            "0",
            "--policy-lr",
            "0",
            "--checkpoint",
            "out/ft.pt",
            "--run-dir",
            "run",
        ],
        cwd=tmp_path,
        env=subprocess_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    saved = torch.load(tmp_path / "out" / "ft.pt", weights_only=True)
    for key, value in saved["critic"].items():  # first member of the FQE critics: rows [:2]
        torch.testing.assert_close(value, fqe["critic"][key][:2])
    for key, value in saved["actor"].items():
        torch.testing.assert_close(value, cql["actor"][key][:1])
    # and an fqe checkpoint given as the policy source is refused
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "balanced_finetune.py"),
            *TINY,
            "--dataset-path",
            str(tiny_hopper_dataset),
            "--cql-checkpoint",
            str(tmp_path / "fqe.pt"),
            "--online-steps",
            "100",
        ],
        cwd=tmp_path,
        env=subprocess_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr and "is an fqe.py checkpoint" in result.stderr


# ---------------------------------------------------------------------------------
# end to end
# ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory, tiny_hopper_dataset, cql_checkpoint):
    """run(name, sampling) -> (folder, CompletedProcess): 300 online steps, 3 epochs, cached per name."""
    cache = {}

    def run(name, sampling):
        if name not in cache:
            folder = tmp_path_factory.mktemp(name)
            result = subprocess.run(
                [
                    sys.executable,
                    str(REPO_ROOT / "balanced_finetune.py"),
                    *TINY,
                    "--dataset-path",
                    str(tiny_hopper_dataset),
                    "--cql-checkpoint",
                    str(cql_checkpoint),
                    "--sampling",
                    sampling,
                    "--online-steps",
                    "300",
                    "--seed",
                    "3",
                    "--run-dir",
                    "run",
                    "--checkpoint",
                    "out/ft.pt",
                ],
                cwd=folder,
                env=subprocess_env(folder),
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert result.returncode == 0, result.stderr[-3000:]
            cache[name] = (folder, result)
        return cache[name]

    return run


@pytest.mark.slow
@pytest.mark.parametrize("sampling", ["balanced", "uniform", "online-only"])
def test_end_to_end_every_sampling_mode(tiny_runs, sampling):
    folder, result = tiny_runs(sampling, sampling)
    logged = scalars(folder / "run", sps=True)
    assert PAPER_TAGS <= set(logged)
    assert {"losses/qf_loss", "losses/actor_loss", "losses/alpha_loss", "losses/density_ratio_loss"} <= set(logged)
    assert [s for s, _ in logged["eval/normalized_score"]] == [0, 100, 200, 300]  # epoch 0 = pretrained policy
    assert [s for s, _ in logged["balanced/offline_fraction"]] == [100, 200, 300]
    for tag, values in logged.items():
        assert all(np.isfinite(v) for _, v in values), tag
    assert all(0.0 <= v <= 1.0 for _, v in logged["balanced/auroc"])
    fractions = [v for _, v in logged["balanced/offline_fraction"]]
    m = 2000
    if sampling == "online-only":
        assert fractions == [0.0, 0.0, 0.0]
    elif sampling == "uniform":  # 400 then 100 updates of 32 drawn uniformly from M + n_online rows
        np.testing.assert_allclose(fractions, [m / (m + 100), m / (m + 200), m / (m + 300)], atol=0.03)
    else:
        assert all(0.0 < f < 1.0 for f in fractions)
    assert "before fine-tuning" in result.stdout
    # the saved ensemble is in CONTRIBUTING.md's checkpoint format and loads with strict=True into the shared-block classes
    saved = torch.load(folder / "out" / "ft.pt", weights_only=True)
    assert (saved["format"], saved["algo"], saved["n_ensemble"], saved["step"]) == ("o2o-ensemble-v1", "balanced", 2, 300)
    bf.EnsembleActor(11, 3, saved["hidden_sizes"], 2).load_state_dict(saved["actor"], strict=True)
    bf.EnsembleCritic(11, 3, saved["hidden_sizes"], 2).load_state_dict(saved["critic"], strict=True)
    state = saved["resume"]
    assert len(state["online"]["observations"]) == 300
    if sampling == "balanced":
        assert state["tree_leaves"].dtype == torch.float64  # the sum-tree's own dtype, stored as a tensor
        leaves = state["tree_leaves"].numpy()
        assert len(leaves) == m + 300 and np.all(leaves > 0)
        assert state["p_max"] >= bf.initial_p_max(m, 0.5) and state["p_max"] >= leaves.max()  # never decreases


@pytest.mark.slow
def test_same_seed_gives_identical_logged_values(tiny_runs):
    first, _ = tiny_runs("balanced", "balanced")
    second, _ = tiny_runs("balanced_again", "balanced")
    a, b = scalars(first / "run"), scalars(second / "run")
    assert set(a) == set(b)
    for tag in a:
        if tag != "charts/SPS":
            assert a[tag] == b[tag], tag


@pytest.mark.slow
def test_sigkill_then_resume_loses_and_duplicates_nothing(tmp_path, tiny_hopper_dataset, cql_checkpoint):
    args = [
        sys.executable,
        str(REPO_ROOT / "balanced_finetune.py"),
        *TINY,
        "--dataset-path",
        str(tiny_hopper_dataset),
        "--cql-checkpoint",
        str(cql_checkpoint),
        "--online-steps",
        "600",
        "--checkpoint-every",
        "100",
        "--run-dir",
        "run",
        "--checkpoint",
        "out/ft.pt",
    ]
    save_path = tmp_path / "out" / "ft.pt"
    process = subprocess.Popen(
        args, cwd=tmp_path, env=subprocess_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 240
    while not save_path.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed = torch.load(save_path, weights_only=True)
    k = killed["step"]
    assert 0 < k < 600 and len(killed["resume"]["online"]["observations"]) == k

    result = subprocess.run(
        args + ["--resume"], cwd=tmp_path, env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    final = torch.load(save_path, weights_only=True)
    online = final["resume"]["online"]
    assert final["step"] == 600 and final["resume"]["global_step"] == 600
    assert all(len(v) == 600 for v in online.values())
    assert len(final["resume"]["tree_leaves"]) == 2000 + 600  # buffer = dataset + every online step, once
    for key in online:  # nothing before the kill lost or changed
        np.testing.assert_array_equal(online[key][:k], killed["resume"]["online"][key])
    assert len(np.unique(online["observations"], axis=0)) == 600  # nothing duplicated
    logged = scalars(tmp_path / "run")  # curves continue at the right step, purged of the killed run's tail
    steps = [s for s, _ in logged["eval/return"]]
    assert steps == list(range(0, 601, 100))

    # every epoch starts a fresh episode and the RNG states are restored, so the resumed run is the uninterrupted one
    whole = tmp_path / "whole"
    whole.mkdir()
    result = subprocess.run(args, cwd=whole, env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    uninterrupted = torch.load(whole / "out" / "ft.pt", weights_only=False)
    for key in online:
        np.testing.assert_array_equal(online[key], uninterrupted["resume"]["online"][key])
    assert logged == scalars(whole / "run")  # every curve, the epoch statistics logged at the checkpoint's step included
