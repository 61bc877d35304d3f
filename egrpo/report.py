"""Stage `report`: the paper-style table (mean ± std over seeds) and the plots that explain it."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from egrpo.io import atomic_write_text, save_figure
from egrpo.tracking import stage_run


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
                       time_limit_stops=m.get("time_limit_stops", 0))
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


def summary_table(per_policy: pd.DataFrame, metrics: list[str], baseline: str = "dancegrpo") -> pd.DataFrame:
    """Rows per algorithm x reward setting (base first); columns <metric>_mean/_std over seeds,
    <metric>_vs_<baseline>_pct (change against the baseline row of the same reward setting),
    cost (NFE, forward-equivalents, wall-clock, GPU-hours) and the number of seeds."""
    cost = [c for c in ("nfe_total", "forward_equivalents", "wall_s", "gpu_hours") if c in per_policy]
    per_policy = per_policy.copy()
    per_policy["_order"] = (per_policy["algorithm"] != "base").astype(int)
    per_policy = per_policy.sort_values("_order", kind="stable")
    grouped = per_policy.groupby(["algorithm", "reward_setting"], sort=False)
    table = grouped[metrics].agg(["mean", "std"])
    table.columns = [f"{m}_{stat}" for m, stat in table.columns]
    for c in cost:
        table[c] = grouped[c].mean()
    for m in metrics:   # the evaluation's own standard error of one policy's mean, averaged over seeds
        # (NaN where unknown: one prompt, or summaries from before it was recorded; MLflow then has no value)
        table[f"{m}_eval_se"] = grouped[f"{m}_se"].mean() if f"{m}_se" in per_policy else float("nan")
    table["seeds"] = grouped["policy"].count()
    table = table.reset_index()
    for m in metrics:
        reference = table[table["algorithm"] == baseline].set_index("reward_setting")[f"{m}_mean"]
        ref = table["reward_setting"].map(reference)
        table[f"{m}_vs_{baseline}_pct"] = 100 * (table[f"{m}_mean"] - ref) / ref.abs()
    return table


def markdown(table: pd.DataFrame, metrics: list[str], baseline: str = "dancegrpo") -> str:
    """The table as Markdown: mean ± std over seeds [the evaluation's SE], the best mean per metric
    in bold, % vs the baseline; notes below say what ± and SE are and when rows differ in compute."""
    from egrpo.rewards import metric_label

    header = ["algorithm", "reward setting"] + [metric_label(m) for m in metrics]
    header += [f"Δ% vs {baseline} ({metric_label(m)})" for m in metrics]
    header += ["NFE", "fwd-equiv", "wall s", "GPU h", "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    best = {m: table[f"{m}_mean"].max() for m in metrics}
    fmt = lambda v, spec: "" if pd.isna(v) else format(v, spec)
    for _, row in table.iterrows():
        cells = [row["algorithm"], row["reward_setting"]]
        for m in metrics:
            text = f"{row[f'{m}_mean']:.4f}" + ("" if pd.isna(row[f"{m}_std"]) else f" ± {row[f'{m}_std']:.4f}")
            se = row[f"{m}_eval_se"]
            text += "" if pd.isna(se) else f" [SE {se:.4f}]"
            cells.append(f"**{text}**" if row[f"{m}_mean"] == best[m] else text)
        cells += [fmt(row[f"{m}_vs_{baseline}_pct"], "+.1f") for m in metrics]
        cells += [fmt(row.get("nfe_total"), ".0f"), fmt(row.get("forward_equivalents"), ".0f"),
                  fmt(row.get("wall_s"), ".1f"), fmt(row.get("gpu_hours"), ".2f"), str(int(row["seeds"]))]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    has_se = any(table[f"{m}_eval_se"].notna().any() for m in metrics)
    notes = ["", "± std over seeds; " + ("[SE] the evaluation's standard error of one policy's mean (per-prompt "
             "means), averaged over seeds: two rows whose means differ by less than about 2 SE are within "
             "evaluation noise. " if has_se else "") + "Bold: the highest mean."]
    notes += compute_caveats(table, baseline)
    return "\n".join(lines + notes) + "\n"


def requeue_note(per_policy: pd.DataFrame) -> str:
    """One line naming the runs that went on over several jobs (stopped before a time limit and
    resumed; egrpo/timelimit.py), empty when none did."""
    if "time_limit_stops" not in per_policy:
        return ""
    stopped = per_policy[per_policy["time_limit_stops"].fillna(0) > 0]
    if stopped.empty:
        return ""
    runs = ", ".join(f"{p} {int(n)}" for p, n in zip(stopped["policy"], stopped["time_limit_stops"]))
    return (f"Requeued at a time limit (stops, each resumed from its saved state): {runs}; "
            f"{int(stopped['time_limit_stops'].sum())} requeue(s) in all.\n")


def compute_caveats(table: pd.DataFrame, baseline: str = "dancegrpo", tolerance: float = 0.1) -> list[str]:
    """One line per reward setting whose rows used different compute (forward-equivalents)."""
    if "forward_equivalents" not in table:
        return []
    out = []
    for setting, rows in table[table["algorithm"] != "base"].groupby("reward_setting", sort=False):
        ref = rows.loc[rows["algorithm"] == baseline, "forward_equivalents"]
        if ref.empty or not ref.iloc[0] > 0:
            continue
        ratios = {a: fe / ref.iloc[0] for a, fe in zip(rows["algorithm"], rows["forward_equivalents"]) if a != baseline}
        unequal = {a: r for a, r in ratios.items() if abs(r - 1) > tolerance}
        if unequal:
            said = ", ".join(f"{a} {r:.2f}x" for a, r in unequal.items())
            out.append(f"Not equal compute ({setting}): forward-equivalents relative to {baseline}: {said}. "
                       f"Compare at an equal budget with `train.max_forward_equivalents` (the claims stage does).")
    return out


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


def plot_reward_std(profile: pd.DataFrame, path) -> None:
    """Measured reward std of the branches per step (each reward component), and the tie share."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    components = [c for c in profile.columns if c.startswith("reward_std_")]
    ax.plot(profile["step"], profile["reward_std"], "o-", color="k", label="combined reward")
    for c in components:
        ax.plot(profile["step"], profile[c], ".--", alpha=0.8, label=c.removeprefix("reward_std_"))
    ax.set_xlabel("denoising step of the single SDE branch")
    ax.set_ylabel("reward std across the group")
    twin = ax.twinx()
    twin.bar(profile["step"], profile["tie_share"], alpha=0.15, color="tab:red")
    twin.set_ylabel("share of tied groups", color="tab:red")
    twin.set_ylim(0, 1)
    if not (profile["tie_share"] > 0).any():   # an empty axis reads like a bug: say what it shows
        twin.text(0.98, 0.04, "no tied groups at any step (all bars 0)", transform=twin.transAxes, ha="right",
                  fontsize=7, color="tab:red")
    ax.legend(fontsize=8)
    ax.set_title("Reward spread of branches per step (low spread: little to learn from)")
    save_figure(fig, path)
    plt.close(fig)


def policy_image_grid(eval_dirs: list[Path], path, max_images: int = 8, min_size: int = 96,
                      metric: str | None = None) -> None:
    """Rows: base and the first seed of each policy; columns: the same prompts and seeds, each
    captioned with its prompt. Small images are enlarged (nearest neighbour) to `min_size` px.
    With `metric`, every image carries its score and every row its mean over the images shown, so
    that policies whose images look alike still read apart."""
    import textwrap

    from PIL import Image, ImageDraw

    rows, labels, seen, files_of_first, row_scores = [], [], set(), [], []
    for directory in eval_dirs:
        name = directory.name
        kind = name if name == "base" else name.rsplit("-", 1)[0]
        if kind in seen:
            continue
        seen.add(kind)
        files = sorted((directory / "images").glob("*.png"))[:max_images]
        if files:
            rows.append([Image.open(f).convert("RGB") for f in files])
            labels.append(kind)
            files_of_first = files_of_first or files
            row_scores.append(_image_scores(directory, files, metric))
    if not rows:  # evaluations without saved images (older runs): say so in the picture
        canvas = Image.new("RGB", (320, 40), "white")
        ImageDraw.Draw(canvas).text((8, 12), "no evaluation images found", fill="black")
        canvas.save(path)
        return
    prompts = {}
    scores = Path(files_of_first[0]).parent.parent / "scores.csv"
    if scores.is_file():
        table = pd.read_csv(scores)
        prompts = dict(zip(table["prompt_index"], table["prompt"]))
    scale = max(1, -(-min_size // max(rows[0][0].size)))
    w, h = rows[0][0].size[0] * scale, rows[0][0].size[1] * scale
    label_w, pad, chars = 150, 4, max(8, w // 6)
    captions = []
    for f in files_of_first:
        index = int(f.stem.split("_")[0].lstrip("p") or 0)
        image = f.stem.split("_")[1] if "_" in f.stem else ""
        captions.append(textwrap.wrap(f"{prompts.get(index, f.stem)} ({image})", chars)[:5])
    top = 12 * max(len(c) for c in captions) + pad
    n = max(len(r) for r in rows)
    canvas = Image.new("RGB", (label_w + n * (w + pad), top + len(rows) * (h + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    for c, lines in enumerate(captions):
        for k, line in enumerate(lines):
            draw.text((label_w + c * (w + pad), 2 + 12 * k), line, fill="black")
    for r, (images, label, scores) in enumerate(zip(rows, labels, row_scores)):
        y = top + r * (h + pad)
        known = [s for s in scores if s is not None]
        draw.text((4, y + h // 2 - 5), label, fill="black")
        if known:
            draw.text((4, y + h // 2 + 7), f"{metric} {sum(known) / len(known):.3f}", fill="black")
        for c, (img, score) in enumerate(zip(images, scores)):
            x = label_w + c * (w + pad)
            canvas.paste(img.resize((w, h), Image.NEAREST), (x, y))
            if score is not None:   # the image's score on a white strip along its bottom edge
                draw.rectangle((x, y + h - 12, x + 6 * len(f"{score:.3f}") + 3, y + h), fill="white")
                draw.text((x + 2, y + h - 12), f"{score:.3f}", fill="black")
    tmp = Path(path).with_suffix(".tmp.png")
    canvas.save(tmp)
    tmp.replace(path)


def _image_scores(directory: Path, files: list[Path], metric: str | None) -> list[float | None]:
    """Each image's `metric` score from its evaluation's scores.csv (p<prompt>_i<image>.png)."""
    table = directory / "scores.csv"
    if metric is None or not table.is_file():
        return [None] * len(files)
    scores = pd.read_csv(table)
    if metric not in scores:
        return [None] * len(files)
    by_image = {(int(p), int(i)): float(v) for p, i, v in zip(scores["prompt_index"], scores["image_index"], scores[metric])}
    out = []
    for f in files:
        prompt, _, image = f.stem.partition("_")
        out.append(by_image.get((int(prompt.lstrip("p") or 0), int(image.lstrip("i") or 0))))
    return out


def plot_training(train_logs: list[str], path, x: str = "nfe_total") -> None:
    """Training reward against NFE: mean over seeds with a min-max band, one colour per run kind."""
    import textwrap

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
    data = pd.concat(frames)
    data["algorithm"] = data["label"].str.split(" / ").str[0]
    data["setting"] = data["label"].str.split(" / ").str[1]
    settings = list(dict.fromkeys(data["setting"]))
    colours = {a: f"C{n}" for n, a in enumerate(dict.fromkeys(data["algorithm"]))}  # one colour per algorithm
    unit = {"nfe_total": "NFE", "wall_s": "s"}.get(x, x)
    fig, axes = plt.subplots(1, len(settings), figsize=(5.5 * len(settings), 4.2), squeeze=False)
    for ax, setting in zip(axes[0], settings):  # one panel per reward setting: their scales differ
        finals = {}
        for algorithm, df in data[data["setting"] == setting].groupby("algorithm", sort=False):
            g = df.groupby("iteration").agg(x=(x, "mean"), mean=("reward_mean", "mean"),
                                             lo=("reward_mean", "min"), hi=("reward_mean", "max"))
            ax.plot(g["x"], g["mean"], color=colours[algorithm], label=algorithm)
            ax.fill_between(g["x"], g["lo"], g["hi"], color=colours[algorithm], alpha=0.15)
            finals[algorithm] = (g["mean"].iloc[-1], g["x"].iloc[-1])
        costs = [c for _, c in finals.values() if c > 0]
        spread = max(costs) / min(costs) if costs else 1.0
        label = {"nfe_total": "model forward evaluations (rollout + training)", "wall_s": "wall-clock [s]"}.get(x, x)
        if spread > 5:   # one run would be squeezed into the first tenth of a linear axis
            ax.set_xscale("log")
            label += f"\nlog scale: the runs' costs differ {spread:.0f}x"
        verdict = "; ".join(f"{a} {r:.4g} at {_short(c)} {unit}" for a, (r, c) in finals.items())
        ax.set_title(textwrap.fill(f"{setting}: final training reward {verdict}", 70), fontsize=8.5)
        ax.set_xlabel(label)
        ax.set_ylabel("training reward (mean over group)")
        ax.legend(fontsize=8)
    fig.suptitle("Training reward against cost (line: mean over seeds; band: min-max)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def _short(value: float) -> str:
    """1234 -> 1.2k, 3.4e6 -> 3.4M."""
    for factor, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.1f}{suffix}"
    return f"{value:.0f}"


def value_at(xs, ys, at: float) -> float:
    """A curve's value at x = at by linear interpolation (NaN beyond its ends)."""
    import numpy as np

    return float(np.interp(at, xs, ys, left=np.nan, right=np.nan)) if len(xs) else float("nan")


def plot_heldout(train_metrics: list[str], path) -> str:
    """The held-out curves (train.heldout) against forward-equivalents, mean over seeds per
    algorithm, one panel per held-out metric and reward setting, each read at the common budget B
    (the smallest final cost of all runs): what each policy reaches with the same compute. Returns
    the verdict lines ('' without curves)."""
    import textwrap

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    runs = [json.loads(Path(p).read_text()) for p in train_metrics]
    curves = [(m, pd.DataFrame(m["heldout_curve"])) for m in runs if m.get("heldout_curve")]
    metrics = sorted({c[len("heldout_"):] for _, df in curves for c in df.columns if c.startswith("heldout_")})
    if not curves or not metrics:
        fig, ax = plt.subplots(figsize=(6, 1.2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no held-out curve: set train.heldout.every (or every_forward_equivalents)\n"
                "and train.heldout.metrics to measure the policy on held-out prompts during training",
                ha="center", va="center", fontsize=9)
        save_figure(fig, path)
        plt.close(fig)
        return ""
    budget = min(float(df["forward_equivalents"].iloc[-1]) for _, df in curves)
    settings = list(dict.fromkeys(m["reward_setting"] for m, _ in curves))
    panels = [(metric, setting) for metric in metrics for setting in settings]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.8 * len(panels), 4.6), squeeze=False)
    colours = {a: f"C{n}" for n, a in enumerate(dict.fromkeys(m["algorithm"] for m, _ in curves))}
    verdicts = []
    for ax, (metric, setting) in zip(axes[0], panels):
        at_budget = {}
        for algorithm in colours:
            mine = [df for m, df in curves if (m["algorithm"], m["reward_setting"]) == (algorithm, setting)
                    and f"heldout_{metric}" in df]
            if not mine:
                continue
            end = min(float(df["forward_equivalents"].iloc[-1]) for df in mine)
            grid = np.linspace(0, end, 50)
            ys = np.array([[value_at(df["forward_equivalents"], df[f"heldout_{metric}"], x) for x in grid] for df in mine])
            ax.plot(grid, ys.mean(0), color=colours[algorithm], label=f"{algorithm} (n={len(mine)})")
            if len(mine) > 1:
                ax.fill_between(grid, ys.min(0), ys.max(0), color=colours[algorithm], alpha=0.15)
            at_budget[algorithm] = float(np.mean([value_at(df["forward_equivalents"], df[f"heldout_{metric}"], budget)
                                                  for df in mine]))
        ax.axvline(budget, color="0.4", ls=":", lw=1)
        said = ", ".join(f"{k} {v:.4g}" for k, v in at_budget.items())
        where = f" ({setting})" if len(settings) > 1 else ""
        line = f"held-out {metric}{where} at equal compute ({_short(budget)} forward-equivalents): {said}"
        if len(at_budget) > 1:
            line += f"; highest: {max(at_budget, key=lambda k: at_budget[k])}"
        verdicts.append(line)
        ax.set_title(textwrap.fill(line, 70), fontsize=8.5)
        ax.set_xlabel("forward-equivalents (rollout + 3 x train fwd+bwd)\ndotted: the common budget")
        ax.set_ylabel(f"held-out {metric} (mean over seeds)")
        ax.legend(fontsize=8)
    fig.suptitle("Held-out reward against compute (train.heldout; band: min-max over seeds)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return "\n".join(verdicts)


def per_policy_from_mlflow(cfg: dict, filter_string: str = "") -> pd.DataFrame:
    """The rows of `collect`, read from the MLflow store instead of the files: the latest finished
    evaluate run of each policy, joined with the latest finished train run of its (algorithm,
    reward setting, seed)."""
    from egrpo.tracking import _mlflow

    mlflow = _mlflow(cfg)
    query = "attributes.status = 'FINISHED'" + (f" and {filter_string}" if filter_string else "")
    runs = mlflow.search_runs(experiment_names=[cfg["experiment"]], filter_string=query)
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
            row.update(algorithm=t["tags.algorithm"], reward_setting=t["tags.reward_setting"], seed=int(t["tags.seed"]),
                       nfe_total=t["metrics.nfe_total"], forward_equivalents=t["metrics.forward_equivalents"],
                       wall_s=t["metrics.wall_s"], gpu_hours=gpu_hours(m), final_train_reward=t["metrics.reward_mean"])
        else:
            continue
        rows.append(row)
    return pd.DataFrame(rows)


def run_compare(cfg: dict, filter_string: str = "", out_csv: str | None = None) -> pd.DataFrame:
    """`egrpo compare`: the report's table straight from MLflow (printed as Markdown, optional CSV)."""
    from egrpo.config import reward_names
    from egrpo.errors import UserError

    per_policy = per_policy_from_mlflow(cfg, filter_string)
    if not per_policy.empty:   # the config's runs only: a hand run with another seed is not in its table
        wanted = {f"{a}-{r}-seed{s}" for a in cfg["algorithms"] for r in cfg["reward_settings"] for s in cfg["seeds"]}
        keep = per_policy["policy"].isin(wanted | {"base"})
        if (~keep).any():
            import sys
            print(f"egrpo compare: left out {int((~keep).sum())} run(s) outside the config's algorithms, reward "
                  f"settings and seeds: {', '.join(per_policy.loc[~keep, 'policy'])}", file=sys.stderr)
        per_policy = per_policy[keep]
    if per_policy.empty:
        raise UserError(f"no finished runs in MLflow experiment {cfg['experiment']!r}"
                        + (f" matching {filter_string!r}" if filter_string else ""))
    metrics = [m for m in reward_names(cfg) if m in per_policy]
    table = summary_table(per_policy, metrics)
    print(markdown(table, metrics), end="")
    if out_csv:
        atomic_write_text(out_csv, table.to_csv(index=False))
    return table


FILES = ("table.csv", "table.md", "entropy_plan.png", "reward_std_per_step.png", "train_reward_vs_nfe.png",
         "train_reward_vs_wall.png", "heldout_vs_compute.png", "image_grid.png")


def run_report(cfg: dict, profile_csv, plan_json, train_metrics, eval_summaries, out_dir) -> pd.DataFrame:
    out_dir = Path(out_dir)
    from egrpo.config import reward_names

    metrics = reward_names(cfg)
    with stage_run(cfg, "report") as (mlflow, run):
        per_policy = collect(train_metrics, eval_summaries)
        table = summary_table(per_policy, metrics)
        atomic_write_text(out_dir / "table.csv", table.to_csv(index=False))
        heldout = plot_heldout(list(train_metrics), out_dir / "heldout_vs_compute.png")
        atomic_write_text(out_dir / "table.md", markdown(table, metrics) + requeue_note(per_policy)
                          + (f"\n{heldout}\n" if heldout else ""))
        atomic_write_text(out_dir / "policies.csv", per_policy.to_csv(index=False))
        plot_entropy_plan(pd.read_csv(profile_csv), json.loads(Path(plan_json).read_text()), out_dir / "entropy_plan.png")
        styles = per_style_table(eval_summaries)
        atomic_write_text(out_dir / "per_style.csv", styles.to_csv(index=False))
        plot_reward_std(pd.read_csv(profile_csv), out_dir / "reward_std_per_step.png")
        logs = [str(Path(p).parent / "train_log.csv") for p in train_metrics]
        plot_training(logs, out_dir / "train_reward_vs_nfe.png", "nfe_total")
        plot_training(logs, out_dir / "train_reward_vs_wall.png", "wall_s")
        policy_image_grid([Path(p).parent for p in eval_summaries], out_dir / "image_grid.png",
                          metric=(cfg["evaluate"]["metrics"] or metrics or [None])[0])
        for f in FILES:
            mlflow.log_artifact(str(out_dir / f))
    return table
