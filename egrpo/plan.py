"""The threshold tau and the merge plan (docs/design.md §2): walk the steps in order; a step whose
analytic entropy is at or above tau is its own SDE step, consecutive steps below tau merge until the
merged transition reaches tau, a trailing run that cannot is skipped (ODE). tau comes from the rule
of `threshold.rule`: fixed, a quantile of the step entropies, a reference step's entropy, the
last step whose MEASURED reward std reaches a target, or a manual plan. Stage `threshold` writes it
(egrpo/stages/threshold.py); `egrpo cost` reads it to count what E-GRPO will compute."""
from __future__ import annotations

import numpy as np
import pandas as pd

from egrpo import sde
from egrpo.errors import UserError


def choose_tau(cfg: dict, entropies: list[float], profile: pd.DataFrame | None) -> float | None:
    th = cfg["threshold"]
    limit = th["max_steps"] or len(entropies)
    rule = th["rule"]
    if rule == "fixed":
        return float(th["tau"])
    if rule == "quantile":
        return float(np.quantile(entropies[:limit], th["quantile"]))
    if rule == "reference_step":
        return float(entropies[th["reference_step"]])
    if rule == "target_reward_std":
        if profile is None or "reward_std" not in profile:
            raise UserError("threshold.rule: target_reward_std needs the measured profile (entropy.csv)")
        above = profile.loc[profile["reward_std"] >= th["target_reward_std"], "step"]
        if above.empty:
            raise UserError(f"threshold.target_reward_std: no step has a measured reward std >= "
                            f"{th['target_reward_std']} (max {profile['reward_std'].max():.3g}); lower the target")
        return float(entropies[int(above.max())])
    return None


def merge_plan(sigmas, eta: float, tau: float, max_steps: int | None = None):
    """Walk the steps and return (plan [(start, length, entropy)], skipped steps)."""
    n = len(sigmas) - 1
    limit = max_steps or n
    plan, skipped, i = [], [], 0
    while i < limit:
        for k in range(1, limit - i + 1):
            h = sde.analytic_entropy(sigmas, i, k, eta)
            if h >= tau:
                plan.append((i, k, h))
                i += k
                break
        else:
            skipped = list(range(i, limit))
            break
    return plan, skipped


def schedule_of(cfg: dict, profile: pd.DataFrame | None):
    """The sigma schedule [N+1] the plan is made on: the model's, as the profile measured it (its
    sigma and sigma_next columns), else the static closed form (`sampling.schedule: static`, or null
    on FLUX or a family read from the pipeline itself: the profile is what knows it)."""
    import torch

    sampling = cfg["sampling"]
    if profile is not None and {"step", "sigma", "sigma_next"} <= set(profile.columns):
        rows = profile.sort_values("step")
        if len(rows) != sampling["num_steps"]:
            raise UserError(f"--profile: {len(rows)} steps profiled, sampling.num_steps is {sampling['num_steps']}; "
                            "profile again with this config")
        values = list(rows["sigma"]) + [float(rows["sigma_next"].iloc[-1])]
        return torch.tensor(values, dtype=torch.float64, device="cpu")  # on the CPU: the schedule, read as Python floats
    schedule = sampling.get("schedule") or ("pipeline" if cfg["model"].get("family") in ("sd3", "qwenimage") else None)
    if schedule == "pipeline":
        raise UserError("threshold: sampling.schedule 'pipeline' takes the model's schedule from the profile; "
                        "give --profile (entropy.csv of `egrpo profile`)")
    return sde.sigma_schedule(sampling["num_steps"], sampling["shift"])


def make_plan(cfg: dict, profile: pd.DataFrame | None) -> dict:
    sampling, th = cfg["sampling"], cfg["threshold"]
    sigmas = schedule_of(cfg, profile)
    eta = sampling["eta"]
    entropies = sde.step_entropies(sigmas, eta)
    tau = choose_tau(cfg, entropies, profile)
    if th["rule"] == "manual":
        entries = [(s, k, sde.analytic_entropy(sigmas, s, k, eta)) for s, k in th["plan"]]
        covered = {i for s, k, _ in entries for i in range(s, s + k)}
        skipped = [i for i in range(sampling["num_steps"]) if i not in covered]
    else:
        entries, skipped = merge_plan(sigmas, eta, tau, th["max_steps"])
    if not entries:
        raise UserError(f"threshold: tau = {tau:.4g} nats selects no step (max merged entropy "
                        f"{sde.analytic_entropy(sigmas, 0, (th['max_steps'] or sampling['num_steps']), eta):.4g}); "
                        f"lower threshold.tau / quantile or raise threshold.max_steps")
    return {
        "tau": tau, "rule": th["rule"],
        "plan": [{"start": s, "length": k, "entropy": h} for s, k, h in entries],
        "skipped": skipped,
        "max_steps": th["max_steps"] or sampling["num_steps"],
        "num_steps": sampling["num_steps"], "shift": sampling["shift"], "eta": eta,
        "sigmas": [float(s) for s in sigmas],
        "step_entropies": entropies,
    }
