"""Stage `profile`: the entropy of every denoising step, analytic and measured.

For each step i and each profiling prompt: from the shared ODE anchor x_i (one initial noise per
prompt), G branches take the SDE transition i -> i+1 and continue by ODE to the end. The spread of
the G final latents and of their rewards measures how much that step explores:
    latent_variance   mean over latent dims of the variance across the group
    pairwise_distance mean L2 distance between members' final latents
    reward_std        std across the group of the combined reward of `profile.reward_setting`
    tie_share         share of prompts whose group rewards are indistinguishable (std <= tie_tolerance)
Rows are averaged over prompts; the analytic entropy H(i, 1) stands beside them (entropy.csv).
For each k in profile.merge_lengths the merged transitions i -> i+k are measured the same way,
beside H(i, k) (entropy_merged.csv, next to entropy.csv).
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from egrpo import sde
from egrpo.config import profile_reward_setting
from egrpo.runtime.io import atomic_write_text, load_prompts, save_figure
from egrpo.models import FlowModel, load_pipeline
from egrpo.rewards import RewardSetting
from egrpo.rollout import ode_lanes, ode_run, sde_sample
from egrpo.runtime.tracking import stage_run


NAME = "profile"
HELP = "Entropy profile per denoising step: analytic and measured (csv + png)."
PHASE = "sampling"


def add_arguments(p) -> None:
    p.add_argument("--model", help="pipeline directory (default: model.path)")
    p.add_argument("--out-csv", required=True)
    p.add_argument("--out-png", required=True)


def run(args, cfg) -> None:
    run_profile(cfg, args.model, args.out_csv, args.out_png)

log = logging.getLogger("egrpo.stages.profile")


def measure(model: FlowModel, cfg: dict, setting: RewardSetting, prompts) -> pd.DataFrame:
    """Rows per (step, length): length 1 for every step, plus profile.merge_lengths (merged SDE
    transitions i -> i+k, drawn with the same per-member noise as the single step i, so the two
    are compared on paired draws)."""
    sampling, pcfg = cfg["sampling"], cfg["profile"]
    n, eta = sampling["num_steps"], sampling["eta"]
    group = pcfg["group_size"] or sampling["group_size"]
    sigmas = model.sigmas(n)
    generator = torch.Generator().manual_seed(pcfg["seed"])
    pairs = [(i, 1) for i in range(n)] + [(i, k) for k in pcfg["merge_lengths"] if k > 1 for i in range(n - k + 1)]
    rows = []
    chosen = prompts[:pcfg["num_prompts"]]
    bar = tqdm(total=len(chosen) * len(pairs), desc="profile", unit="branch")
    for p, prompt in enumerate(chosen):
        cond = model.encode([prompt.text])
        x0 = model.initial_noise(1, generator)
        _, states, velocities = ode_run(model.velocity, x0, cond, sigmas, list(range(n + 1)), keep=True)
        noises = [model.initial_noise(group, generator) for _ in range(n)]
        # every (step, length)'s G branches, continued by ODE as lanes of one batched run
        samples = [sde_sample(states[i], velocities[i], sigmas, i, k, noises[i], eta)[0] for i, k in pairs]
        finals = ode_lanes(model.velocity, [(x, list(range(i + k, n + 1))) for x, (i, k) in zip(samples, pairs)],
                           cond, sigmas, sampling["max_batch_size"])
        for (i, k), final in zip(pairs, finals):
            components = setting.components(model.decode(final), [prompt.text] * group)
            combined = setting.combine(components).float()
            flat = final.flatten(1)
            rows.append({
                "prompt_index": p, "step": i, "length": k,
                "latent_variance": float(flat.var(dim=0, unbiased=False).mean()),
                "pairwise_distance": float(torch.pdist(flat).mean()),
                "reward_mean": float(combined.mean()),
                "reward_std": float(combined.std(unbiased=False)),
                **{f"reward_std_{c}": float(v.float().std(unbiased=False)) for c, v in components.items()},
            })
            bar.update()
    bar.close()
    per_prompt = pd.DataFrame(rows)
    per_prompt["tie"] = (per_prompt["reward_std"] <= pcfg["tie_tolerance"]).astype(float)
    table = per_prompt.drop(columns="prompt_index").groupby(["length", "step"]).mean().reset_index()
    table = table.rename(columns={"tie": "tie_share"})
    table.insert(2, "sigma", [float(sigmas[i]) for i in table["step"]])
    table.insert(3, "sigma_next", [float(sigmas[i + k]) for i, k in zip(table["step"], table["length"])])
    table.insert(4, "entropy", [sde.analytic_entropy(sigmas, i, k, eta) for i, k in zip(table["step"], table["length"])])
    return table


def plot_profile(table: pd.DataFrame, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.bar(table["step"], table["entropy"], color="#9ecae1", label="analytic entropy H(i,1) [nats]")
    ax.set_xlabel("denoising step i")
    ax.set_ylabel("entropy [nats / latent dim]")
    twin = ax.twinx()
    twin.plot(table["step"], table["reward_std"], "o-", color="#d62728", label="measured reward std")
    twin.plot(table["step"], table["latent_variance"] / max(table["latent_variance"].max(), 1e-12)
              * max(table["reward_std"].max(), 1e-12), "s--", color="#2ca02c", alpha=0.7,
              label="latent variance (scaled)")
    twin.set_ylabel("reward std across branches")
    lines = ax.get_legend_handles_labels()
    lines2 = twin.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="upper right")
    ax.set_title("Entropy profile: analytic vs measured exploration per step")
    save_figure(fig, path)
    plt.close(fig)


def run_profile(cfg: dict, model_dir, out_csv, out_png) -> pd.DataFrame:
    rs = profile_reward_setting(cfg)
    prompts = load_prompts(cfg["prompts"]["train"], "prompts.train")
    model = FlowModel(load_pipeline(cfg, model_dir), cfg)
    setting = RewardSetting(cfg["reward_settings"][rs], cfg)
    with stage_run(cfg, "profile", {"reward_setting": rs}, out=out_csv) as (mlflow, run):
        log.info("profiling %d steps x %d prompts, reward setting %s", cfg["sampling"]["num_steps"],
                 min(len(prompts), cfg["profile"]["num_prompts"]), rs)
        with torch.no_grad():
            table = measure(model, cfg, setting, prompts)
        table["mlflow_run_id"] = run.info.run_id
        merged = table[table["length"] > 1]
        table = table[table["length"] == 1].drop(columns="length").reset_index(drop=True)
        atomic_write_text(out_csv, table.to_csv(index=False))
        atomic_write_text(Path(out_csv).with_name("entropy_merged.csv"), merged.to_csv(index=False))
        plot_profile(table, out_png)
        for _, row in table.iterrows():
            mlflow.log_metrics({"entropy": row["entropy"], "reward_std": row["reward_std"],
                                "latent_variance": row["latent_variance"]}, step=int(row["step"]))
        mlflow.log_metric("nfe", model.nfe)
        mlflow.log_artifact(str(out_csv))
        mlflow.log_artifact(str(out_png))
    return table
