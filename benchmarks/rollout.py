"""Rollout throughput: the E-GRPO group rollout against two one-sample-at-a-time references.

    python benchmarks/rollout.py [--group-size 12] [--num-steps 16] [--strides 1 2] [--tiny]

Ours: one ODE anchor per prompt (s_max + 1 calls; the velocity at each branching state is
computed once and shared by the G members), the G branches of every entry and stride batched as
lanes of one ODE (one model call per step). References, batch 1, the same model, plan and noises
(samples checked equal to tolerance):

  official  VisualGRPO's sampler (flux_sampler.py): the ODE anchor once per prompt, over all N steps
            (its final sample is scored for evaluation there); per member the branching velocity,
            the SDE step, and each stride's ODE continuation, alone.
  recompute every member also re-integrates the prefix x_0 -> x_s alone (the old reference).

Printed per prompt: model calls and sample-forwards (the sum of batch sizes) of each, counted by
wrapping the model. RESULT rollout_speedup = samples/s ours / official; RESULT
rollout_speedup_vs_recompute = ours / recompute.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MEDIUM, benchmark_config, best_of, build_model, machine  # noqa: E402


class CallCounter:
    """Wraps model.velocity: counts calls and sample-forwards (each call adds its batch size)."""

    def __init__(self, velocity):
        self.velocity, self.calls, self.samples = velocity, 0, 0

    def __call__(self, x, sigma, cond):
        self.calls += 1
        self.samples += x.shape[0]
        return self.velocity(x, sigma, cond)


def reference_rollout(velocity, algo, cond, x0, noises, recompute_prefix: bool):
    """One sample at a time (batch 1). Returns, per plan entry, {"g<stride>": finals [G]}."""
    from egrpo.rollout import ode_grid, ode_run

    sigmas, n = algo.sigmas, algo.num_steps
    anchor = None if recompute_prefix else ode_run(velocity, x0, cond, sigmas, list(range(n + 1)), keep=True)[1]
    finals = []
    for (s, k), noise in zip(algo.plan, noises):
        per_stride = {g: [] for g in algo.strides}
        for m in range(noise.shape[0]):
            x_s = ode_run(velocity, x0, cond, sigmas, list(range(s + 1))) if recompute_prefix else anchor[s]
            v_s = velocity(x_s, float(sigmas[s]), cond)
            mean, std = algo.mean_std(x_s, v_s, sigmas, s, s + k, algo.eta)
            x_next = mean + std * noise[m:m + 1]
            for g in algo.strides:
                per_stride[g].append(ode_run(velocity, x_next, cond, sigmas, ode_grid(s + k, n, g, algo.official_grid)))
        finals.append({f"g{g}": torch.cat(xs) for g, xs in per_stride.items()})
    return finals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group-size", type=int, default=12)
    parser.add_argument("--num-steps", type=int, default=16)
    parser.add_argument("--strides", type=int, nargs="+", default=None,
                        help="E-GRPO's granular_list (default: the recipe's, [1, 2])")
    parser.add_argument("--tiny", action="store_true", help="the default tiny model instead of ~3 M parameters")
    args = parser.parse_args()

    from egrpo.algorithms import build_algorithm
    from egrpo.plan import make_plan

    cfg = benchmark_config(num_steps=args.num_steps, group_size=args.group_size)
    if args.tiny:
        cfg["model"]["tiny"] = {**MEDIUM, "text_hidden": 32, "attention_heads": 2, "head_dim": 16,
                                "num_layers": 1, "num_single_layers": 1, "vae_channels": 8}
    if args.strides:
        cfg["algorithm_params"]["egrpo"]["granular_list"] = args.strides
    _, model = build_model(cfg)
    params = sum(p.numel() for p in model.transformer.parameters())
    plan = [(e["start"], e["length"]) for e in make_plan(cfg, None)["plan"]]
    algo = build_algorithm("egrpo", cfg, plan)
    cond = model.encode(["a red circle on a blue background"])
    g = args.group_size
    counters = {}

    def ours():
        counters["ours"] = model.velocity = CallCounter(type(model).velocity.__get__(model))
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            return algo.rollout(model, cond, 0, generator, 0)

    groups = ours()
    # the same noises, drawn in the same order as EGRPO.rollout draws them
    generator = torch.Generator().manual_seed(0)
    x0 = model.initial_noise(1, generator)
    noises = [model.initial_noise(g, generator) for _ in plan]

    def reference(name):
        def run():
            counters[name] = counter = CallCounter(type(model).velocity.__get__(model))
            with torch.no_grad():
                return reference_rollout(counter, algo, cond, x0, noises, recompute_prefix=name == "recompute")
        return run

    worst = 0.0
    for name in ("official", "recompute"):
        for grp, ref in zip(groups, reference(name)()):
            worst = max(worst, max(float((grp.finals[key] - ref[key]).abs().max()) for key in ref))
    assert worst < 1e-4, f"batched and one-at-a-time samples differ by {worst}"
    samples = g * len(plan) * len(algo.strides)
    times = {"ours": best_of(ours), "official": best_of(reference("official"), 2),
             "recompute": best_of(reference("recompute"), 2)}
    print(f"machine: {machine()}")
    print(f"transformer parameters: {params / 1e6:.2f} M; N = {args.num_steps}, G = {g}, plan entries {len(plan)}, "
          f"strides {list(algo.strides)}, s_max = {max(s for s, _ in plan)}")
    print(f"plan (start, length): {plan}")
    print(f"max |difference| of final latents: {worst:.2e}")
    print(f"{'':10s} {'time':>9s} {'samples/s':>10s} {'model calls':>12s} {'sample-forwards':>16s}")
    for name, seconds in times.items():
        c = counters[name]
        print(f"{name:10s} {seconds:8.3f}s {samples / seconds:10.1f} {c.calls:12d} {c.samples:16d}")
    print(f"RESULT rollout_speedup {times['official'] / times['ours']:.2f}")
    print(f"RESULT rollout_speedup_vs_recompute {times['recompute'] / times['ours']:.2f}")


if __name__ == "__main__":
    main()
