"""The run table: one row per evaluated policy (its identity, every evaluation metric, its training
cost), read from the stages' files (`collect`) or from the MLflow store (`per_policy_from_mlflow`);
the per-style table; and the held-out curves of the train runs as one long table."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from egrpo.errors import UserError
from egrpo.runtime.tracking import flatten, mlflow_for


def gpu_hours(metrics: dict) -> float:
    """Wall-clock x GPUs of a training run, in hours (NaN for CPU runs)."""
    if metrics.get("device", "cpu") != "cuda":
        return float("nan")
    return metrics["wall_s"] * metrics.get("processes", 1) / 3600


def collect(train_metrics: list[str], eval_summaries: list[str]) -> pd.DataFrame:
    """One row per evaluated policy: its identity, every eval metric, and its training cost."""
    train = {}
    for path in train_metrics:
        m = json.loads(Path(path).read_text())
        train[f"{m['algorithm']}-{m['reward_setting']}-seed{m['seed']}"] = m
    rows = []
    for path in eval_summaries:
        s = json.loads(Path(path).read_text())
        row = {"policy": s["name"], **{r: v["mean"] for r, v in s["metrics"].items()},
               **{f"{r}_se": v["se"] for r, v in s["metrics"].items() if "se" in v}}
        if s["name"] == "base":
            row.update(algorithm="base", reward_setting="-", seed=None)
        else:
            m = train[s["name"]]
            row.update(algorithm=m["algorithm"], reward_setting=m["reward_setting"], seed=m["seed"],
                       nfe_total=m["nfe_total"], forward_equivalents=m["forward_equivalents"],
                       wall_s=m["wall_s"], gpu_hours=gpu_hours(m), final_train_reward=m["final_train_reward"],
                       time_limit_stops=m.get("time_limit_stops", 0),
                       health=(m.get("health") or {}).get("verdict", "not judged"),
                       health_flags=" / ".join(f["line"] for f in (m.get("health") or {}).get("flags", [])))
        rows.append(row)
    return pd.DataFrame(rows)


def per_style_table(eval_summaries: list[str]) -> pd.DataFrame:
    """Mean and std over seeds of every metric per prompt style (HPS v2 benchmark: anime,
    concept-art, paintings, photo), for prompt files that give a style; empty otherwise."""
    rows = []
    for path in eval_summaries:
        s = json.loads(Path(path).read_text())
        kind = ("base", "-") if s["name"] == "base" else tuple(s["name"].rsplit("-", 2)[:2])
        for style, metrics in s.get("per_style", {}).items():
            rows += [{"algorithm": kind[0], "reward_setting": kind[1], "style": style, "metric": m, "value": v}
                     for m, v in metrics.items()]
    if not rows:   # the header alone: a reader sees the columns, not a 1-byte file
        return pd.DataFrame(columns=["algorithm", "reward_setting", "style", "metric", "mean", "std"])
    df = pd.DataFrame(rows)
    table = df.groupby(["algorithm", "reward_setting", "style", "metric"], sort=False)["value"].agg(["mean", "std"])
    return table.reset_index()


# the config keys each stage's results depend on: a run is the config's when its logged params agree on them
DEPENDS = {"train": ("model.", "sampling.", "train.", "algorithm_params.", "reward_settings.", "reward_models.",
                     "prompts.train"),
           "evaluate": ("model.", "sampling.", "evaluate.", "reward_models.", "prompts.eval", "prompts.benchmark")}
VOLATILE_KEYS = ("model.device", "train.time_limit_margin_s", "train.peer_timeout_s", "evaluate.time_limit_margin_s")


def matches_config(runs: pd.DataFrame, cfg: dict) -> pd.Series:
    """Per run: whether its logged params (MLflow logs the whole resolved config) agree with `cfg` on
    every key its stage's results depend on (DEPENDS), so that an older config shows its own runs."""
    wanted = flatten(cfg)
    keep = pd.Series(True, index=runs.index)
    for stage, prefixes in DEPENDS.items():
        of_stage = runs["tags.stage"] == stage
        for key, value in wanted.items():
            if key.startswith(prefixes) and not key.startswith(VOLATILE_KEYS) and f"params.{key}" in runs:
                logged = runs[f"params.{key}"]
                keep &= ~of_stage | logged.isna() | (logged == value)
    return keep


def config_differences(a: dict, b: dict) -> list[str]:
    """The keys where two configs differ, as `key: a -> b`."""
    fa, fb = flatten(a), flatten(b)
    return [f"{k}: {fa.get(k, '(unset)')} -> {fb.get(k, '(unset)')}" for k in sorted(set(fa) | set(fb))
            if fa.get(k) != fb.get(k)]


def per_policy_from_mlflow(cfg: dict, filter_string: str = "") -> pd.DataFrame:
    """The rows of `collect`, read from the MLflow store instead of the files: the latest finished
    evaluate run of each policy, joined with the latest finished train run of its (algorithm,
    reward setting, seed). Runs made by hand into other folders (tag origin=by-hand) are left out."""
    mlflow = mlflow_for(cfg)
    query = "attributes.status = 'FINISHED'" + (f" and {filter_string}" if filter_string else "")
    runs = mlflow.search_runs(experiment_names=[cfg["experiment"]], filter_string=query)
    if not runs.empty and "tags.origin" in runs:
        runs = runs[runs["tags.origin"].fillna("dag") != "by-hand"]
    if not runs.empty:   # the given config's runs only (an older or another variant's runs are not)
        runs = runs[matches_config(runs, cfg)]
    if runs.empty:
        return pd.DataFrame()
    runs = runs.sort_values("start_time")
    trains = runs[runs["tags.stage"] == "train"].drop_duplicates(
        ["tags.algorithm", "tags.reward_setting", "tags.seed"], keep="last")
    trains = trains.set_index(trains["tags.algorithm"] + "-" + trains["tags.reward_setting"] + "-seed" + trains["tags.seed"])
    evals = runs[runs["tags.stage"] == "evaluate"].drop_duplicates("tags.policy", keep="last")
    rows = []
    for _, run in evals.iterrows():
        name = run["tags.policy"]
        row = {"policy": name, **{c.removeprefix("metrics.eval_"): run[c] for c in run.index
                                  if c.startswith("metrics.eval_") and pd.notna(run[c])}}
        if name == "base":
            row.update(algorithm="base", reward_setting="-", seed=None)
        elif name in trains.index:
            t = trains.loc[name]
            m = {"device": t.get("tags.device", "cpu"), "processes": int(t.get("tags.processes", 1) or 1),
                 "wall_s": t["metrics.wall_s"]}
            row.update(health=t.get("tags.health") if isinstance(t.get("tags.health"), str) else "not judged")
            row.update(algorithm=t["tags.algorithm"], reward_setting=t["tags.reward_setting"], seed=int(t["tags.seed"]),
                       nfe_total=t["metrics.nfe_total"], forward_equivalents=t["metrics.forward_equivalents"],
                       wall_s=t["metrics.wall_s"], gpu_hours=gpu_hours(m), final_train_reward=t["metrics.reward_mean"])
        else:
            continue
        rows.append(row)
    return pd.DataFrame(rows)


def per_task_table(eval_summaries: list[str]) -> pd.DataFrame:
    """Mean and std over seeds of every metric per task of the compositional world (and per split:
    held-out compositions vs seen ones; the mean over tasks), from each evaluation's `per_task`."""
    rows = []
    for path in eval_summaries:
        s = json.loads(Path(path).read_text())
        who = policy_identity(s["name"])
        for group, metrics in (s.get("per_task") or {}).items():
            rows += [{"algorithm": who["algorithm"], "reward_setting": who["reward_setting"], "group": group,
                      "metric": m, "value": v} for m, v in metrics.items() if m != "images"]
    if not rows:
        return pd.DataFrame(columns=["algorithm", "reward_setting", "group", "metric", "mean", "std"])
    table = pd.DataFrame(rows).groupby(["algorithm", "reward_setting", "group", "metric"], sort=False)["value"]
    return table.agg(["mean", "std"]).reset_index()


def policy_identity(name: str) -> dict:
    """algorithm, reward_setting, seed of an evaluated policy's name (base: the base model)."""
    if name == "base":
        return {"algorithm": "base", "reward_setting": "-", "seed": None}
    algorithm, reward_setting, seed = name.rsplit("-", 2)
    return {"algorithm": algorithm, "reward_setting": reward_setting, "seed": int(seed.removeprefix("seed"))}


def eval_scores(eval_summaries: list[str]) -> pd.DataFrame:
    """Every image's scores of every evaluated policy (scores.csv beside each summary.json), with the
    policy's identity: the rows that paired comparisons join on (prompt_index, image_index)."""
    frames = []
    for path in eval_summaries:
        scores = Path(path).parent / "scores.csv"
        name = json.loads(Path(path).read_text())["name"]
        if scores.is_file():
            frames.append(pd.read_csv(scores).assign(policy=name, **policy_identity(name)))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def heldout_table(train_metrics: list[dict]) -> pd.DataFrame:
    """Long table of every run's held-out curve: algorithm, reward_setting, seed, iteration,
    forward_equivalents, wall_s and one heldout_<metric> column per measured metric (empty when no
    run measured one)."""
    rows = [{"algorithm": m["algorithm"], "reward_setting": m["reward_setting"], "seed": m["seed"], **point}
            for m in train_metrics for point in m.get("heldout_curve") or []]
    return pd.DataFrame(rows)


def heldout_curves(train_metrics: list[dict], metric: str) -> pd.DataFrame:
    """The held-out curve of `metric` (claims): algorithm, reward_setting, seed, iteration,
    forward_equivalents, wall_s, value."""
    table = heldout_table(train_metrics)
    if table.empty or f"heldout_{metric}" not in table:
        raise UserError(f"claims: no held-out curve in the train metrics (set train.heldout.every and "
                        f"train.heldout.metrics: [{metric}])")
    columns = ["algorithm", "reward_setting", "seed", "iteration", "forward_equivalents", "wall_s"]
    return table[columns].assign(value=table[f"heldout_{metric}"])
