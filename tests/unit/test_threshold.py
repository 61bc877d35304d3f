"""Threshold rules and the merge walk."""
import pandas as pd
import pytest

from egrpo import sde
from egrpo.config import validate
from egrpo.errors import UserError
from egrpo.plan import make_plan, merge_plan


def cfg_with(**threshold):
    return validate({"experiment": "t", "algorithms": ["egrpo"], "seeds": [0],
                     "reward_settings": {"c": {"prompt_color": 1.0}}, "prompts": {"train": "x", "eval": "y"},
                     "sampling": {"num_steps": 16, "shift": 3.0, "eta": 0.7}, "threshold": threshold})


def test_merge_walk_reaches_tau_and_skips_the_tail():
    sigmas = sde.sigma_schedule(16, 3.0)
    h = sde.step_entropies(sigmas, 0.7)
    tau = h[7]
    plan, skipped = merge_plan(sigmas, 0.7, tau)
    assert [(s, k) for s, k, _ in plan[:8]] == [(i, 1) for i in range(8)]
    end = 0
    for s, k, e in plan:
        assert s == end and e >= tau and e == pytest.approx(sde.analytic_entropy(sigmas, s, k, 0.7))
        if k > 1:  # merged just enough: one step shorter stays below tau
            assert sde.analytic_entropy(sigmas, s, k - 1, 0.7) < tau
        end = s + k
    assert skipped == list(range(end, 16))
    assert all(sde.analytic_entropy(sigmas, end, k, 0.7) < tau for k in range(1, 16 - end + 1))


def test_rules():
    sigmas = sde.sigma_schedule(16, 3.0)
    h = sde.step_entropies(sigmas, 0.7)
    assert make_plan(cfg_with(rule="fixed", tau=0.5), None)["tau"] == 0.5
    assert make_plan(cfg_with(rule="reference_step", reference_step=5), None)["tau"] == pytest.approx(h[5])
    q = make_plan(cfg_with(rule="quantile", quantile=0.25, max_steps=8), None)
    assert q["tau"] == pytest.approx(pd.Series(h[:8]).quantile(0.25))
    assert max(e["start"] + e["length"] for e in q["plan"]) <= 8 and q["max_steps"] == 8
    profile = pd.DataFrame({"step": range(16), "reward_std": [0.1] * 6 + [0.001] * 10})
    t = make_plan(cfg_with(rule="target_reward_std", target_reward_std=0.05), profile)
    assert t["tau"] == pytest.approx(h[5])
    manual = make_plan(cfg_with(rule="manual", plan=[[0, 1], [4, 3]]), None)
    assert [(e["start"], e["length"]) for e in manual["plan"]] == [(0, 1), (4, 3)]
    assert manual["skipped"] == [1, 2, 3] + list(range(7, 16))


def test_threshold_that_selects_no_step_is_an_error():
    with pytest.raises(UserError, match="selects no step"):
        make_plan(cfg_with(rule="fixed", tau=50.0), None)
    profile = pd.DataFrame({"step": range(16), "reward_std": [0.0] * 16})
    with pytest.raises(UserError, match="no step has a measured reward std"):
        make_plan(cfg_with(rule="target_reward_std", target_reward_std=0.05), profile)
