"""Rollouts: the ODE anchor, branches from a shared state, full SDE trajectories.

Every function takes a `velocity(x, sigma, cond)` callable (FlowModel.velocity counts NFE) and the
sigma schedule; the SDE transition is a `mean_std(x, v, sigmas, i, j, eta)` function from
egrpo.sde. Shapes: packed latents [B, L, C]; a group has G members.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from egrpo import sde


@dataclass
class Transition:
    """One stored stochastic transition x_i -> x_j for the G members of a group.

    x_from is [1, L, C] when every member branched from one shared state (E-GRPO: one velocity
    gives all G log-probs) or [G, L, C] for separate trajectories (DanceGRPO).
    """
    i: int
    j: int
    x_from: torch.Tensor   # [1 or G, L, C]
    x_to: torch.Tensor     # [G, L, C]
    logp_old: torch.Tensor  # [G], stored at rollout time: the old policy of the PPO ratio


@dataclass
class Group:
    """G rollouts whose rewards are normalized together, and the transitions they train.

    finals maps a label (the ODE-suffix stride for E-GRPO) to final latents [G, L, C]; each label
    is its own normalization group, and the advantages of all labels are summed.
    """
    prompt_index: int
    finals: dict[str, torch.Tensor]
    transitions: list[Transition]
    info: dict = field(default_factory=dict)


def ode_grid(start: int, num_steps: int, stride: int) -> list[int]:
    """Indices start, start+g, … , N of an ODE run with stride g (always ending at sigma_N = 0)."""
    grid = list(range(start, num_steps, stride))
    return grid + [num_steps] if grid else [num_steps]


def ode_suffix_calls(start: int, num_steps: int, stride: int) -> int:
    """Model calls of an ODE run from index `start` to N with stride g: ceil((N - start)/g)."""
    return math.ceil((num_steps - start) / stride)


@torch.no_grad()
def ode_run(velocity: Callable, x: torch.Tensor, cond, sigmas: torch.Tensor, grid: list[int],
            keep: bool = False):
    """Euler ODE along `grid`; returns the final latents (and all states/velocities if keep)."""
    states, velocities = [x], []
    for a, b in zip(grid, grid[1:]):
        v = velocity(x, float(sigmas[a]), cond)
        x = sde.ode_step(x, v, sigmas, a, b)
        if keep:
            states.append(x)
            velocities.append(v)
    return (x, states, velocities) if keep else x


def sde_sample(x_s: torch.Tensor, v_s: torch.Tensor, sigmas: torch.Tensor, s: int, k: int, noise: torch.Tensor,
               eta: float, mean_std: Callable = sde.sde_mean_std):
    """G samples of the SDE transition s -> s+k from one shared state x_s [1] with velocity v_s.

    noise: [G, L, C], one independent draw per member. Returns (x_{s+k} [G], logp_old [G]).
    """
    mean, std = mean_std(x_s, v_s, sigmas, s, s + k, eta)
    x_next = mean + std * noise
    return x_next, sde.gaussian_log_prob(x_next, mean.expand_as(x_next), std)


@torch.no_grad()
def ode_lanes(velocity: Callable, lanes: list[tuple[torch.Tensor, list[int]]], cond, sigmas: torch.Tensor,
              max_batch: int | None = None) -> list[torch.Tensor]:
    """Run several ODE "lanes" together: lane l is latents [G_l, L, C] following its own index grid.

    At tick t every lane that still has a step contributes its samples to one model call, each
    sample at its own sigma (FLUX takes one timestep per sample), so the continuations of all plan
    entries and strides of a prompt share model calls. The count of per-sample evaluations (NFE)
    is unchanged; calls are split into chunks of at most `max_batch` samples.
    """
    xs = [x for x, _ in lanes]
    ticks = max((len(grid) - 1 for _, grid in lanes), default=0)
    for t in range(ticks):
        active = [lane for lane, (_, grid) in enumerate(lanes) if t < len(grid) - 1]
        batch = torch.cat([xs[lane] for lane in active])
        sigma = torch.cat([torch.full((xs[lane].shape[0],), float(sigmas[lanes[lane][1][t]])) for lane in active])
        step = max_batch or batch.shape[0]
        v = torch.cat([velocity(batch[i:i + step], sigma[i:i + step], cond) for i in range(0, batch.shape[0], step)])
        offset = 0
        for lane in active:
            n, grid = xs[lane].shape[0], lanes[lane][1]
            xs[lane] = sde.ode_step(xs[lane], v[offset:offset + n], sigmas, grid[t], grid[t + 1])
            offset += n
    return xs


@torch.no_grad()
def branch(velocity: Callable, x_s: torch.Tensor, v_s: torch.Tensor, cond_group, sigmas: torch.Tensor,
           s: int, k: int, noise: torch.Tensor, eta: float, mean_std: Callable = sde.sde_mean_std,
           strides: tuple[int, ...] = (1,)):
    """One group: the SDE transition s -> s+k from the shared x_s, then ODE to the end per stride.

    Returns (x_{s+k} [G], logp_old [G], {stride: final latents [G]}); the ODE continuation
    starts at index s + k.
    """
    n = len(sigmas) - 1
    x_next, logp = sde_sample(x_s, v_s, sigmas, s, k, noise, eta, mean_std)
    finals = ode_lanes(velocity, [(x_next, ode_grid(s + k, n, g)) for g in strides], cond_group, sigmas)
    return x_next, logp, dict(zip(strides, finals))


@torch.no_grad()
def sde_trajectory(velocity: Callable, x0: torch.Tensor, cond, sigmas: torch.Tensor, eta: float,
                   generator: torch.Generator, sde_steps: set[int], mean_std: Callable = sde.sde_mean_std):
    """Trajectories from x0 [G, L, C] with SDE at the steps in `sde_steps`, ODE elsewhere.

    Returns (states [N+1] of [G, L, C], logps {step: [G]} for the SDE steps).
    """
    x, states, logps = x0, [x0], {}
    for i in range(len(sigmas) - 1):
        v = velocity(x, float(sigmas[i]), cond)
        if i in sde_steps:
            mean, std = mean_std(x, v, sigmas, i, i + 1, eta)
            noise = torch.randn(x.shape, generator=generator).to(x.device)
            x = mean + std * noise
            logps[i] = sde.gaussian_log_prob(x, mean, std)
        else:
            x = sde.ode_step(x, v, sigmas, i, i + 1)
        states.append(x)
    return states, logps
