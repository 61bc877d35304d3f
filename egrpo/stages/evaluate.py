"""Stage `evaluate`: sample a policy (or the base model) on held-out prompts, score every reward.

Sampling is the deterministic ODE sampler (what FluxPipeline does with the pinned schedule), with
a fixed seed per (prompt, image), so the base model and every policy see the same initial noise.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pandas as pd
import torch

from egrpo import compworld
from egrpo.config import reward_names
from egrpo.errors import TimeLimitStop, UserError
from egrpo.models import FlowModel, family_of, load_pipeline, load_policy
from egrpo.rewards import build_reward
from egrpo.runtime import faults
from egrpo.runtime.io import atomic_write_json, atomic_write_text, load_prompts
from egrpo.runtime.timelimit import JobClock
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
    p.add_argument("--resume-dir", help="what is scored so far, kept outside the outputs until success: a killed or "
                                        "time-limited job continues from the next prompt (default: <out>/.resume)")
    p.add_argument("--gpus", type=int, default=0,
                   help="with more than one, run one process per GPU (accelerate launch), each sampling its share "
                        "of the prompts; the first merges")


def run(args, cfg) -> None:
    from egrpo.runtime import launch

    if args.gpus > 1 and not launch.launched():
        launch.relaunch_with_accelerate(args.gpus, launch.worker_argv(args.argv))
    run_evaluate(cfg, args.name, args.model, args.checkpoint, args.out, args.resume_dir)

log = logging.getLogger("egrpo.stages.evaluate")


def to_uint8(image: torch.Tensor):
    """[3, H, W] in [0, 1] -> [H, W, 3] uint8 array."""
    return (image.permute(1, 2, 0).numpy() * 255).round().astype("uint8")


def image_grid(images: list[torch.Tensor], columns: int, min_size: int = 96):
    """Tile images [3, H, W] into one uint8 array, `columns` per row; images smaller than `min_size`
    px are enlarged by a whole factor (nearest neighbour: the tiny world's 32 px stay readable)."""
    import numpy as np

    scale = max(1, -(-min_size // max(images[0].shape[1:])))
    tiles = [np.repeat(np.repeat(to_uint8(img), scale, 0), scale, 1) for img in images]
    rows = (len(tiles) + columns - 1) // columns
    h, w, _ = tiles[0].shape
    canvas = np.ones((rows * (h + 2), columns * (w + 2), 3), dtype=np.uint8) * 255
    for n, tile in enumerate(tiles):
        r, c = divmod(n, columns)
        canvas[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = tile
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


class Shard:
    """This process's share of the prompts (every world-th from its rank) and the others' meeting point."""

    def __init__(self):
        import os

        self.world, self.rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
        if self.world > 1:
            from accelerate import PartialState

            self.state = PartialState(cpu=not torch.cuda.is_available())

    def mine(self, indices: list[int]) -> list[int]:
        return indices[self.rank::self.world]

    def barrier(self) -> None:
        if self.world > 1:
            self.state.wait_for_everyone()


def scored_so_far(resume_dir: Path, part: str = "eval") -> pd.DataFrame:
    """Every image of `part` (eval, benchmark) scored by any process of any earlier attempt
    (<part>-<rank>.jsonl, one line per image)."""
    rows = [json.loads(line) for f in sorted(resume_dir.glob(f"{part}-*.jsonl")) for line in f.read_text().splitlines()
            if line.strip()]
    return pd.DataFrame(rows).drop_duplicates(["prompt_index", "image_index"], keep="last") if rows else pd.DataFrame()


def score_part(model, rewards: dict, num_steps: int, batch: int, resume_dir: Path, shard, clock, part: str, prompts,
               per_prompt: int, seed: int, image_dir: Path | None) -> None:
    """Sample and score this process's share of the prompts not scored yet, one prompt's images
    appended to <part>-<rank>.jsonl at a time; stops between prompts before a time limit (exit 75)."""
    from PIL import Image

    done = scored_so_far(resume_dir, part)
    finished = set(done["prompt_index"]) if not done.empty else set()
    todo = shard.mine([p for p in range(len(prompts)) if p not in finished])
    shard.barrier()   # every process has read what was scored before any of them adds to it
    if finished:
        log.info("resuming %s: %d of %d prompts scored before", part, len(finished), len(prompts))
    if image_dir is not None:
        image_dir.mkdir(parents=True, exist_ok=True)
    plan = faults.plan()
    with open(resume_dir / f"{part}-{shard.rank}.jsonl", "a") as sink:
        pending, scored_here = [], 0
        for start in range(0, len(todo), batch):
            reason = clock.reason_to_stop() if clock.longest_iteration_s else None
            if reason:
                raise TimeLimitStop(f"{reason}; {len(finished) + scored_here} of {len(prompts)} {part} prompts scored "
                                    f"and kept in {resume_dir}: the next job continues from there")
            started = time.perf_counter()
            for p, m, s, image in sample_images(model, prompts, num_steps, per_prompt, seed, progress=False,
                                                indices=todo[start:start + batch], batch_prompts=batch):
                scores = {r: float(fn(image.unsqueeze(0), [prompts[p].text])[0]) for r, fn in rewards.items()}
                if image_dir is not None:
                    Image.fromarray(to_uint8(image)).save(image_dir / f"p{p:04d}_i{m}.png")
                pending.append({"prompt_index": p, "prompt": prompts[p].text, "style": prompts[p].style,
                                "image_index": m, "seed": s, **scores})
                if m == per_prompt - 1:   # a prompt is kept once all its images are
                    sink.writelines(json.dumps(row) + "\n" for row in pending)
                    sink.flush()
                    pending, scored_here = [], scored_here + 1
                    plan.after_prompts(scored_here, resumed=bool(finished))
            clock.iteration_took(time.perf_counter() - started)


def run_evaluate(cfg: dict, name: str, model_dir, checkpoint, out_dir, resume_dir=None) -> dict | None:
    """Sample and score every evaluation prompt; resumable prompt by prompt, shardable over processes.

    Each prompt's images are scored, saved (images/) and appended to the resume folder's
    eval-<rank>.jsonl (benchmark-<rank>.jsonl) before the next prompt starts: a killed job, a time
    limit (exit 75) or a retry with another number of processes continues with the prompts not yet
    there. Seeds are per (prompt,
    image), so the scores do not depend on how the prompts were split or resumed."""
    out_dir = Path(out_dir)
    resume_dir = Path(resume_dir) if resume_dir else out_dir / ".resume"
    prompts = load_prompts(cfg["prompts"]["eval"], "prompts.eval")
    ecfg = cfg["evaluate"]
    num_steps = ecfg["num_steps"] or cfg["sampling"]["num_steps"]
    names = reward_names(cfg)
    tags = {"policy": name}
    if name != "base":
        algorithm, reward_setting, seed = name.rsplit("-", 2)
        tags.update(algorithm=algorithm, reward_setting=reward_setting, seed=seed.removeprefix("seed"))
    shard = Shard()
    pipe = load_pipeline(cfg, model_dir)
    if checkpoint:
        load_policy(pipe.transformer, checkpoint, family_of(pipe).lora_targets)
    model = FlowModel(pipe, cfg, resolution=ecfg["resolution"], guidance=ecfg["guidance"])
    rewards = {r: build_reward(r, cfg) for r in names}
    resume_dir.mkdir(parents=True, exist_ok=True)
    parts = [("eval", prompts, ecfg["images_per_prompt"], ecfg["seed"], out_dir / "images")]
    if cfg["prompts"].get("benchmark"):   # hpsv2's benchmark: every metric per style, its own seeds, no images kept
        benchmark = load_prompts(cfg["prompts"]["benchmark"], "prompts.benchmark")
        if not any(p.style for p in benchmark):
            raise UserError(f"prompts.benchmark: {cfg['prompts']['benchmark']} gives no style; use the benchmark.json "
                            "of `egrpo prompts` (or JSON with a style per prompt)")
        parts.append(("benchmark", benchmark, ecfg["benchmark_images_per_prompt"], ecfg["seed"] + 1, None))
    clock = JobClock(ecfg["time_limit_margin_s"])
    for part in parts:
        score_part(model, rewards, num_steps, ecfg["batch_size"], resume_dir, shard, clock, *part)
    shard.barrier()
    if shard.rank != 0:
        return None
    return _write_outputs(cfg, name, tags, model, prompts, rewards, num_steps, out_dir, resume_dir)


def _write_outputs(cfg, name, tags, model, prompts, rewards, num_steps, out_dir: Path, resume_dir: Path) -> dict:
    """scores.csv, summary.json and grid.png from every scored image (rank 0, after all processes)."""
    import shutil

    import numpy as np
    from PIL import Image

    ecfg, names = cfg["evaluate"], list(rewards)
    table = scored_so_far(resume_dir, "eval").sort_values(["prompt_index", "image_index"]).reset_index(drop=True)
    table = table[["prompt_index", "prompt", "style", "image_index", "seed", *names]]
    with stage_run(cfg, "evaluate", tags, run_name=f"evaluate-{name}", out=out_dir) as (mlflow, run):
        atomic_write_text(out_dir / "scores.csv", table.to_csv(index=False))
        styled = table if table["style"].notna().any() else None
        if cfg["prompts"].get("benchmark"):  # hpsv2's benchmark: every metric per style
            styled = scored_so_far(resume_dir, "benchmark").sort_values(["prompt_index", "image_index"])
            styled = styled[["prompt_index", "prompt", "style", "image_index", "seed", *names]].reset_index(drop=True)
            atomic_write_text(out_dir / "scores_benchmark.csv", styled.to_csv(index=False))
        summary = {"name": name, "num_prompts": len(prompts), "images_per_prompt": ecfg["images_per_prompt"],
                   "num_steps": num_steps, "resolution": model.resolution, "guidance": model.guidance,
                   "metrics": {r: {"mean": float(table[r].mean()), "std": float(table[r].std(ddof=0)),
                                   "se": evaluation_se(table, r)} for r in names},
                   "per_task": compworld.per_task([p.text for p in prompts], table, names),
                   "per_style": ({str(style): {r: float(g[r].mean()) for r in names}
                                  for style, g in styled.groupby("style")} if styled is not None else {}),
                   "nfe": model.nfe, "mlflow_run_id": run.info.run_id}
        shown = [torch.from_numpy(np.array(Image.open(out_dir / "images" / f"p{p:04d}_i{m}.png").convert("RGB")))
                 .permute(2, 0, 1).float() / 255 for p, m in zip(table["prompt_index"], table["image_index"]) if p < 8]
        Image.fromarray(image_grid(shown, ecfg["images_per_prompt"] * 4)).save(out_dir / "grid.png")
        atomic_write_json(out_dir / "summary.json", summary)
        mlflow.log_metrics({f"eval_{r}": v["mean"] for r, v in summary["metrics"].items()})
        mlflow.log_metrics({f"eval_{r}_se": v["se"] for r, v in summary["metrics"].items()})
        for f in ("scores.csv", "summary.json", "grid.png", "scores_benchmark.csv"):
            if (out_dir / f).is_file():
                mlflow.log_artifact(str(out_dir / f))
    shutil.rmtree(resume_dir, ignore_errors=True)
    return summary
