"""Stage `report`: the paper-style table (mean ± std over seeds) and the plots that explain it
(a composition of egrpo/analysis/)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from egrpo.analysis import curves, plots
from egrpo.analysis.markdown import heldout_line, markdown, per_task_markdown
from egrpo.analysis.paired import comparisons
from egrpo.analysis.runs import collect, eval_scores, heldout_table, per_style_table, per_task_table
from egrpo.analysis.tables import health_note, requeue_note, summary_table
from egrpo.config import config_hash, reward_names
from egrpo.runtime.io import atomic_write_text
from egrpo.runtime.tracking import stage_run

NAME = "report"
HELP = "Tables and plots from the profile, plan, training and evaluation outputs."
INPUTS = ("profile", "plan", "train_metrics", "eval_summaries")
FILES = ("table.csv", "table.md", "entropy_plan.png", "reward_std_per_step.png", "train_reward_vs_nfe.png",
         "train_reward_vs_wall.png", "heldout_vs_compute.png", "reward_vs_truth.png", "image_grid.png", "health.png")


def add_arguments(p) -> None:
    p.add_argument("--profile", required=True)
    p.add_argument("--plan", required=True)
    p.add_argument("--train-metrics", nargs="*", default=[])
    p.add_argument("--eval-summaries", nargs="+", required=True)
    p.add_argument("--out", required=True, help="report directory")


def run(args, cfg) -> None:
    run_report(cfg, args.profile, args.plan, args.train_metrics, args.eval_summaries, args.out)


def heldout_figure(train_metrics: list[str], path, set_note: str = "") -> str:
    """heldout_vs_compute.png: every algorithm's held-out curve, read at the common budget; returns
    the verdict lines ('' without curves)."""
    table = heldout_table([json.loads(Path(p).read_text()) for p in train_metrics])
    if table.empty or not any(c.startswith("heldout_") for c in table.columns):
        plots.plot_heldout(0.0, [], [], path)
        return ""
    budget, panels = curves.heldout_panels(table)
    several = table["reward_setting"].nunique() > 1
    lines = [heldout_line(panel, budget, several) for panel in panels]
    plots.plot_heldout(budget, panels, lines, path, set_note)
    return "\n".join(lines)


def reward_vs_truth_figure(cfg: dict, train_metrics: list[str], path) -> None:
    """reward_vs_truth.png: the held-out change of the reward each run trains on against the ground
    truth's (the first evaluate metric that some reward setting does not train on: the tiny worlds'
    alignment or judge; a setting that trains on the truth itself has no line)."""
    table = heldout_table([json.loads(Path(p).read_text()) for p in train_metrics])
    truth = truth_metric(cfg)
    ok = not table.empty and truth is not None and f"heldout_{truth}" in table
    lines = curves.reward_vs_truth(table, cfg["reward_settings"], truth) if ok else []
    plots.plot_reward_vs_truth(lines, curves.common_budget(table) if lines else 0.0, path)


def truth_metric(cfg: dict) -> str | None:
    """The ground truth the learned rewards are drawn against: the first evaluate metric that some
    reward setting does not train on (None: every setting trains on every metric)."""
    settings = cfg["reward_settings"].values()
    return next((m for m in cfg["evaluate"]["metrics"] if any(m not in weights for weights in settings)), None)


def summary_line(heldout: str, cmp, metric: str | None, baseline: str = "dancegrpo") -> str:
    """The report in one line (report/summary.txt; the workflow prints it when it ends): the first
    held-out verdict at equal compute where the seeds give one; else, from the evaluation's paired
    comparisons on `metric` (the ground truth where there is one) in the first reward setting,
    E-GRPO against the baseline and the best trained policy against the base."""
    first = heldout.splitlines()[0] if heldout else ""
    if first and "no verdict" not in first:
        return first
    if cmp is not None and not cmp.empty and metric:
        mine = cmp[cmp["metric"] == metric]
        rows = mine[(mine["against"] == baseline) & (mine["algorithm"] == "egrpo")]
        if not rows.empty:
            c = rows.iloc[0]
            line = (f"{metric} ({c['reward_setting']}), evaluation: egrpo - {baseline} {c['difference']:+.4f} "
                    f"(paired SE {c['paired_se']:.4f}): {c['verdict']}")
            base = mine[(mine["against"] == "base") & (mine["reward_setting"] == c["reward_setting"])]
            if not base.empty:
                b = base.loc[base["difference"].idxmax()]
                line += (f"; best against the base: {b['algorithm']} {b['difference']:+.4f} "
                         f"(paired SE {b['paired_se']:.4f}): {b['verdict']}")
            return line
    return first or "see table.md"


def base_notes(cfg: dict, eval_summaries: list[str]) -> dict:
    """What the base model's numbers are measured on, in the table and in the held-out figure: two
    different sets of prompts and noise, so their values differ by design."""
    base = [json.loads(Path(p).read_text()) for p in eval_summaries if Path(p).parent.name == "base"]
    h = cfg["train"]["heldout"]
    heldout = f"held-out set: the first {h['num_prompts']} eval prompts x {h['images_per_prompt']} images, seed {h['seed']}"
    table = ""
    if base:
        b = base[0]
        table = (f"The base row is the evaluation set ({b['num_prompts']} eval prompts x {b['images_per_prompt']} "
                 f"images, seed {cfg['evaluate']['seed']}, {b['num_steps']} steps); the held-out curve's point at 0 "
                 f"is the same base on the {heldout}, and the image grid's row means cover the images shown.")
    return {"table": table, "heldout": heldout}


def run_report(cfg: dict, profile_csv, plan_json, train_metrics, eval_summaries, out_dir) -> pd.DataFrame:
    out_dir = Path(out_dir)
    metrics = reward_names(cfg)
    with stage_run(cfg, "report", out=out_dir) as (mlflow, run):
        per_policy = collect(train_metrics, eval_summaries)
        table = summary_table(per_policy, metrics)
        atomic_write_text(out_dir / "table.csv", table.to_csv(index=False))
        scores = eval_scores(eval_summaries)
        cmp = comparisons(scores, table, metrics) if not scores.empty else None
        if cmp is not None:
            atomic_write_text(out_dir / "comparisons.csv", cmp.to_csv(index=False))
        notes = base_notes(cfg, eval_summaries)
        heldout = heldout_figure(list(train_metrics), out_dir / "heldout_vs_compute.png", notes["heldout"])
        reward_vs_truth_figure(cfg, list(train_metrics), out_dir / "reward_vs_truth.png")
        headline = truth_metric(cfg) or (metrics[0] if metrics else None)
        atomic_write_text(out_dir / "summary.txt", summary_line(heldout, cmp, headline) + "\n")
        tasks = per_task_table(eval_summaries)
        atomic_write_text(out_dir / "per_task.csv", tasks.to_csv(index=False))
        atomic_write_text(out_dir / "table.md", markdown(table, metrics, cmp=cmp, base_note=notes["table"])
                          + requeue_note(per_policy) + health_note(per_policy) + (f"\n{heldout}\n" if heldout else "")
                          + per_task_markdown(tasks))
        atomic_write_text(out_dir / "policies.csv", per_policy.to_csv(index=False))
        profile = pd.read_csv(profile_csv)
        plots.plot_entropy_plan(profile, json.loads(Path(plan_json).read_text()), out_dir / "entropy_plan.png")
        atomic_write_text(out_dir / "per_style.csv", per_style_table(eval_summaries).to_csv(index=False))
        plots.plot_reward_std(profile, out_dir / "reward_std_per_step.png")
        logs = [str(Path(p).parent / "train_log.csv") for p in train_metrics]
        plots.plot_training(logs, out_dir / "train_reward_vs_nfe.png", "nfe_total")
        plots.plot_training(logs, out_dir / "train_reward_vs_wall.png", "wall_s")
        plots.plot_health(list(train_metrics), out_dir / "health.png")
        plots.policy_image_grid([Path(p).parent for p in eval_summaries], out_dir / "image_grid.png",
                                metric=(cfg["evaluate"]["metrics"] or metrics or [None])[0])
        for f in FILES:
            mlflow.log_artifact(str(out_dir / f))
    keep_for_config(cfg, out_dir)
    return table


def keep_for_config(cfg: dict, out_dir: Path) -> Path:
    """A copy of this report in report/by-config/<config hash>/: report/ is always the latest, and a
    rerun with another config does not lose the earlier config's report."""
    import shutil

    target = out_dir / "by-config" / config_hash(cfg)
    target.mkdir(parents=True, exist_ok=True)
    for f in out_dir.iterdir():
        if f.is_file():
            shutil.copy2(f, target / f.name)
    return target
