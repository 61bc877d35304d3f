"""Stage `report`: the paper-style table (mean ± std over seeds) and the plots that explain it."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from egrpo.io import atomic_write_text, save_figure
from egrpo.tracking import stage_run


def collect(train_metrics: list[str], eval_summaries: list[str]) -> pd.DataFrame:
    """One row per evaluated policy: its identity, every eval metric, and its training cost."""
    train = {}
    for path in train_metrics:
        m = json.loads(Path(path).read_text())
        train[f"{m['algorithm']}-{m['reward_setting']}-seed{m['seed']}"] = m
    rows = []
    for path in eval_summaries:
        s = json.loads(Path(path).read_text())
        row = {"policy": s["name"], **{r: v["mean"] for r, v in s["metrics"].items()}}
        if s["name"] == "base":
            row.update(algorithm="base", reward_setting="-", seed=None)
        else:
            m = train[s["name"]]
            row.update(algorithm=m["algorithm"], reward_setting=m["reward_setting"], seed=m["seed"],
                       nfe_total=m["nfe_total"], forward_equivalents=m["forward_equivalents"],
                       wall_s=m["wall_s"], final_train_reward=m["final_train_reward"])
        rows.append(row)
    return pd.DataFrame(rows)


def summary_table(per_policy: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Rows per algorithm x reward setting; columns <metric>_mean/_std over seeds, cost, seeds."""
    cost = [c for c in ("nfe_total", "forward_equivalents", "wall_s") if c in per_policy]
    grouped = per_policy.groupby(["algorithm", "reward_setting"], sort=False)
    table = grouped[metrics].agg(["mean", "std"])
    table.columns = [f"{m}_{stat}" for m, stat in table.columns]
    for c in cost:
        table[c] = grouped[c].mean()
    table["seeds"] = grouped["policy"].count()
    return table.reset_index()


def markdown(table: pd.DataFrame, metrics: list[str]) -> str:
    header = ["algorithm", "reward setting"] + metrics + ["NFE", "wall s", "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        cells = [row["algorithm"], row["reward_setting"]]
        for m in metrics:
            std = row[f"{m}_std"]
            cells.append(f"{row[f'{m}_mean']:.4f}" + ("" if pd.isna(std) else f" ± {std:.4f}"))
        cells.append("" if pd.isna(row.get("nfe_total")) else f"{row['nfe_total']:.0f}")
        cells.append("" if pd.isna(row.get("wall_s")) else f"{row['wall_s']:.1f}")
        cells.append(str(int(row["seeds"])))
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def plot_entropy_plan(profile: pd.DataFrame, plan: dict, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    ax.bar(profile["step"], profile["entropy"], color="#c6dbef", label="H(i,1)")
    for n, e in enumerate(plan["plan"]):
        ax.axvspan(e["start"] - 0.45, e["start"] + e["length"] - 0.55, color="#fd8d3c", alpha=0.25,
                   label="plan entry (merged span)" if n == 0 else None)
        ax.plot([e["start"]], [e["entropy"]], "v", color="#d94801", label="entry entropy" if n == 0 else None)
    if plan.get("tau") is not None:
        ax.axhline(plan["tau"], color="k", ls="--", lw=1, label=f"tau = {plan['tau']:.3f}")
    twin = ax.twinx()
    twin.plot(profile["step"], profile["reward_std"], "o-", color="#d62728", ms=3, label="measured reward std")
    twin.set_ylabel("reward std")
    ax.set_xlabel("denoising step")
    ax.set_ylabel("analytic entropy [nats]")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = twin.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper right")
    ax.set_title(f"Entropy profile and merge plan (rule: {plan['rule']})")
    save_figure(fig, path)
    plt.close(fig)


def plot_training(train_logs: list[str], path, x: str = "nfe_total") -> None:
    """Training reward against NFE: mean over seeds with a min-max band, one colour per run kind."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = []
    for log_path in train_logs:
        metrics = json.loads((Path(log_path).parent / "metrics.json").read_text())
        df = pd.read_csv(log_path)
        df["label"] = f"{metrics['algorithm']} / {metrics['reward_setting']}"
        df["seed"] = metrics["seed"]
        frames.append(df)
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for label, df in pd.concat(frames).groupby("label"):
        g = df.groupby("iteration").agg(x=(x, "mean"), mean=("reward_mean", "mean"),
                                         lo=("reward_mean", "min"), hi=("reward_mean", "max"))
        ax.plot(g["x"], g["mean"], label=label)
        ax.fill_between(g["x"], g["lo"], g["hi"], alpha=0.2)
    ax.set_xlabel({"nfe_total": "model forward evaluations (rollout + training)", "wall_s": "wall-clock [s]"}.get(x, x))
    ax.set_ylabel("training reward (mean over group)")
    ax.legend(fontsize=8)
    ax.set_title("Training reward against cost (band: min-max over seeds)")
    save_figure(fig, path)
    plt.close(fig)


def run_report(cfg: dict, profile_csv, plan_json, train_metrics, eval_summaries, out_dir) -> pd.DataFrame:
    out_dir = Path(out_dir)
    from egrpo.config import reward_names

    metrics = reward_names(cfg)
    with stage_run(cfg, "report") as (mlflow, run):
        per_policy = collect(train_metrics, eval_summaries)
        table = summary_table(per_policy, metrics)
        atomic_write_text(out_dir / "table.csv", table.to_csv(index=False))
        atomic_write_text(out_dir / "table.md", markdown(table, metrics))
        atomic_write_text(out_dir / "policies.csv", per_policy.to_csv(index=False))
        plot_entropy_plan(pd.read_csv(profile_csv), json.loads(Path(plan_json).read_text()), out_dir / "entropy_plan.png")
        logs = [str(Path(p).parent / "train_log.csv") for p in train_metrics]
        plot_training(logs, out_dir / "train_reward_vs_nfe.png", "nfe_total")
        for f in ("table.csv", "table.md", "entropy_plan.png", "train_reward_vs_nfe.png"):
            mlflow.log_artifact(str(out_dir / f))
    return table
