"""MixGRPO: SDE only inside a sliding window of W steps, ODE elsewhere; the window moves.

Window start at iteration t: w(t) = min(floor(t / shift_interval) * window_stride, N - W).
Per prompt the group shares one initial noise, so the ODE prefix x_0 … x_w and v(x_w) are
computed once (w + 1 calls); the G members draw their own noise from step w on, take SDE steps
w … w+W-1 and ODE after. Rollout cost per prompt: (w + 1) + G * (N - w - 1). All W window steps
are trained: the first from the shared x_w (one forward+backward), the others per member
(G each): 1 + G * (W - 1).
"""
from __future__ import annotations

import torch

from egrpo import sde
from egrpo.algorithms.base import Algorithm
from egrpo.rollout import Group, Transition, ode_run


class MixGRPO(Algorithm):
    name = "mixgrpo"

    def __init__(self, cfg, plan=None):
        super().__init__(cfg, plan)
        self.window = min(self.params.get("window_size", 4), self.num_steps)
        self.shift_interval = self.params.get("shift_interval", 5)
        self.stride = self.params.get("window_stride", 1)

    def window_start(self, iteration: int) -> int:
        return min((iteration // self.shift_interval) * self.stride, self.num_steps - self.window)

    @torch.no_grad()
    def rollout(self, model, cond, prompt_index, generator, iteration):
        w, n, g = self.window_start(iteration), self.num_steps, self.group_size
        x0 = model.initial_noise(1, generator)
        _, states, velocities = ode_run(model.velocity, x0, cond, self.sigmas, list(range(w + 2)), keep=True)
        x_w, v_w = states[w], velocities[w]
        cond_group = cond.expand(g)
        transitions = []
        x, v = x_w, v_w
        for i in range(w, n):
            if i > w:
                v = model.velocity(x, float(self.sigmas[i]), cond_group)
            if i < w + self.window:
                mean, std = self.mean_std(x, v, self.sigmas, i, i + 1, self.eta)
                noise = model.initial_noise(g, generator) if i == w else \
                    torch.randn(x.shape, generator=generator).to(x.device)
                x_next = mean.expand(g, -1, -1) + std * noise
                transitions.append(Transition(i, i + 1, x, x_next,
                                              sde.gaussian_log_prob(x_next, mean.expand_as(x_next), std)))
            else:
                x_next = sde.ode_step(x, v, self.sigmas, i, i + 1)
            x = x_next
        return [Group(prompt_index, {"g1": x}, transitions, {"window_start": w})]

    def expected_rollout_nfe(self, groups):
        return sum(g.info["window_start"] + 1 + self.group_size * (self.num_steps - g.info["window_start"] - 1)
                   for g in groups)
