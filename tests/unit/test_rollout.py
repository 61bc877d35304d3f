"""Rollouts and algorithms: the two traps of the reference code, and NFE against the formulas."""
import math

import pytest
import torch

from egrpo import sde
from egrpo.algorithms import build_algorithm
from egrpo.rollout import branch, ode_grid, ode_suffix_calls, sde_trajectory


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


@pytest.mark.parametrize("start,stride,official,expected", [
    (8, 2, True, [8, 9, 11, 13, 16]), (9, 2, True, [9, 10, 12, 14, 16]), (9, 2, False, [9, 11, 13, 15, 16]),
    (8, 1, True, list(range(8, 17))), (14, 3, True, [14, 16]), (15, 2, True, [15, 16])])
def test_stride_grids(start, stride, official, expected):
    """VisualGRPO's granular schedule: one unit step to start+1, stride g from there, and the x0-prediction
    of the last evaluated point (the last progression point replaced by sigma_N); both grids cost the same."""
    assert ode_grid(start, 16, stride, official) == expected
    assert len(expected) - 1 == ode_suffix_calls(start, 16, stride)


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
                                  strides=(stride,), official_grid=algo.official_grid)
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


def test_dancegrpo_recipe_rollout_step_sets_and_nfe():
    """DanceGRPO's recipe: one initial noise for the group (its first velocity computed once), its
    own SDE at eta 0.3, each member trains int(0.6*(N-1)) steps of 0 … N-2 drawn by its own
    permutation, and the reward sees the x0-prediction of the last step."""
    n, g = 16, 12
    algo = build_algorithm("dancegrpo", cfg_for(n, g))
    assert algo.mean_std is sde.dance_mean_std and algo.eta == 0.3 and algo.num_trained == 9 == int(0.6 * (n - 1))
    model = RecordingModel()
    groups = algo.rollout(model, Cond(), 0, torch.Generator().manual_seed(0), 0)
    assert model.nfe == 1 + g * (n - 1) == algo.expected_rollout_nfe(groups)
    assert model.calls[0] == (1.0, 1) and model.calls[1][1] == g, "shared x_0: one call, then G trajectories"
    (group,) = groups
    step_sets = group.info["trained_steps"]
    assert len(step_sets) == g and all(len(steps) == 9 and max(steps) <= n - 2 for steps in step_sets)
    assert len({tuple(steps) for steps in step_sets}) > 1, "an independent permutation per member"
    for tr in group.transitions:
        assert tr.j == tr.i + 1 and tr.members == [m for m in range(g) if tr.i in step_sets[m]]
        assert tr.x_from.shape[0] == (1 if tr.i == 0 else len(tr.members)) and tr.x_to.shape[0] == len(tr.members)
        # the stored log-prob is that of the stored transition under the rollout velocity
        v = -tr.x_from + float(algo.sigmas[tr.i])
        mean, std = algo.mean_std(tr.x_from, v, algo.sigmas, tr.i, tr.j, algo.eta)
        torch.testing.assert_close(tr.logp_old, sde.gaussian_log_prob(tr.x_to, mean.expand_as(tr.x_to), std))
    assert sum(len(tr.members) for tr in group.transitions) == g * 9
    # the rewarded latents: x0-prediction of the last step, x_{N-1} - sigma_{N-1} * v(x_{N-1}), not x_N
    generator = torch.Generator().manual_seed(0)
    x0 = RecordingModel().initial_noise(1, generator)
    states, _, _ = sde_trajectory(RecordingModel().velocity, x0, Cond(), algo.sigmas, 0.3, generator,
                                  set(range(n)), g, sde.dance_mean_std)
    sigma_last = float(algo.sigmas[n - 1])
    x_last = states[n - 1]
    torch.testing.assert_close(group.finals["g1"], x_last - sigma_last * (-x_last + sigma_last))
    assert not torch.allclose(group.finals["g1"], states[n])


def test_dancegrpo_reward_on_x0_prediction_differs_from_the_sample():
    n, g = 8, 3
    x0_pred = build_algorithm("dancegrpo", cfg_for(n, g)).rollout(
        RecordingModel(), Cond(), 0, torch.Generator().manual_seed(1), 0)[0].finals["g1"]
    sample = build_algorithm("dancegrpo", cfg_for(n, g, dancegrpo={"reward_on": "sample"})).rollout(
        RecordingModel(), Cond(), 0, torch.Generator().manual_seed(1), 0)[0].finals["g1"]
    assert not torch.allclose(x0_pred, sample), "the last SDE step's noise is not rewarded under x0_pred"


@pytest.mark.parametrize("selection", ["per_group", "first"])
def test_dancegrpo_step_selection_options(selection):
    n, g = 10, 4
    algo = build_algorithm("dancegrpo", cfg_for(n, g, dancegrpo={"step_selection": selection, "exclude_last_step": False,
                                                                 "same_initial_noise": False, "sde": "egrpo"}))
    assert algo.mean_std is sde.sde_mean_std and algo.num_trained == int(0.6 * n)
    model = RecordingModel()
    (group,) = algo.rollout(model, Cond(), 0, torch.Generator().manual_seed(0), 0)
    assert model.nfe == g * n == algo.expected_rollout_nfe([group]), "independent noises: no shared call"
    sets = {tuple(steps) for steps in group.info["trained_steps"]}
    assert len(sets) == 1
    if selection == "first":
        assert sets == {tuple(range(int(0.6 * n)))}
    assert all(tr.members == list(range(g)) for tr in group.transitions)


@pytest.mark.parametrize("iteration,expected_start,roll_back", [(0, 0, True), (4, 0, True), (5, 1, True),
                                                                (12, 2, True), (100, 6, True), (100, 13, False)])
def test_mixgrpo_window_moves_rolls_back_and_nfe(iteration, expected_start, roll_back):
    """w(t) = (floor(t/si) mod P)*stride (roll_back) with P = N-2 positions whose window is not empty;
    the window never covers the last two steps."""
    n, g, w = 16, 4, 4
    cfg = cfg_for(n, g, mixgrpo={"window_size": w, "shift_interval": 5, "window_stride": 1, "roll_back": roll_back})
    algo = build_algorithm("mixgrpo", cfg)
    assert algo.window_start(iteration) == expected_start
    model = RecordingModel()
    groups = algo.rollout(model, Cond(), 0, torch.Generator().manual_seed(0), iteration)
    s = expected_start
    assert model.nfe == (s + 1) + g * (n - s - 1) == algo.expected_rollout_nfe(groups)
    (group,) = groups
    window = list(range(s, min(s + w, n - 2)))
    assert [(t.i, t.j) for t in group.transitions] == [(i, i + 1) for i in window]
    assert group.transitions[0].x_from.shape[0] == 1, "the window's first step branches from the shared prefix"
    assert torch.unique(group.transitions[0].x_to.flatten(1), dim=0).shape[0] == g
    # optimizer steps every 3 samples: chunks [0, 1, 2], [3]; the shared first step costs one forward per chunk
    assert algo.member_chunks() == [[0, 1, 2], [3]]
    assert algo.expected_train_nfe(groups) == 2 + g * (len(window) - 1)
    # ODE outside the window: the calls after it are at the unit grid's sigmas, batched over G
    assert [c for c in model.calls[s + 1:]] == [(round(float(algo.sigmas[i]), 6), g) for i in range(s + 1, n)]


def test_mixgrpo_recipe_defaults():
    algo = build_algorithm("mixgrpo", cfg_for(25, 12))
    assert (algo.window, algo.shift_interval, algo.stride, algo.roll_back) == (4, 25, 1, True)
    assert [algo.window_start(t) for t in (0, 24, 25, 50, 22 * 25, 23 * 25)] == [0, 0, 1, 2, 22, 0], "rolls back after N-3"
    assert algo.advantage.combination == "normalize_then_sum" and algo.member_chunks() == [[0, 1, 2], [3, 4, 5],
                                                                                          [6, 7, 8], [9, 10, 11]]


def test_flowgrpo_recipe_is_all_step_sde_first_steps_in_order():
    n, g = 8, 3
    algo = build_algorithm("flowgrpo", cfg_for(n, g))
    assert algo.kl_beta == pytest.approx(0.01) and algo.num_trained == int(0.99 * n) == 7   # pickscore_sd3's beta
    assert algo.advantage.global_std and not algo.advantage.unbiased and algo.advantage.eps == 1e-4
    assert algo.eta == 0.7 and algo.mean_std is sde.sde_mean_std and not algo.timestep_rounding
    model = RecordingModel()
    groups = algo.rollout(model, Cond(), 0, torch.Generator().manual_seed(0), 0)
    assert model.nfe == g * n and [tr.i for tr in groups[0].transitions] == list(range(7))
    assert model.calls[0] == (1.0, g), "independent initial noises"
    # two optimizer steps per iteration (gradient_accumulation = num_batches_per_epoch / 2)
    assert algo.member_chunks() == [[0, 1], [2]]


@pytest.mark.parametrize("mode,expected_steps", [("per_entry", 3), ("every_n_samples", 3), ("n_per_iteration", 2),
                                                 ("per_iteration", 1)])
def test_optimizer_steps_per_iteration_for_each_mode(mode, expected_steps):
    """E-GRPO, plan of 3 entries, G = 5, 2 prompts: per_entry steps once per entry over both prompts;
    every_n_samples (2) once per chunk of members [0,1], [2,3], [4]; n_per_iteration (2) in two
    chunks [0,1,2], [3,4]; per_iteration once."""
    n, g = 8, 5
    cfg = cfg_for(n, g, egrpo={"optimizer_step": mode, "samples_per_step": 2, "steps_per_iteration": 2})
    algo = build_algorithm("egrpo", cfg, [(0, 1), (1, 2), (4, 1)])
    groups = [grp for p in range(2) for grp in algo.rollout(RecordingModel(), Cond(), p, torch.Generator().manual_seed(p), 0)]
    units = algo.update_units(groups)
    assert len(units) == expected_steps
    pairs = [(gi, tr.i, m) for unit in units for gi, tr in unit for m in tr.member_ids()]
    assert sorted(pairs) == sorted((gi, grp.transitions[0].i, m) for gi, grp in enumerate(groups) for m in range(g)), \
        "every (group, transition, member) pair is trained exactly once per epoch"
    if mode == "per_entry":
        assert [{tr.i for _, tr in unit} for unit in units] == [{0}, {1}, {4}]
        assert all(len(unit) == 2 for unit in units), "each entry's step averages over both prompts"
    # shared x_s: one forward per (transition, unit)
    assert algo.expected_train_nfe(groups) == sum(len(unit) for unit in units)


def test_the_algorithm_facts_match_the_classes_and_the_schema():
    """The Snakefile, the config and the CLI read egrpo/algorithms/facts.py without importing torch;
    every entry names a class of that name, and the schema's enum lists exactly these algorithms."""
    import importlib

    from egrpo.algorithms.facts import ALGORITHMS
    from egrpo.config import _load_schema

    assert set(ALGORITHMS) == set(_load_schema()["properties"]["algorithms"]["items"]["enum"])
    for name, facts in ALGORITHMS.items():
        module, cls = facts.target.split(":")
        assert getattr(importlib.import_module(module), cls).name == name
    cfg_plan = {name for name, facts in ALGORITHMS.items() if facts.uses_plan}
    assert cfg_plan == {"egrpo"}
