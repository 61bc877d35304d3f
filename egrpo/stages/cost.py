"""`egrpo cost`: what a config will compute, before the allocation is spent (egrpo/cost.py)."""
from __future__ import annotations

from egrpo.config import load, tiny_world_model
from egrpo.cost import attempts_needed, estimate

NAME = "cost"
HELP = ("Print what every train and evaluate job of the config computes (exact transformer calls, "
        "forward-equivalents) and its GPU-hours from the measured rates, and whether each fits its runtime.")


CONFIG = None   # its own --config: a config and its overlays


def add_arguments(p) -> None:
    p.add_argument("--config", required=True, nargs="+", metavar="YAML",
                   help="YAML config, then overlays merged on it as `snakemake --configfile A B` merges them "
                        "(e.g. config/paper.yaml config/paper-1gpu.yaml)")
    p.add_argument("--retries", type=int, default=2,
                   help="Snakemake's retries (profiles/slurm: 2): a job may take retries + 1 runtimes (default 2)")


def run(args, cfg) -> None:
    cfg = load(*args.config)
    jobs, source = estimate(cfg, paper_scale=not tiny_world_model(cfg))
    print(f"rates: {source}")
    print(f"{'job':24s} {'count':>5s} {'iterations':>10s} {'fwd-equiv':>12s} {'GPU-h each':>10s} {'GPUs':>4s} "
          f"{'wall h':>7s} {'runtime h':>9s}  fits")
    total = 0.0
    for job, count, gpus in jobs:
        runtime = cfg["resources"]["train" if job.job.startswith("train") else "evaluate"].get("runtime")
        hours = None if job.gpu_seconds is None else job.gpu_seconds / 3600
        wall = None if hours is None or not gpus else hours / gpus
        needed = attempts_needed(job, gpus, runtime)
        if needed is None:
            fits = "unknown"
        elif needed == 1:
            fits = "yes"
        elif needed <= args.retries + 1:
            fits = f"in {needed} jobs of its runtime (each resumes the last)"
        else:
            fits = f"NO: {needed} jobs of its runtime, the retries allow {args.retries + 1}; the SLURM preflight refuses it"
        total += (hours or 0.0) * count
        fmt = lambda v, spec: "n/a" if v is None else format(v, spec)
        print(f"{job.job:24s} {count:5d} {job.iterations:10d} {job.forward_equivalents:12,d} {fmt(hours, '10.1f')} "
              f"{gpus:4d} {fmt(wall, '7.1f')} {fmt(runtime and runtime / 60, '9.1f')}  {fits}"
              + (f"  ({job.note})" if job.note else ""))
    print(f"total: {total:,.0f} GPU-hours (transformer only, the held-out curve's sampling included: decoding, "
          "text encoding and rewards come on top)" if total else "total: no GPU-hours (no measured rate for this config)")
