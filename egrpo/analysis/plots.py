"""The report's and the claims' figures. They draw what the other analysis modules computed."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from egrpo.analysis.curves import on_grid
from egrpo.analysis.markdown import _short, fraction_title
from egrpo.runtime.io import save_figure


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
    captioned with its prompt (`grid_images`: the first image of prompts spread over the evaluation
    set, so that every kind of prompt shows). Small images are enlarged (nearest neighbour) to
    `min_size` px. With `metric`, every image carries its score and every row its mean over the
    images shown, so that policies whose images look alike still read apart."""
    import textwrap

    from PIL import Image, ImageDraw

    rows, labels, seen, files_of_first, row_scores = [], [], set(), [], []
    for directory in eval_dirs:
        name = directory.name
        kind = name if name == "base" else name.rsplit("-", 1)[0]
        if kind in seen:
            continue
        seen.add(kind)
        files = grid_images(directory / "images", max_images)
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
            draw.text((4, y + h // 2 + 19), f"(mean of these {len(known)})", fill="black")
        for c, (img, score) in enumerate(zip(images, scores)):
            x = label_w + c * (w + pad)
            canvas.paste(img.resize((w, h), Image.NEAREST), (x, y))
            if score is not None:   # the image's score on a white strip along its bottom edge
                draw.rectangle((x, y + h - 12, x + 6 * len(f"{score:.3f}") + 3, y + h), fill="white")
                draw.text((x + 2, y + h - 12), f"{score:.3f}", fill="black")
    tmp = Path(path).with_suffix(".tmp.png")
    canvas.save(tmp)
    tmp.replace(path)


def grid_images(image_dir: Path, max_images: int) -> list[Path]:
    """The images a grid row shows (p<prompt>_i<image>.png): with at least `max_images` prompts, the
    first image of `max_images` prompts evenly spread from the first to the last (an evaluation
    set's prompts come in blocks, e.g. seen then held-out compositions); with fewer, every image of
    each prompt in order, up to `max_images`."""
    files = sorted(Path(image_dir).glob("*.png"))
    by_prompt: dict[str, list[Path]] = {}
    for f in files:
        by_prompt.setdefault(f.stem.partition("_")[0], []).append(f)
    prompts = sorted(by_prompt)
    if len(prompts) < max_images or max_images < 2:
        return files[:max_images]
    picks = sorted({round(k * (len(prompts) - 1) / (max_images - 1)) for k in range(max_images)})
    return [by_prompt[prompts[k]][0] for k in picks]


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


def plot_heldout(budget: float, panels: list[dict], lines: list[str], path, set_note: str = "") -> None:
    """The held-out curves (train.heldout) against forward-equivalents, mean over seeds per algorithm
    with a min-max band, one panel per held-out metric and reward setting (curves.heldout_panels),
    each titled with its verdict line and marked at the common budget; a note when nothing was measured."""
    import textwrap

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not panels:
        fig, ax = plt.subplots(figsize=(6, 1.2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no held-out curve: set train.heldout.every (or every_forward_equivalents)\n"
                "and train.heldout.metrics to measure the policy on held-out prompts during training",
                ha="center", va="center", fontsize=9)
        save_figure(fig, path)
        plt.close(fig)
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5.8 * len(panels), 4.6), squeeze=False)
    colours = {a: f"C{n}" for n, a in enumerate(dict.fromkeys(a for p in panels for a in p["lines"]))}
    for ax, panel, line in zip(axes[0], panels, lines):
        for algorithm, curve in panel["lines"].items():
            ax.plot(curve["grid"], curve["mean"], color=colours[algorithm], label=f"{algorithm} (n={curve['runs']})")
            if curve["runs"] > 1:
                ax.fill_between(curve["grid"], curve["lo"], curve["hi"], color=colours[algorithm], alpha=0.15)
        ax.axvline(budget, color="0.4", ls=":", lw=1)
        ax.set_title(textwrap.fill(line, 70), fontsize=8.5)
        ax.set_xlabel("forward-equivalents (rollout + 3 x train fwd+bwd)\ndotted: the common budget")
        ax.set_ylabel(f"held-out {panel['metric']} (mean over seeds)")
        ax.legend(fontsize=8)
    fig.suptitle("Held-out reward against compute (train.heldout; band: min-max over seeds; 0 = the base model"
                 + (f"; {set_note})" if set_note else ")"), fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_claims(curves: pd.DataFrame, profile: pd.DataFrame, merged: pd.DataFrame | None, result: dict, metric: str, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.2))
    colors = {"egrpo": "#d62728", "dancegrpo": "#1f77b4", "mixgrpo": "#2ca02c", "flowgrpo": "#9467bd", "diffusionnft": "#ff7f0e", "branchgrpo": "#8c564b"}
    for algorithm, g in curves.groupby("algorithm"):
        # per seed curves live on their own x grids: interpolate onto a common one for the band, up
        # to the shortest run's end (beyond it the mean would jump to the few longer runs)
        grid = np.linspace(0, g.groupby("seed")["forward_equivalents"].max().min(), 60)
        ys = on_grid(g, grid)
        mean, std = np.nanmean(ys, 0), np.nanstd(ys, 0)
        color = colors.get(algorithm, None)
        ax.plot(grid, mean, color=color, label=f"{algorithm} (n={len(ys)} seeds)")
        ax.fill_between(grid, mean - std, mean + std, color=color, alpha=0.15)
    frac = result.get("nfe_fraction_to_match_dancegrpo")
    if frac and "dancegrpo" in result.get("final_heldout", {}):
        target = result["final_heldout"]["dancegrpo"]["mean"]
        ax.axhline(target, color=colors["dancegrpo"], ls=":", lw=1)
        for v in frac["per_seed"].values():
            ax.plot([v["egrpo_forward_equivalents"]], [v["target"]], "v", color=colors["egrpo"], ms=7)
        ax.set_title(fraction_title(frac, metric), fontsize=9)
    ax.set_xlabel("forward-equivalents (rollout + 3 x train fwd+bwd)")
    ax.set_ylabel(f"held-out {metric}")
    ax.legend(fontsize=8)
    bx.plot(profile["step"], profile["reward_std"], "o-", color="k", label="measured reward std, k = 1")
    if merged is not None and not merged.empty:
        for k, g in merged.groupby("length"):
            bx.plot(g["step"], g["reward_std"], "s--", alpha=0.8, label=f"merged, k = {k}")
    bx.set_xlabel("denoising step i (branch point)")
    bx.set_ylabel("reward std across the G branches")
    twin = bx.twinx()
    twin.bar(profile["step"], profile["entropy"], alpha=0.15, color="tab:blue")
    twin.set_ylabel("analytic entropy H(i, 1) [nats]")
    rho = result["reward_std_tracks_entropy"]["rho_entropy_reward_std"]
    bx.set_title(f"Measured spread vs analytic entropy (Spearman rho = {rho:.2f})", fontsize=9)
    bx.legend(fontsize=8)
    save_figure(fig, path)
    plt.close(fig)


def plot_reward_vs_truth(lines: list[dict], budget: float, path) -> None:
    """One panel per reward setting: per algorithm, the held-out change of the reward it trains on
    (solid) and of the ground truth (dashed) from the base, against forward-equivalents; the title
    gives both at the common budget."""
    import textwrap

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(dict.fromkeys(line["setting"] for line in lines))
    fig, axes = plt.subplots(1, max(1, len(settings)), figsize=(5.8 * max(1, len(settings)), 4.4), squeeze=False)
    colours = {a: f"C{n}" for n, a in enumerate(dict.fromkeys(line["algorithm"] for line in lines))}
    for ax, setting in zip(axes[0], settings):
        said = []
        for line in (x for x in lines if x["setting"] == setting):
            c = colours[line["algorithm"]]
            ax.plot(line["grid"], line[line["trained"]], color=c, label=f"{line['algorithm']}: {line['trained']}")
            ax.plot(line["grid"], line[line["truth"]], color=c, ls="--", label=f"{line['algorithm']}: {line['truth']}")
            said.append(f"{line['algorithm']} {line['trained']} {line[line['trained'] + '_at_budget']:+.3f}, "
                        f"{line['truth']} {line[line['truth'] + '_at_budget']:+.3f}")
        ax.axhline(0, color="0.6", lw=0.8)
        ax.axvline(budget, color="0.4", ls=":", lw=1)
        ax.set_title(textwrap.fill(f"{setting}, change from the base at {_short(budget)} forward-equivalents: "
                                   + "; ".join(said), 70), fontsize=8.5)
        ax.set_xlabel("forward-equivalents\ndotted: the common budget")
        ax.set_ylabel("held-out change from the base model")
        ax.legend(fontsize=7)
    if not settings:
        axes[0][0].axis("off")
        axes[0][0].text(0.5, 0.5, "measure the trained reward and the ground truth on the held-out set\n"
                        "(train.heldout.metrics) to see them against each other", ha="center", va="center")
    fig.suptitle("The learned reward against the ground truth (solid: the reward trained on; dashed: the truth)",
                 fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_health(train_metrics: list[str], path, max_runs: int = 48) -> list[str]:
    """One row of panels per train run (egrpo/health.py, docs/health.md), against forward-equivalents:
    the training reward with each held-out metric (rescaled to the training reward's range of the
    run, so that a rise of one against a fall of the other shows as crossing lines), the group
    signal (within-group reward std, zero-std ratio) and the diversity of a group's images with the
    clip fraction. A flagged run's title is red and carries its verdict line. Returns the titles."""
    import textwrap

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = []
    for p in train_metrics:
        metrics = json.loads(Path(p).read_text())
        log = Path(p).parent / "train_log.csv"
        if log.is_file():
            runs.append((metrics, pd.read_csv(log)))
    runs.sort(key=lambda r: (r[0]["reward_setting"], r[0]["algorithm"], r[0]["seed"]))
    shown = runs[:max_runs]
    rows = max(1, len(shown))
    fig, axes = plt.subplots(rows, 3, figsize=(14, 2.3 * rows + 0.6), squeeze=False)
    titles = []
    if not shown:
        axes[0][0].text(0.5, 0.5, "no train runs", ha="center", va="center")
    for (metrics, log), (ax_reward, ax_signal, ax_div) in zip(shown, axes):
        x = log["forward_equivalents"]
        health = metrics.get("health") or {}
        flags = health.get("flags") or []
        name = f"{metrics['algorithm']} / {metrics['reward_setting']} / seed {metrics['seed']}"
        verdict = "; ".join(f["line"] for f in flags) if flags else health.get("verdict", "not assessed")
        titles.append(f"{name}: {verdict}")
        ax_reward.set_title(textwrap.fill(f"{name}: {verdict}", 75), fontsize=7.5, color="C3" if flags else "black",
                            loc="left")
        ax_reward.plot(x, log["reward_mean"], color="black", lw=1.2, label="training reward")
        lo, hi = float(log["reward_mean"].min()), float(log["reward_mean"].max())
        curve = pd.DataFrame(metrics.get("heldout_curve") or [])
        for n, column in enumerate(c for c in curve.columns if c.startswith("heldout_")):
            values = curve[column].astype(float)
            span = float(values.max() - values.min()) or 1.0
            scaled = lo + (values - values.min()) / span * ((hi - lo) or 1.0)
            ax_reward.plot(curve["forward_equivalents"], scaled, "o-", ms=3, color=f"C{n}",
                           label=f"held-out {column.removeprefix('heldout_')} ({values.iloc[0]:.3g} -> {values.iloc[-1]:.3g})")
        ax_reward.legend(fontsize=6.5, loc="best")
        ax_reward.set_ylabel("reward (held-out rescaled)", fontsize=7)
        for column, colour, label in (("group_reward_std", "C0", "within-group reward std"),
                                      ("zero_std_ratio", "C3", "zero-std ratio (groups with no signal)")):
            if column in log:
                ax_signal.plot(x, log[column], color=colour, label=label)
        ax_signal.legend(fontsize=6.5, loc="best")
        for column, colour, label in (("diversity", "C2", "image diversity in a group"),
                                      ("clip_fraction", "C4", "PPO clip fraction")):
            if column in log:
                ax_div.plot(x, log[column], color=colour, label=label)
        ax_div.legend(fontsize=6.5, loc="best")
        for ax in (ax_reward, ax_signal, ax_div):
            ax.tick_params(labelsize=6.5)
    for ax in axes[-1]:
        ax.set_xlabel("forward-equivalents", fontsize=7.5)
    flagged = sum(bool((m.get("health") or {}).get("flags")) for m, _ in runs)
    more = f"; the first {max_runs} of {len(runs)} runs shown" if len(runs) > max_runs else ""
    fig.suptitle(f"Run health (docs/health.md): {flagged} of {len(runs)} runs flagged{more}", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return titles
