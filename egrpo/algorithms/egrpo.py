"""E-GRPO: SDE only at the merge plan's (possibly merged) steps, ODE elsewhere.

Per prompt: one shared initial noise and one ODE anchor trajectory x_0 … x_{s_max}, whose
velocities are kept. For each plan entry (s, k) the G members of a group share x_s and v(x_s)
(computed once, by the anchor), draw their own noise for the transition s -> s+k, and continue by
ODE from index s+k to the end, once per stride g of `granular_list`; the continuations of all
entries and strides run as lanes of one batched ODE (one model call per step, per-sample sigma). Advantages are normalized
within each (entry, stride, reward) group. Training needs one forward+backward per entry: the
members share x_s, so one velocity gives all G log-probs.

The anchor runs only as far as the last branching index s_max (s_max + 1 model calls), not to
sigma_N: steps after s_max would be thrown away. So the rollout costs, per prompt,
    (s_max + 1) + sum_{(s,k)} sum_{g} G * ceil((N - s - k) / g).

Recipe (VisualGRPO, docs/baselines.md): granular_list [1, 2] with its stride grid (`stride_grid:
official`: one unit step, then stride g, the last point replaced by sigma 0), one optimizer step per
plan entry (`optimizer_step: per_entry`), weighted raw rewards summed before the group
normalization with the Bessel-corrected std. Deliberate departure: after a merged step the ODE
continues at s + k (VisualGRPO restarts at s + 1 and re-integrates k - 1 steps; its configs only
use k = 1).
"""
from __future__ import annotations

import torch

from egrpo.algorithms.base import Algorithm
from egrpo.rollout import Group, Transition, ode_grid, ode_lanes, ode_run, ode_suffix_calls, sde_sample


class EGRPO(Algorithm):
    name = "egrpo"

    def __init__(self, cfg, plan=None, sigmas=None):
        super().__init__(cfg, plan, sigmas)
        if not plan:
            raise ValueError("egrpo needs a non-empty merge plan")
        self.plan = [(int(s), int(k)) for s, k in plan]
        self.strides = tuple(self.params["granular_list"])
        self.official_grid = self.params["stride_grid"] == "official"
        self.entries_per_iteration = self.params["entries_per_iteration"]

    def entries_for(self, generator: torch.Generator) -> list[tuple[int, int]]:
        """The plan entries trained this iteration: all, or a random subset of fixed size."""
        n = self.entries_per_iteration
        if n is None or n >= len(self.plan):
            return list(self.plan)
        chosen = torch.randperm(len(self.plan), generator=generator, device="cpu")[:n].sort().values  # on the CPU: entry choice
        return [self.plan[i] for i in chosen.tolist()]

    def rollout(self, model, cond, prompt_index, generator, iteration):
        entries = self.entries_for(generator)
        x0 = model.initial_noise(1, generator)
        s_max = max(s for s, _ in entries)
        _, states, velocities = ode_run(model.velocity, x0, cond, self.sigmas, list(range(s_max + 2)), keep=True)
        samples = []
        for s, k in entries:
            noise = model.initial_noise(self.group_size, generator)
            samples.append(sde_sample(states[s], velocities[s], self.sigmas, s, k, noise, self.eta, self.mean_std))
        # the ODE continuations of every entry and stride share model calls (one per step)
        lanes = [(x_next, ode_grid(s + k, self.num_steps, g, self.official_grid))
                 for (s, k), (x_next, _) in zip(entries, samples) for g in self.strides]
        finals = iter(ode_lanes(model.velocity, lanes, cond, self.sigmas, self.cfg["sampling"]["max_batch_size"]))
        groups = []
        for (s, k), (x_next, logp) in zip(entries, samples):
            group_finals = {f"g{g}": next(finals) for g in self.strides}
            groups.append(Group(prompt_index, group_finals, [Transition(s, s + k, states[s], x_next, logp)],
                                {"start": s, "length": k}))
        return groups

    def expected_rollout_nfe(self, groups):
        s_max = max(g.info["start"] for g in groups)
        branches = sum(self.group_size * ode_suffix_calls(g.info["start"] + g.info["length"], self.num_steps, stride)
                       for g in groups for stride in self.strides)
        return s_max + 1 + branches
