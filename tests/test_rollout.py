"""Rollouts and algorithms: the two traps of the reference code, and NFE against the formulas."""
import math

import pytest
import torch

from egrpo import sde
from egrpo.algorithms import build_algorithm
from egrpo.rollout import branch, ode_grid, ode_suffix_calls


class RecordingModel:
    """A stand-in FlowModel: v = -x + sigma; records (sigma, batch) of every call and counts NFE."""

    def __init__(self, tokens=3, channels=4):
        self.calls, self.nfe = [], 0
        self.tokens, self.channels = tokens, channels

    def velocity(self, x, sigma, cond):
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1)
        sigma = sigma.expand(x.shape[0]) if sigma.numel() == 1 else sigma
        values = sorted({round(float(v), 6) for v in sigma})
        self.calls.append((values[0] if len(values) == 1 else tuple(values), x.shape[0]))
        self.nfe += x.shape[0]
        return -x + sigma.view(-1, 1, 1)

    def initial_noise(self, n, generator):
        return torch.randn(n, self.tokens, self.channels, generator=generator)


class Cond:
    def expand(self, n):
        return self


def cfg_for(n=8, g=4, **params):
    from egrpo.config import validate
    cfg = {"experiment": "t", "algorithms": ["egrpo", "dancegrpo"], "seeds": [0],
           "reward_settings": {"c": {"prompt_color": 1.0}}, "prompts": {"train": "x", "eval": "y"},
           "sampling": {"num_steps": n, "group_size": g, "resolution": 16}, "algorithm_params": params}
    return validate(cfg)


def test_branch_members_draw_distinct_noise_from_one_shared_state():
    sigmas = sde.sigma_schedule(8, 3.0)
    model = RecordingModel()
    x_s = torch.randn(1, 3, 4)
    v_s = model.velocity(x_s, float(sigmas[2]), None)
    model.calls.clear(); model.nfe = 0
    noise = torch.randn(5, 3, 4, generator=torch.Generator().manual_seed(0))
    x_next, logp, finals = branch(model.velocity, x_s, v_s, Cond(), sigmas, 2, 1, noise, 0.7)
    assert x_next.shape == (5, 3, 4) and logp.shape == (5,)
    assert torch.unique(x_next.flatten(1), dim=0).shape[0] == 5, "every member has its own sample"
    mean, std = sde.sde_mean_std(x_s, v_s, sigmas, 2, 3, 0.7)
    torch.testing.assert_close(x_next, mean + std * noise)
    torch.testing.assert_close(logp, sde.gaussian_log_prob(x_next, mean.expand(5, -1, -1), std))
    # v(x_s) is not recomputed: the first call of the branch is already at sigma_3, batched over G
    assert model.calls[0] == (round(float(sigmas[3]), 6), 5)
    assert all(batch == 5 for _, batch in model.calls)


@pytest.mark.parametrize("s,k,stride", [(2, 1, 1), (8, 4, 1), (8, 3, 2), (0, 5, 3), (12, 4, 1)])
def test_ode_continues_at_s_plus_k_with_exact_sigmas(s, k, stride):
    n = 16
    sigmas = sde.sigma_schedule(n, 3.0)
    model = RecordingModel()
    x_s = torch.randn(1, 3, 4)
    branch(model.velocity, x_s, -x_s, Cond(), sigmas, s, k, torch.randn(2, 3, 4), 0.7, strides=(stride,))
    grid = ode_grid(s + k, n, stride)
    assert grid[0] == s + k and grid[-1] == n
    assert [c[0] for c in model.calls] == [round(float(sigmas[i]), 6) for i in grid[:-1]]
    assert len(model.calls) == ode_suffix_calls(s + k, n, stride) == math.ceil((n - s - k) / stride)


def test_egrpo_rollout_nfe_matches_formula_with_granularities():
    n, g = 16, 6
    cfg = cfg_for(n, g, egrpo={"granular_list": [1, 2, 3]})
    plan = [(0, 1), (1, 1), (5, 1), (8, 2), (10, 3)]
    algo = build_algorithm("egrpo", cfg, plan)
    model = RecordingModel()
    groups = algo.rollout(model, Cond(), 0, torch.Generator().manual_seed(0), 0)
    formula = (10 + 1) + sum(g * math.ceil((n - s - k) / stride) for s, k in plan for stride in (1, 2, 3))
    assert model.nfe == formula == algo.expected_rollout_nfe(groups)
    assert len(groups) == len(plan)
    for group, (s, k) in zip(groups, plan):
        (tr,) = group.transitions
        assert (tr.i, tr.j) == (s, s + k)
        assert tr.x_from.shape[0] == 1 and tr.x_to.shape[0] == g
        assert set(group.finals) == {"g1", "g2", "g3"}
    # training: one forward+backward per plan entry
    assert algo.expected_train_nfe(groups) == len(plan)


def test_egrpo_lanes_equal_sequential_branches_with_fewer_calls():
    n, g = 16, 4
    cfg = cfg_for(n, g, egrpo={"granular_list": [1, 3]})
    plan = [(0, 1), (2, 1), (6, 2), (9, 4)]
    algo = build_algorithm("egrpo", cfg, plan)
    model = RecordingModel()
    groups = algo.rollout(model, Cond(), 0, torch.Generator().manual_seed(5), 0)
    assert model.nfe == algo.expected_rollout_nfe(groups)
    anchor_calls = 9 + 1
    assert len(model.calls) == anchor_calls + ode_suffix_calls(1, n, 1), "one call per step for all lanes"
    sequential = RecordingModel()
    for group, (s, k) in zip(groups, plan):
        tr = group.transitions[0]
        v_s = -tr.x_from + float(algo.sigmas[s])
        for stride in (1, 3):
            noise = (tr.x_to - sde.sde_mean_std(tr.x_from, v_s, algo.sigmas, s, s + k, algo.eta)[0]) / \
                sde.sde_mean_std(tr.x_from, v_s, algo.sigmas, s, s + k, algo.eta)[1]
            _, _, finals = branch(sequential.velocity, tr.x_from, v_s, Cond(), algo.sigmas, s, k, noise, algo.eta,
                                  strides=(stride,))
            torch.testing.assert_close(group.finals[f"g{stride}"], finals[stride], atol=1e-5, rtol=1e-5)


def test_egrpo_max_batch_splits_calls_not_nfe():
    cfg = cfg_for(8, 4)
    cfg["sampling"]["max_batch_size"] = 3
    algo = build_algorithm("egrpo", cfg, [(0, 1), (1, 1), (2, 2)])
    model = RecordingModel()
    groups = algo.rollout(model, Cond(), 0, torch.Generator().manual_seed(0), 0)
    assert model.nfe == algo.expected_rollout_nfe(groups)
    assert max(batch for _, batch in model.calls) == 3


def test_egrpo_anchor_is_shared_by_all_entries():
    cfg = cfg_for(8, 3)
    algo = build_algorithm("egrpo", cfg, [(0, 1), (3, 2)])
    groups = algo.rollout(RecordingModel(), Cond(), 0, torch.Generator().manual_seed(1), 0)
    # x_3 of the anchor is the ODE of x_0: reproduce it
    x0 = groups[0].transitions[0].x_from
    sigmas = algo.sigmas
    x = x0
    for i in range(3):
        x = sde.ode_step(x, -x + float(sigmas[i]), sigmas, i, i + 1)
    torch.testing.assert_close(groups[1].transitions[0].x_from, x)


def test_egrpo_entries_per_iteration_subsets_the_plan():
    cfg = cfg_for(8, 2, egrpo={"entries_per_iteration": 2})
    algo = build_algorithm("egrpo", cfg, [(0, 1), (1, 1), (2, 1), (3, 2)])
    picks = {tuple(algo.entries_for(torch.Generator().manual_seed(s))) for s in range(20)}
    assert all(len(p) == 2 for p in picks) and len(picks) > 1


def test_dancegrpo_rollout_and_train_nfe():
    n, g = 16, 12
    cfg = cfg_for(n, g, dancegrpo={"timestep_fraction": 0.5})
    algo = build_algorithm("dancegrpo", cfg)
    model = RecordingModel()
    groups = algo.rollout(model, Cond(), 0, torch.Generator().manual_seed(0), 0)
    assert model.nfe == g * n == algo.expected_rollout_nfe(groups)
    (group,) = groups
    assert len(group.transitions) == 8
    assert algo.expected_train_nfe(groups) == g * 8
    for tr in group.transitions:
        assert tr.j == tr.i + 1 and tr.x_from.shape[0] == g
        # the stored log-prob is that of the stored transition under the rollout velocity
        v = -tr.x_from + float(algo.sigmas[tr.i])
        mean, std = algo.mean_std(tr.x_from, v, algo.sigmas, tr.i, tr.j, algo.eta)
        torch.testing.assert_close(tr.logp_old, sde.gaussian_log_prob(tr.x_to, mean, std))


def test_dancegrpo_own_sde_option():
    cfg = cfg_for(8, 2, dancegrpo={"sde": "dance", "eta": 0.3})
    algo = build_algorithm("dancegrpo", cfg)
    assert algo.mean_std is sde.dance_mean_std and algo.eta == 0.3


@pytest.mark.parametrize("iteration,expected_start", [(0, 0), (4, 0), (5, 1), (12, 2), (100, 12)])
def test_mixgrpo_window_moves_and_nfe(iteration, expected_start):
    n, g, w = 16, 4, 4
    cfg = cfg_for(n, g, mixgrpo={"window_size": w, "shift_interval": 5, "window_stride": 1})
    algo = build_algorithm("mixgrpo", cfg)
    assert algo.window_start(iteration) == expected_start
    model = RecordingModel()
    groups = algo.rollout(model, Cond(), 0, torch.Generator().manual_seed(0), iteration)
    s = expected_start
    assert model.nfe == (s + 1) + g * (n - s - 1) == algo.expected_rollout_nfe(groups)
    (group,) = groups
    assert [(t.i, t.j) for t in group.transitions] == [(i, i + 1) for i in range(s, s + w)]
    assert group.transitions[0].x_from.shape[0] == 1, "the window's first step branches from the shared prefix"
    assert torch.unique(group.transitions[0].x_to.flatten(1), dim=0).shape[0] == g
    assert algo.expected_train_nfe(groups) == 1 + g * (w - 1)
    # ODE outside the window: the calls after it are at the unit grid's sigmas, batched over G
    assert [c for c in model.calls[s + 1:]] == [(round(float(algo.sigmas[i]), 6), g) for i in range(s + 1, n)]


def test_flowgrpo_is_all_step_sde_with_kl():
    n, g = 8, 3
    cfg = cfg_for(n, g)
    algo = build_algorithm("flowgrpo", cfg)
    assert algo.kl_beta == pytest.approx(0.04) and algo.num_trained == n
    model = RecordingModel()
    groups = algo.rollout(model, Cond(), 0, torch.Generator().manual_seed(0), 0)
    assert model.nfe == g * n and len(groups[0].transitions) == n


def test_plan_users_agree_with_the_snakefile_registry():
    """The Snakefile reads ALGORITHMS_USING_PLAN without importing torch; it must match the classes."""
    import importlib

    from egrpo.algorithms import ALGORITHMS
    from egrpo.config import ALGORITHMS_USING_PLAN, _load_schema

    assert set(ALGORITHMS) == set(_load_schema()["properties"]["algorithms"]["items"]["enum"])
    for name, target in ALGORITHMS.items():
        module, cls = target.split(":")
        assert getattr(importlib.import_module(module), cls).uses_plan == (name in ALGORITHMS_USING_PLAN), name
