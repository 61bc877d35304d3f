"""DanceGRPO: every step SDE, G full trajectories per prompt, one advantage per trajectory.

Each member starts from its own initial noise (so no model call is shared: G * N per prompt) and
is trained on a random `timestep_fraction` of the N steps each iteration (G forward+backward per
trained step). The SDE is E-GRPO's by default, so a comparison isolates the algorithm;
`sde: dance` selects DanceGRPO's own (std = eta*sqrt(-dt), score-based drift; its paper: eta 0.3).
"""
from __future__ import annotations

import torch

from egrpo import sde
from egrpo.algorithms.base import Algorithm
from egrpo.rollout import Group, Transition, sde_trajectory


class DanceGRPO(Algorithm):
    name = "dancegrpo"

    def __init__(self, cfg, plan=None):
        super().__init__(cfg, plan)
        if self.params.get("sde", "egrpo") == "dance":
            self.mean_std = sde.dance_mean_std
        if self.params.get("eta") is not None:
            self.eta = self.params["eta"]
        self.num_trained = max(1, round(self.params.get("timestep_fraction", 0.5) * self.num_steps))

    def rollout(self, model, cond, prompt_index, generator, iteration):
        x0 = model.initial_noise(self.group_size, generator)
        states, logps = sde_trajectory(model.velocity, x0, cond.expand(self.group_size), self.sigmas,
                                       self.eta, generator, set(range(self.num_steps)), self.mean_std)
        trained = torch.randperm(self.num_steps, generator=generator)[:self.num_trained].sort().values.tolist()
        transitions = [Transition(i, i + 1, states[i], states[i + 1], logps[i]) for i in trained]
        return [Group(prompt_index, {"g1": states[-1]}, transitions, {"trained_steps": trained})]

    def expected_rollout_nfe(self, groups):
        return self.group_size * self.num_steps * len(groups)
