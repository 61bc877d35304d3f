"""MixGRPO: SDE only inside a sliding window of W steps, ODE elsewhere; the window moves.

Recipe (MixGRPO's train_grpo_flux.py with scripts/finetune/finetune_flux_grpo_MixGRPO.sh and
fastvideo/utils/grpo_states.py; docs/baselines.md): window_size 4, the window moves by 1 step every
25 iterations (iters_per_group 25, prog_overlap_step 1) and rolls back to step 0 after its last
position (--roll_back); the window never covers the last two steps (max_timesteps = N - 2, the window
is range(w, min(w + W, N - 2))); one initial noise per group; the E-GRPO/Flow-GRPO SDE at
sampling.eta (--flow_grpo_sampling, eta 0.7); the reward on the final sample; an optimizer step
after every 3 samples; rewards normalized separately, then summed (advantage_aggr).

Window start at iteration t, with k = floor(t / shift_interval), stride s and the P = floor((N - 3)/s) + 1
positions whose window is not empty: w(t) = (k mod P) * s with roll_back, min(k, P - 1) * s without.
(The official start also reaches N - 2, where its window is empty and the iteration trains nothing;
egrpo rolls back one position earlier.)
With a shared initial noise the ODE prefix x_0 … x_w and v(x_w) are computed once (w + 1 calls);
the G members draw their own noise from step w on: rollout cost (w + 1) + G * (N - w - 1) per prompt
(G * N with independent noises). The window's first step branches from the shared x_w (one
forward+backward per optimizer step that covers it), the others cost G each.
"""
from __future__ import annotations

import torch

from egrpo import sde
from egrpo.algorithms.base import Algorithm
from egrpo.rollout import Group, Transition, ode_run


class MixGRPO(Algorithm):
    name = "mixgrpo"

    def __init__(self, cfg, plan=None, sigmas=None):
        super().__init__(cfg, plan, sigmas)
        p = self.params
        if self.num_steps < 3:
            raise ValueError("mixgrpo needs sampling.num_steps >= 3 (its window never covers the last two steps)")
        self.window = min(p["window_size"], self.num_steps - 2)
        self.shift_interval = p["shift_interval"]
        self.stride = p["window_stride"]
        self.roll_back = p["roll_back"]
        self.same_initial_noise = p["same_initial_noise"]
        self.reward_on = p["reward_on"]
        self.positions = (self.num_steps - 3) // self.stride + 1

    def window_start(self, iteration: int) -> int:
        k = iteration // self.shift_interval
        return ((k % self.positions) if self.roll_back else min(k, self.positions - 1)) * self.stride

    def window_steps(self, iteration: int) -> list[int]:
        w = self.window_start(iteration)
        return list(range(w, min(w + self.window, self.num_steps - 2)))

    @torch.no_grad()
    def rollout(self, model, cond, prompt_index, generator, iteration):
        w, n, g = self.window_start(iteration), self.num_steps, self.group_size
        window = set(self.window_steps(iteration))
        x0 = model.initial_noise(1 if self.same_initial_noise else g, generator)
        _, states, velocities = ode_run(model.velocity, x0, cond, self.sigmas, list(range(w + 2)), keep=True)
        x, v = states[w], velocities[w]
        transitions = []
        for i in range(w, n):
            if i > w:
                v = model.velocity(x, float(self.sigmas[i]), cond)
            if i in window:
                mean, std = self.mean_std(x, v, self.sigmas, i, i + 1, self.eta)
                noise = model.initial_noise(g, generator) if i == w else \
                    torch.randn((g,) + tuple(x.shape[1:]), generator=generator).to(x.device)
                x_next = mean.expand(g, *mean.shape[1:]) + std * noise
                transitions.append(Transition(i, i + 1, x, x_next,
                                              sde.gaussian_log_prob(x_next, mean.expand_as(x_next), std)))
            else:
                x_next = sde.ode_step(x, v, self.sigmas, i, i + 1)
            if i == n - 1 and self.reward_on == "x0_pred":
                x_next = sde.x0_prediction(x, v, float(self.sigmas[i]))
            x = x_next
        return [Group(prompt_index, {"g1": x.expand(g, *x.shape[1:])}, transitions, {"window_start": w})]

    def expected_rollout_nfe(self, groups):
        if not self.same_initial_noise:
            return self.group_size * self.num_steps * len(groups)
        return sum(g.info["window_start"] + 1 + self.group_size * (self.num_steps - g.info["window_start"] - 1)
                   for g in groups)
