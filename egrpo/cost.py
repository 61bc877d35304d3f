"""What a config will compute before any job runs: the exact model calls of every train and evaluate
job (the algorithms' own rollouts, run on a counting stand-in of the model: no weights, no device),
forward-equivalents, and GPU-seconds from the measured rates of egrpo/data/rates.yaml (transformer
only; unmeasured families and resolutions say so).

Train job: iterations (or the budget of train.max_forward_equivalents, whichever ends first) x the
calls of one iteration of `train.prompts_per_iteration` prompts; rollout calls cost a forward each,
training calls a forward + backward, reference (KL) calls a forward; the held-out curve's sampling
(train.heldout) a forward per call, in the GPU-seconds but apart from the budget. Evaluate job: the eval and
benchmark prompts x images x steps. Profile, threshold, report: small, not counted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import yaml

from egrpo.algorithms import build_algorithm
from egrpo.algorithms.facts import uses_plan
from egrpo.errors import UserError
from egrpo.models.base import Conditioning, TrueCFG
from egrpo.models.registry import family_class
from egrpo.plan import make_plan
from egrpo.runtime.io import load_prompts
from egrpo.runtime.paths import DATA


class CountingModel:
    """The part of FlowModel a rollout uses, counting calls: velocities are zeros, latents tiny."""

    def __init__(self, evaluations_per_call: int):
        self.evaluations_per_call, self.nfe, self.device = evaluations_per_call, 0, torch.device("cpu")

    def initial_noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(n, 1, 1, generator=generator, device="cpu")

    def velocity(self, x: torch.Tensor, sigma, cond, reference: bool = False) -> torch.Tensor:
        self.nfe += x.shape[0] * self.evaluations_per_call
        return torch.zeros_like(x)


@dataclass
class JobCost:
    job: str
    iterations: int
    rollout_calls: int
    train_calls: int
    reference_calls: int
    forward_equivalents: int
    gpu_seconds: float | None
    note: str
    heldout_calls: int = 0    # the held-out curve's sampling (train.heldout): in gpu_seconds, not in the budget


def evaluations_per_call(cfg: dict) -> int:
    family = family_class(cfg["model"].get("family") or "flux")
    return 2 if issubclass(family, TrueCFG) and cfg["sampling"]["guidance"] > 1 else 1


def plan_without_profile(cfg: dict) -> list[tuple[int, int]]:
    """The merge plan from the config alone; a family's pipeline schedule needs the profile's sigmas,
    so there the static schedule stands in (within ~1% of the pipeline's: the same plan in practice)."""
    try:
        plan = make_plan(cfg, None)
    except UserError:
        plan = make_plan({**cfg, "sampling": {**cfg["sampling"], "schedule": "static"}}, None)
    return [(e["start"], e["length"]) for e in plan["plan"]]


def per_prompt_calls(cfg: dict, algorithm: str) -> tuple[int, int, int]:
    """(rollout, training, reference) transformer evaluations of one prompt in one iteration."""
    plan = plan_without_profile(cfg) if uses_plan(algorithm) else None
    algo = build_algorithm(algorithm, cfg, plan)
    model = CountingModel(evaluations_per_call(cfg))
    cond = Conditioning({"embeds": torch.zeros(1, 1, device="cpu")})
    groups = algo.rollout(model, cond, 0, torch.Generator().manual_seed(0), 0)
    scale = cfg["train"]["inner_epochs"] * model.evaluations_per_call
    train = algo.expected_train_nfe(groups) * scale
    reference = algo.expected_reference_nfe(groups) * scale
    return model.nfe, train, reference


def rate(cfg: dict, rates: list[dict], paper_scale: bool = True) -> tuple[dict | None, str]:
    """The measured rate for the config's family and resolution (scaled by image tokens), or None
    (a tiny model: paper_scale False, egrpo.config.tiny_world_model; or a family without a row)."""
    family, resolution = cfg["model"].get("family") or "flux", cfg["sampling"]["resolution"]
    if not paper_scale:
        return None, "a tiny model: the measured rates are of paper-scale shapes (it runs in minutes on a CPU)"
    rows = [r for r in rates if r["family"] == family]
    if not rows:
        return None, f"{family}: no measured rate (run benchmarks/gpu_e2e.py on a GPU)"
    nearest = min(rows, key=lambda r: abs(r["resolution"] - resolution))
    scale = (resolution / nearest["resolution"]) ** 2
    scaled = {k: nearest[k] * scale for k in ("forward_s", "forward_backward_s")}
    how = "measured" if scale == 1 else f"scaled from {nearest['resolution']} px by image tokens"
    return scaled, f"{nearest['gpu']}, {how}: {nearest['source']}"


def heldout_calls(cfg: dict, iterations: int, per_iteration: int) -> tuple[int, int]:
    """(points, transformer calls) of a run's held-out curve (train.heldout; egrpo/train/heldout.py):
    the base, then after every `every`-th iteration, whenever the spent forward-equivalents pass a
    multiple of `every_forward_equivalents`, and after the last; each point samples num_prompts x
    images_per_prompt images in sampling.num_steps steps."""
    h = cfg["train"]["heldout"]
    if h["every"] is None and h["every_forward_equivalents"] is None:
        return 0, 0
    due = {iterations}
    for i in range(1, iterations + 1):
        if h["every"] is not None and i % h["every"] == 0:
            due.add(i)
        fe = h["every_forward_equivalents"]
        if fe is not None and i * per_iteration // fe > (i - 1) * per_iteration // fe:
            due.add(i)
    points = 1 + len(due)
    prompts = min(h["num_prompts"], _prompt_count(cfg, "eval")[0])   # the first num_prompts of the eval file
    return points, points * prompts * h["images_per_prompt"] * cfg["sampling"]["num_steps"] * evaluations_per_call(cfg)


def train_cost(cfg: dict, algorithm: str, speed: dict | None) -> JobCost:
    rollout, train, reference = per_prompt_calls(cfg, algorithm)
    prompts = cfg["train"]["prompts_per_iteration"]
    per_iteration = prompts * (rollout + 3 * train + reference)
    iterations = cfg["train"]["iterations"]
    budget = cfg["train"]["max_forward_equivalents"]
    if budget is not None:
        iterations = min(iterations, math.ceil(budget / per_iteration))
    points, heldout = heldout_calls(cfg, iterations, per_iteration)
    seconds = None if speed is None else iterations * prompts * (
        (rollout + reference) * speed["forward_s"] + train * speed["forward_backward_s"]) + heldout * speed["forward_s"]
    note = (f"held-out curve: {points} points, {heldout:,d} calls ({heldout / (iterations * per_iteration):.1%} "
            "on top of the budget)") if heldout else ""
    return JobCost(f"train {algorithm}", iterations, iterations * prompts * rollout, iterations * prompts * train,
                   iterations * prompts * reference, iterations * per_iteration, seconds, note, heldout)


# prompts of the paper's evaluation files (HPDv2 test set, hpsv2's benchmark), used before they are downloaded
PUBLISHED = {"prompts.eval": 400, "prompts.benchmark": 3200}


def _prompt_count(cfg: dict, key: str) -> tuple[int, str]:
    try:
        return len(load_prompts(cfg["prompts"][key], f"prompts.{key}")), ""
    except UserError:
        return PUBLISHED[f"prompts.{key}"], f"prompts.{key} not there yet: counted as the published {PUBLISHED[f'prompts.{key}']}"


def evaluate_cost(cfg: dict, speed: dict | None) -> JobCost:
    e, calls_per = cfg["evaluate"], evaluations_per_call(cfg)
    steps = e["num_steps"] or cfg["sampling"]["num_steps"]
    n, notes = _prompt_count(cfg, "eval")
    images = n * e["images_per_prompt"]
    if cfg["prompts"].get("benchmark"):
        m, note = _prompt_count(cfg, "benchmark")
        images += m * e["benchmark_images_per_prompt"]
        notes = "; ".join(x for x in (notes, note) if x)
    calls = images * steps * calls_per
    scale = ((e["resolution"] or cfg["sampling"]["resolution"]) / cfg["sampling"]["resolution"]) ** 2
    seconds = None if speed is None else calls * speed["forward_s"] * scale
    return JobCost("evaluate (one policy)", 1, calls, 0, 0, calls, seconds,
                   f"{images} images x {steps} steps" + (f"; {notes}" if notes else ""))


def estimate(cfg: dict, paper_scale: bool = True) -> tuple[list[tuple[JobCost, int, float]], str]:
    """Every job kind with how many of it the config runs and its GPUs; the rate's source (none for
    a tiny model: paper_scale False)."""
    rates = yaml.safe_load((DATA / "rates.yaml").read_text())
    speed, source = rate(cfg, rates, paper_scale)
    res = cfg["resources"]
    runs = len(cfg["reward_settings"]) * len(cfg["seeds"])
    jobs = [(train_cost(cfg, a, speed), runs, res["train"].get("gpu", 0) * (res["train"].get("nodes") or 1))
            for a in cfg["algorithms"]]
    policies = 1 + len(cfg["algorithms"]) * runs
    jobs.append((evaluate_cost(cfg, speed), policies, res["evaluate"].get("gpu", 0)))
    return jobs, source


def attempts_needed(job: JobCost, gpus: int, runtime_min: float | None) -> int | None:
    """How many jobs of `runtime_min` minutes the job's estimated wall time takes on `gpus` GPUs
    (train and evaluate resume where the last attempt stopped); None when unknown."""
    if job.gpu_seconds is None or not gpus or not runtime_min:
        return None
    return max(1, math.ceil(job.gpu_seconds / gpus / 60 / runtime_min))


def runtime_problems(cfg: dict, attempts: int | None) -> list[str]:
    """One line per job kind whose estimate needs more jobs of its `resources.<rule>.runtime` than
    `attempts` (Snakemake's retries + 1) allow: such a job would be killed at its limit every time.
    With attempts None (not known yet), every job kind that needs more than one."""
    jobs, _ = estimate(cfg)
    problems = []
    for job, _count, gpus in jobs:
        rule = "train" if job.job.startswith("train") else "evaluate"
        runtime = cfg["resources"][rule].get("runtime")
        needed = attempts_needed(job, gpus, runtime)
        if needed is not None and needed > (attempts or 1):
            problems.append(f"{job.job}: ~{job.gpu_seconds / gpus / 3600:.1f} h on {gpus} GPU(s) by the measured rate "
                            f"= {needed} jobs of its {runtime} min runtime (resources.{rule}.runtime), "
                            + (f"but the retries allow {attempts}" if attempts else f"so it needs retries >= {needed - 1}"))
    return problems


def summary(cfg: dict) -> str | None:
    """One line for a dry run of a paper-scale config: its GPU-hours by the measured rates (None for
    an unmeasured family). Callers ask only for paper-scale configs (common.smk: PAPER_SCALE)."""
    jobs, source = estimate(cfg)
    if all(job.gpu_seconds is None for job, _, _ in jobs):
        return None
    hours = sum(job.gpu_seconds * count for job, count, _ in jobs if job.gpu_seconds is not None) / 3600
    return (f"~{hours:,.0f} GPU-hours of transformer compute by the measured rates ({source.split(':')[0]}); "
            "per job and against each runtime: egrpo cost --config <this config>")
