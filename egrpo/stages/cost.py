"""`egrpo cost`: what a config will compute, before the allocation is spent (egrpo/cost.py)."""
from __future__ import annotations

from egrpo.cost import estimate

NAME = "cost"
HELP = ("Print what every train and evaluate job of the config computes (exact transformer calls, "
        "forward-equivalents) and its GPU-hours from the measured rates, and whether each fits its runtime.")


def add_arguments(p) -> None:
    pass


def run(args, cfg) -> None:
    jobs, source = estimate(cfg)
    print(f"rates: {source}")
    print(f"{'job':24s} {'count':>5s} {'iterations':>10s} {'fwd-equiv':>12s} {'GPU-h each':>10s} {'GPUs':>4s} "
          f"{'wall h':>7s} {'runtime h':>9s}  fits")
    total = 0.0
    for job, count, gpus in jobs:
        runtime = cfg["resources"]["train" if job.job.startswith("train") else "evaluate"].get("runtime")
        hours = None if job.gpu_seconds is None else job.gpu_seconds / 3600
        wall = None if hours is None or not gpus else hours / gpus
        if wall is None or runtime is None:
            fits = "unknown"
        elif wall <= runtime / 60:
            fits = "yes"
        else:
            fits = f"no: {wall / (runtime / 60):.1f} jobs of its runtime (it resumes each time)"
        total += (hours or 0.0) * count
        fmt = lambda v, spec: "n/a" if v is None else format(v, spec)
        print(f"{job.job:24s} {count:5d} {job.iterations:10d} {job.forward_equivalents:12,d} {fmt(hours, '10.1f')} "
              f"{gpus:4d} {fmt(wall, '7.1f')} {fmt(runtime and runtime / 60, '9.1f')}  {fits}"
              + (f"  ({job.note})" if job.note else ""))
    print(f"total: {total:,.0f} GPU-hours (transformer only: decoding, text encoding, rewards and the held-out "
          "curve come on top)" if total else "total: no GPU-hours (no measured rate for this config)")
