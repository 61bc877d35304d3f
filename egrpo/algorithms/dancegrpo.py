"""DanceGRPO: every step SDE, G full trajectories per prompt, one advantage per trajectory.

Recipe (DanceGRPO's train_grpo_flux.py with scripts/finetune/finetune_flux_grpo.sh; VisualGRPO runs
a byte-identical copy as its baseline; docs/baselines.md):
  - its own SDE `flux_step` (std = eta*sqrt(-dt), score-based drift) with eta 0.3   (sde, eta)
  - one initial noise for the whole group (--init_same_noise)                       (same_initial_noise)
  - the reward scores the decoded x0-prediction of the last step, x_{N-1} - sigma_{N-1} v (reward_on)
  - every member trains int(0.6 * (N - 1)) steps drawn from 0 … N-2 by its own random
    permutation (the last step sigma_{N-1} -> 0 is never trained)  (timestep_fraction, step_selection,
    exclude_last_step)
  - an optimizer step after every 4 samples (gradient_accumulation_steps 4)   (optimizer_step, samples_per_step)
With a shared initial noise the first velocity is computed once for the group, so the rollout costs
1 + G*(N-1) model calls per prompt (G*N with independent noises); training costs one forward+backward
per trained (member, step), and one per optimizer step for a transition that members share.
"""
from __future__ import annotations

import torch

from egrpo.algorithms.base import Algorithm
from egrpo.rollout import Group, Transition, sde_trajectory


class DanceGRPO(Algorithm):
    name = "dancegrpo"

    def __init__(self, cfg, plan=None, sigmas=None):
        super().__init__(cfg, plan, sigmas)
        p = self.params
        self.same_initial_noise = p["same_initial_noise"]
        self.reward_on = p["reward_on"]
        self.step_selection = p["step_selection"]
        self.candidates = list(range(self.num_steps - 1 if p["exclude_last_step"] else self.num_steps))
        if not self.candidates:
            raise ValueError(f"{self.name}: exclude_last_step leaves no step to train with num_steps 1")
        self.num_trained = max(1, int(p["timestep_fraction"] * len(self.candidates)))

    def trained_steps(self, generator: torch.Generator) -> list[list[int]]:
        """The steps each member trains this iteration (sorted), by step_selection."""
        n, cand = self.num_trained, self.candidates
        if self.step_selection == "first":
            return [cand[:n]] * self.group_size
        if self.step_selection == "per_group":
            chosen = sorted(cand[i] for i in torch.randperm(len(cand), generator=generator, device="cpu")[:n].tolist())  # on the CPU: step choice
            return [chosen] * self.group_size
        return [sorted(cand[i] for i in torch.randperm(len(cand), generator=generator, device="cpu")[:n].tolist())  # on the CPU: step choice
                for _ in range(self.group_size)]

    def rollout(self, model, cond, prompt_index, generator, iteration):
        g = self.group_size
        x0 = model.initial_noise(1 if self.same_initial_noise else g, generator)
        states, logps, x0_hat = sde_trajectory(model.velocity, x0, cond, self.sigmas, self.eta, generator,
                                               set(range(self.num_steps)), g, self.mean_std)
        per_member = self.trained_steps(generator)
        transitions = []
        for i in sorted(set().union(*per_member)):
            members = [m for m in range(g) if i in per_member[m]]
            x_from = states[i] if states[i].shape[0] == 1 else states[i][members]
            transitions.append(Transition(i, i + 1, x_from, states[i + 1][members], logps[i][members], members))
        final = x0_hat if self.reward_on == "x0_pred" else states[-1]
        return [Group(prompt_index, {"g1": final}, transitions, {"trained_steps": per_member})]

    def expected_rollout_nfe(self, groups):
        per_prompt = 1 + self.group_size * (self.num_steps - 1) if self.same_initial_noise \
            else self.group_size * self.num_steps
        return per_prompt * len(groups)
