"""benchmark/diagnose.py: Q against Monte-Carlo returns, and the runs' own diagnostics averaged over seeds."""

import csv

import numpy as np
import pytest
import torch

from conftest import load_script

diagnose = load_script("benchmark/diagnose.py", "diagnose_under_test")
bf = diagnose.bf


class ConstantRewardEnv:
    """Reward 1 at every step, never terminal, cut by a time limit after `length` steps."""

    def __init__(self, length):
        self.length, self.t = length, 0

    def reset(self, seed=None):
        self.t = 0
        return np.zeros(11, dtype=np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(11, dtype=np.float32), 1.0, False, self.t >= self.length, {}


def constant_q_checkpoint(path, q_value, members=2):
    actor = bf.EnsembleActor(11, 3, [8, 8], members)
    critic = bf.EnsembleCritic(11, 3, [8, 8], members)
    with torch.no_grad():
        critic.net[-1].weight.zero_()
        critic.net[-1].bias.fill_(q_value)
    bf.save_checkpoint(
        str(path),
        {
            "format": bf.CHECKPOINT_FORMAT,
            "algo": "cql",
            "env_id": "Hopper-v4",
            "obs_dim": 11,
            "act_dim": 3,
            "n_ensemble": members,
            "hidden_sizes": [8, 8],
            "actor": actor.state_dict(),
            "critic": critic.state_dict(),
        },
    )
    return path


def test_discounted_returns_to_go_match_the_definition():
    rewards = np.array([1.0, -2.0, 0.5, 3.0])
    expected = [sum(0.9**k * r for k, r in enumerate(rewards[t:])) for t in range(4)]
    np.testing.assert_allclose(diagnose.discounted_returns_to_go(rewards, 0.9), expected)


def test_q_against_monte_carlo_with_known_q_and_returns(tmp_path):
    """Q is 3 everywhere; returns are geometric sums; states within `tail` of a time-limit cut are left out."""
    path = constant_q_checkpoint(tmp_path / "c.pt", 3.0)
    actor, critic, k = diagnose.load_policy_and_critics(str(path), "Hopper-v4", 11, 3)
    stats = diagnose.q_against_monte_carlo(actor, critic, k, ConstantRewardEnv(5), episodes=2, seed=0, gamma=0.9, tail=2)
    g = [sum(0.9**j for j in range(5 - t)) for t in range(5)]
    assert stats["states"] == 2 * 3
    assert stats["q_mean"] == pytest.approx(3.0) and stats["q_start"] == pytest.approx(3.0)
    assert stats["mc_start"] == pytest.approx(g[0])
    assert stats["mc_mean"] == pytest.approx(np.mean(g[:3]))
    assert stats["q_minus_mc_mean"] == pytest.approx(3.0 - np.mean(g[:3]))
    assert stats["member_q_std_start"] == pytest.approx(0.0) and stats["mean_return"] == pytest.approx(5.0)


def test_critics_from_another_checkpoint(tmp_path):
    """POLICY:CRITIC takes the critics of the second file (FQE-init), the policy of the first."""
    policy = constant_q_checkpoint(tmp_path / "p.pt", 1.0)
    critics = constant_q_checkpoint(tmp_path / "q.pt", 7.0)
    actor, critic, k = diagnose.load_policy_and_critics(f"{policy}:{critics}", "Hopper-v4", 11, 3)
    stats = diagnose.q_against_monte_carlo(actor, critic, k, ConstantRewardEnv(3), 1, 0, 0.9, 0)
    assert stats["q_mean"] == pytest.approx(7.0)
    torch.testing.assert_close(actor.state_dict(), torch.load(policy, weights_only=True)["actor"])


def test_run_curves_average_seeds_over_common_steps(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    for seed, values in ((1, {0: 1.0, 1000: 3.0, 2000: 5.0}), (2, {0: 3.0, 1000: 7.0})):
        with SummaryWriter(str(tmp_path / f"run__seed{seed}")) as writer:
            for step, value in values.items():
                writer.add_scalar("charts/alpha", value, step)
    curves = diagnose.run_curves(str(tmp_path / "run__seed*"))
    steps, values = curves["charts/alpha"]
    assert list(steps) == [0, 1000] and values.mean(0).tolist() == [2.0, 5.0]
    assert set(curves) == {"charts/alpha"}


def test_cli_writes_csv_and_refuses_bad_input(tmp_path, run_script):
    done = run_script("benchmark/diagnose.py", "--out-dir", tmp_path / "o")
    assert done.returncode == 2 and "nothing to diagnose" in done.stderr and "Traceback" not in done.stderr
    done = run_script("benchmark/diagnose.py", "--policy", f"X={tmp_path / 'none.pt'}", "--out-dir", tmp_path / "o")
    assert done.returncode != 0 and "none.pt" in done.stderr and "Traceback" not in done.stderr
    path = constant_q_checkpoint(tmp_path / "c.pt", 2.0)
    done = run_script("benchmark/diagnose.py", "--policy", f"C={path}", "--episodes", "1", "--out-dir", tmp_path / "o")
    assert done.returncode == 0, done.stderr
    row = next(csv.DictReader(open(tmp_path / "o" / "q_vs_mc.csv")))
    assert row["label"] == "C" and float(row["q_mean"]) == pytest.approx(2.0) and row["n_members"] == "2"
