"""Rollout throughput: the E-GRPO group rollout against a one-sample-at-a-time reference.

    python benchmarks/rollout.py [--group-size 12] [--num-steps 16] [--tiny]

Ours: one ODE anchor per prompt, the velocity at each branching state computed once and shared by
the G members, the G branches batched. Reference (how the paper's code samples): every member
rolls out alone, recomputing the shared prefix and the branching velocity. Same model, plan and
noises; the samples are checked equal to tolerance. RESULT = samples/s ratio (ours / reference).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MEDIUM, benchmark_config, best_of, build_model, machine  # noqa: E402


def reference_rollout(model, cond, sigmas, plan, x0, noises, eta):
    """One sample at a time: prefix, branching velocity and ODE suffix recomputed per member."""
    from egrpo import sde

    finals = []
    n = len(sigmas) - 1
    for (s, k), noise in zip(plan, noises):
        group = []
        for g in range(noise.shape[0]):
            x = x0
            for i in range(s):
                x = sde.ode_step(x, model.velocity(x, float(sigmas[i]), cond), sigmas, i, i + 1)
            v = model.velocity(x, float(sigmas[s]), cond)
            mean, std = sde.sde_mean_std(x, v, sigmas, s, s + k, eta)
            x = mean + std * noise[g:g + 1]
            for i in range(s + k, n):
                x = sde.ode_step(x, model.velocity(x, float(sigmas[i]), cond), sigmas, i, i + 1)
            group.append(x)
        finals.append(torch.cat(group))
    return finals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group-size", type=int, default=12)
    parser.add_argument("--num-steps", type=int, default=16)
    parser.add_argument("--tiny", action="store_true", help="the default tiny model instead of ~3 M parameters")
    args = parser.parse_args()

    from egrpo.algorithms import build_algorithm
    from egrpo.threshold import make_plan

    cfg = benchmark_config(None if not args.tiny else None, num_steps=args.num_steps, group_size=args.group_size)
    if args.tiny:
        cfg["model"]["tiny"] = {**MEDIUM, "text_hidden": 32, "attention_heads": 2, "head_dim": 16,
                                "num_layers": 1, "num_single_layers": 1, "vae_channels": 8}
    _, model = build_model(cfg)
    params = sum(p.numel() for p in model.transformer.parameters())
    plan = [(e["start"], e["length"]) for e in make_plan(cfg, None)["plan"]]
    algo = build_algorithm("egrpo", cfg, plan)
    cond = model.encode(["a red circle on a blue background"])
    g, eta = args.group_size, cfg["sampling"]["eta"]

    def ours():
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            return algo.rollout(model, cond, 0, generator, 0)

    groups = ours()
    # the same noises, drawn in the same order as EGRPO.rollout draws them
    generator = torch.Generator().manual_seed(0)
    x0 = model.initial_noise(1, generator)
    noises = [model.initial_noise(g, generator) for _ in plan]

    def reference():
        with torch.no_grad():
            return reference_rollout(model, cond, algo.sigmas, plan, x0, noises, eta)

    ref = reference()
    worst = max(float((grp.finals["g1"] - r).abs().max()) for grp, r in zip(groups, ref))
    assert worst < 1e-4, f"batched and one-at-a-time samples differ by {worst}"
    samples = g * len(plan)
    t_ours, t_ref = best_of(ours), best_of(reference, 2)
    print(f"machine: {machine()}")
    print(f"transformer parameters: {params / 1e6:.2f} M; N = {args.num_steps}, G = {g}, plan entries {len(plan)}")
    print(f"max |difference| of final latents: {worst:.2e}")
    print(f"ours:      {t_ours:.3f} s ({samples / t_ours:.1f} samples/s)")
    print(f"reference: {t_ref:.3f} s ({samples / t_ref:.1f} samples/s)")
    print(f"RESULT rollout_speedup {t_ref / t_ours:.2f}")


if __name__ == "__main__":
    main()
