"""Stage `evaluate`: sample a policy (or the base model) on held-out prompts, score every reward.

Sampling is the deterministic ODE sampler (what FluxPipeline does with the pinned schedule), with
a fixed seed per (prompt, image), so the base model and every policy see the same initial noise.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import torch

from egrpo import compworld
from egrpo.config import reward_names
from egrpo.errors import UserError
from egrpo.models import FlowModel, family_of, load_pipeline, load_policy
from egrpo.rewards import build_reward
from egrpo.runtime.io import atomic_write_json, atomic_write_text, load_prompts
from egrpo.runtime.tracking import stage_run
from egrpo.sampling import sample_images

NAME = "evaluate"
HELP = "Sample a policy on the held-out prompts and score every reward."
PHASE = "sampling"
INPUTS = ("checkpoint",)


def add_arguments(p) -> None:
    p.add_argument("--model", help="pipeline directory (default: model.path)")
    p.add_argument("--checkpoint", help="checkpoint/ of a trained policy (omit for the base model)")
    p.add_argument("--name", required=True, help="'base' or <algorithm>-<reward_setting>-seed<k>")
    p.add_argument("--out", required=True, help="output directory (scores.csv, summary.json, grid.png)")


def run(args, cfg) -> None:
    run_evaluate(cfg, args.name, args.model, args.checkpoint, args.out)

log = logging.getLogger("egrpo.stages.evaluate")


def to_uint8(image: torch.Tensor):
    """[3, H, W] in [0, 1] -> [H, W, 3] uint8 array."""
    return (image.permute(1, 2, 0).numpy() * 255).round().astype("uint8")


def image_grid(images: list[torch.Tensor], columns: int):
    """Tile images [3, H, W] into one uint8 array, `columns` per row."""
    import numpy as np

    rows = (len(images) + columns - 1) // columns
    _, h, w = images[0].shape
    canvas = np.ones((rows * (h + 2), columns * (w + 2), 3), dtype=np.uint8) * 255
    for n, img in enumerate(images):
        r, c = divmod(n, columns)
        canvas[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = to_uint8(img)
    return canvas


def evaluation_se(scores, metric: str) -> float:
    """Standard error of a policy's mean score from its evaluation alone: the std of the per-prompt
    means (ddof 1) / sqrt(prompts). Images of one prompt are correlated, so prompts are the units.
    Two policies whose means differ by less than about 2 * sqrt(se_a^2 + se_b^2) are within noise."""
    import math

    per_prompt = scores.groupby("prompt_index")[metric].mean()
    if len(per_prompt) < 2:
        return float("nan")
    return float(per_prompt.std(ddof=1) / math.sqrt(len(per_prompt)))


def score_benchmark(model: FlowModel, cfg: dict, rewards: dict, num_steps: int) -> pd.DataFrame:
    """Every metric of every image of the benchmark prompts (prompts.benchmark, each with its style),
    sampled as the evaluation prompts are, with their own seeds."""
    ecfg = cfg["evaluate"]
    prompts = load_prompts(cfg["prompts"]["benchmark"], "prompts.benchmark")
    if not any(p.style for p in prompts):
        raise UserError(f"prompts.benchmark: {cfg['prompts']['benchmark']} gives no style; use the benchmark.json "
                        "of `egrpo prompts` (or JSON with a style per prompt)")
    rows = []
    for p, m, s, image in sample_images(model, prompts, num_steps, ecfg["benchmark_images_per_prompt"],
                                        ecfg["seed"] + 1):
        scores = {r: float(fn(image.unsqueeze(0), [prompts[p].text])[0]) for r, fn in rewards.items()}
        rows.append({"prompt_index": p, "prompt": prompts[p].text, "style": prompts[p].style, "image_index": m,
                     "seed": s, **scores})
    return pd.DataFrame(rows)


def run_evaluate(cfg: dict, name: str, model_dir, checkpoint, out_dir) -> dict:
    from PIL import Image

    out_dir = Path(out_dir)
    prompts = load_prompts(cfg["prompts"]["eval"], "prompts.eval")
    ecfg = cfg["evaluate"]
    num_steps = ecfg["num_steps"] or cfg["sampling"]["num_steps"]
    names = reward_names(cfg)
    tags = {"policy": name}
    if name != "base":
        algorithm, reward_setting, seed = name.rsplit("-", 2)
        tags.update(algorithm=algorithm, reward_setting=reward_setting, seed=seed.removeprefix("seed"))
    pipe = load_pipeline(cfg, model_dir)
    if checkpoint:
        load_policy(pipe.transformer, checkpoint, family_of(pipe).lora_targets)
    model = FlowModel(pipe, cfg, resolution=ecfg["resolution"], guidance=ecfg["guidance"])
    rewards = {r: build_reward(r, cfg) for r in names}
    with stage_run(cfg, "evaluate", tags, run_name=f"evaluate-{name}", out=out_dir) as (mlflow, run):
        rows, grid = [], []
        image_dir = out_dir / "images"
        image_dir.mkdir(parents=True, exist_ok=True)
        for p, m, s, image in sample_images(model, prompts, num_steps, ecfg["images_per_prompt"], ecfg["seed"]):
            batch = image.unsqueeze(0)
            scores = {r: float(fn(batch, [prompts[p].text])[0]) for r, fn in rewards.items()}
            rows.append({"prompt_index": p, "prompt": prompts[p].text, "style": prompts[p].style,
                         "image_index": m, "seed": s, **scores})
            Image.fromarray(to_uint8(image)).save(image_dir / f"p{p:04d}_i{m}.png")
            if p < 8:
                grid.append(image)
        table = pd.DataFrame(rows)
        atomic_write_text(out_dir / "scores.csv", table.to_csv(index=False))
        styled = table if table["style"].notna().any() else None
        if cfg["prompts"].get("benchmark"):  # hpsv2's benchmark: every metric per style
            styled = score_benchmark(model, cfg, rewards, num_steps)
            atomic_write_text(out_dir / "scores_benchmark.csv", styled.to_csv(index=False))
        summary = {"name": name, "num_prompts": len(prompts), "images_per_prompt": ecfg["images_per_prompt"],
                   "num_steps": num_steps, "resolution": model.resolution, "guidance": model.guidance,
                   "metrics": {r: {"mean": float(table[r].mean()), "std": float(table[r].std(ddof=0)),
                                   "se": evaluation_se(table, r)} for r in names},
                   "per_task": compworld.per_task([p.text for p in prompts], table, names),
                   "per_style": ({str(style): {r: float(g[r].mean()) for r in names}
                                  for style, g in styled.groupby("style")} if styled is not None else {}),
                   "nfe": model.nfe, "mlflow_run_id": run.info.run_id}
        Image.fromarray(image_grid(grid, ecfg["images_per_prompt"] * 4)).save(out_dir / "grid.png")
        atomic_write_json(out_dir / "summary.json", summary)
        mlflow.log_metrics({f"eval_{r}": v["mean"] for r, v in summary["metrics"].items()})
        mlflow.log_metrics({f"eval_{r}_se": v["se"] for r, v in summary["metrics"].items()})
        for f in ("scores.csv", "summary.json", "grid.png", "scores_benchmark.csv"):
            if (out_dir / f).is_file():
                mlflow.log_artifact(str(out_dir / f))
    return summary
