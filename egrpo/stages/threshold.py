"""Stage `threshold`: choose tau (nats of analytic entropy) and merge low-entropy steps into a plan.

Rules for tau (`threshold.rule`):
    fixed              tau = threshold.tau
    quantile           tau = quantile q of the step entropies H(i, 1), i < M
    reference_step     tau = H(r, 1) of step r = threshold.reference_step
    target_reward_std  tau = H(i*, 1), i* the last step whose MEASURED reward std >= the target
    manual             the plan is threshold.plan as given (for ablations); tau is reported as null
Merge walk over steps 0 … M-1 (M = threshold.max_steps, default N): a step with H(i,1) >= tau is
its own SDE step; from a step below tau, the smallest k with H(i,k) >= tau and i+k <= M merges
steps i … i+k-1 into one transition; a trailing run that cannot reach tau stays ODE ("skipped").
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from egrpo.errors import UserError
from egrpo.plan import make_plan
from egrpo.runtime.io import atomic_write_json
from egrpo.runtime.tracking import stage_run


NAME = "threshold"
HELP = "Choose tau and the merge plan (plan.json)."
INPUTS = ("profile",)


def add_arguments(p) -> None:
    p.add_argument("--profile", help="entropy.csv of `egrpo profile` (needed by rule target_reward_std)")
    p.add_argument("--out", required=True, help="plan.json to write")


def run(args, cfg) -> None:
    plan = run_threshold(cfg, args.profile, args.out)
    logging.getLogger("egrpo").info("tau = %s, %d plan entries, skipped steps %s", plan["tau"], len(plan["plan"]),
                                    plan["skipped"])


def run_threshold(cfg: dict, profile_csv, out_json) -> dict:
    if profile_csv and not Path(profile_csv).is_file():
        raise UserError(f"--profile: file not found: {profile_csv}")
    profile = pd.read_csv(profile_csv) if profile_csv else None
    with stage_run(cfg, "threshold", {"rule": cfg["threshold"]["rule"]}, out=out_json) as (mlflow, run):
        plan = make_plan(cfg, profile)
        plan["mlflow_run_id"] = run.info.run_id
        if plan["tau"] is not None:
            mlflow.log_metric("tau", plan["tau"])
        mlflow.log_metrics({"plan_entries": len(plan["plan"]), "skipped_steps": len(plan["skipped"])})
        atomic_write_json(out_json, plan)
        mlflow.log_artifact(str(out_json))
    return plan
