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
    """One stored stochastic transition x_i -> x_j for the members of a group that train it.

    members: indices into the group (None: all G, in order). x_from is [1, L, C] when those members
    branched from one shared state (E-GRPO: one velocity gives all their log-probs) or [M, L, C]
    for separate trajectories (DanceGRPO); x_to and logp_old have one row per member.
    """
    i: int
    j: int
    x_from: torch.Tensor   # [1 or M, L, C]
    x_to: torch.Tensor     # [M, L, C]
    logp_old: torch.Tensor  # [M], stored at rollout time: the old policy of the PPO ratio
    members: list[int] | None = None

    def member_ids(self) -> list[int]:
        return list(range(self.x_to.shape[0])) if self.members is None else list(self.members)

    def select(self, rows: list[int]) -> "Transition":
        """The same transition restricted to rows (positions in member_ids())."""
        ids = self.member_ids()
        x_from = self.x_from if self.x_from.shape[0] == 1 else self.x_from[rows]
        return Transition(self.i, self.j, x_from, self.x_to[rows], self.logp_old[rows], [ids[r] for r in rows])


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


def ode_grid(start: int, num_steps: int, stride: int, official: bool = False) -> list[int]:
    """Indices of an ODE run from `start` to N (= sigma 0) with stride g.

    uniform (official=False): start, start+g, ..., N.
    official (VisualGRPO's granular schedule): one unit step to start+1, then stride g from there
    (start+1, start+1+g, ...); the last point of that progression is replaced by N, because the
    official sampler decodes the x0-prediction of the last evaluated point (= an ODE step to 0).
    Both cost ceil((N - start)/g) model calls; for g = 1 they agree.
    """
    if start >= num_steps:
        return [num_steps]
    if official:
        progression = list(range(start + 1, num_steps + 1, stride))
        return [start] + progression[:-1] + [num_steps]
    return list(range(start, num_steps, stride)) + [num_steps]


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
        # float64, as the schedule: a state's timestep is the same whether it is fed alone or in lanes
        lane_sigmas = [(xs[lane].shape[0], float(sigmas[lanes[lane][1][t]])) for lane in active]
        sigma = torch.cat([torch.full((n,), s, dtype=torch.float64, device="cpu") for n, s in lane_sigmas])  # on the CPU: FlowModel moves timesteps
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
           strides: tuple[int, ...] = (1,), official_grid: bool = False):
    """One group: the SDE transition s -> s+k from the shared x_s, then ODE to the end per stride.

    Returns (x_{s+k} [G], logp_old [G], {stride: final latents [G]}); the ODE continuation
    starts at index s + k.
    """
    n = len(sigmas) - 1
    x_next, logp = sde_sample(x_s, v_s, sigmas, s, k, noise, eta, mean_std)
    finals = ode_lanes(velocity, [(x_next, ode_grid(s + k, n, g, official_grid)) for g in strides], cond_group, sigmas)
    return x_next, logp, dict(zip(strides, finals))


@torch.no_grad()
def sde_trajectory(velocity: Callable, x0: torch.Tensor, cond, sigmas: torch.Tensor, eta: float,
                   generator: torch.Generator, sde_steps: set[int], group_size: int,
                   mean_std: Callable = sde.sde_mean_std):
    """G trajectories from x0 ([G, L, C], or [1, L, C] shared by the group) with SDE at `sde_steps`.

    While the members still share one state (a shared x0 before the first SDE step) the velocity
    is computed once. Returns (states [N+1] of [1 or G, L, C], logps {step: [G]}, x0_hat [G]: the
    x0-prediction x_{N-1} - sigma_{N-1} v_{N-1} of the last step).
    """
    n = len(sigmas) - 1
    x, states, logps = x0, [x0], {}
    v = x
    for i in range(n):
        v = velocity(x, float(sigmas[i]), cond)
        if i in sde_steps:
            mean, std = mean_std(x, v, sigmas, i, i + 1, eta)
            noise = torch.randn((group_size,) + tuple(x.shape[1:]), generator=generator).to(x.device)
            x_next = mean + std * noise
            logps[i] = sde.gaussian_log_prob(x_next, mean.expand_as(x_next), std)
        else:
            x_next = sde.ode_step(x, v, sigmas, i, i + 1)
        if i == n - 1:
            x0_hat = sde.x0_prediction(x, v, float(sigmas[i]))
            x0_hat = x0_hat.expand(group_size, *x0_hat.shape[1:])
        x = x_next
        states.append(x)
    return states, logps, x0_hat


@torch.no_grad()
def dpm_run(velocity: Callable, x: torch.Tensor, cond, sigmas: torch.Tensor, order: int = 2) -> torch.Tensor:
    """The deterministic DPM-Solver++ run (order 1 or 2M) from x [G, L, C] at sigma_0 to sigma_N
    (DiffusionNFT's `dpm1`/`dpm2` solver, egrpo.sde.dpm_update): N model calls per sample."""
    x0_preds = []
    for i in range(len(sigmas) - 1):
        v = velocity(x, float(sigmas[i]), cond)
        x0_preds = (x0_preds + [sde.x0_prediction(x, v, float(sigmas[i]))])[-2:]
        x = sde.dpm_update(x, x0_preds, sigmas, i, order)
    return x


@dataclass
class Tree:
    """A rollout tree (BranchGRPO): nodes in creation order, node 0 the root; parents[c] = c's parent
    (-1 for the root); logps[c] = log p of the edge into c at rollout; leaves in the order of the finals."""
    parents: list[int]
    logps: torch.Tensor
    leaves: list[int]


@torch.no_grad()
def tree_rollout(velocity: Callable, x: torch.Tensor, cond, sigmas: torch.Tensor, eta: float,
                 generator: torch.Generator, splits: set[int], split_noise: float,
                 mean_std: Callable = sde.dance_mean_std):
    """A tree from one root x [1, L, C]: at every step all current nodes take one SDE step in one
    model call (a shared prefix is computed once); at a split step each node gets two children whose
    noise is scaled by `split_noise` (their log-probs under the unscaled std, as BranchGRPO's
    `flux_step_with_split`). Returns (tree, transitions [one per step: parents' states -> children,
    members = child node ids], x0_hat of the leaves [2^|splits|, L, C]: x_{N-1} - sigma_{N-1} v)."""
    n = len(sigmas) - 1
    parents, logps, level = [-1], [torch.zeros(1, device=x.device)], [0]
    transitions, x0_hat = [], None
    for i in range(n):
        v = velocity(x, float(sigmas[i]), cond)
        mean, std = mean_std(x, v, sigmas, i, i + 1, eta)
        k, scale = (2, split_noise) if i in splits else (1, 1.0)
        mean, x_from = mean.repeat_interleave(k, 0), x.repeat_interleave(k, 0)
        noise = torch.randn(mean.shape, generator=generator, device="cpu").to(x.device)  # on the CPU: drawn on the CPU for reproducibility
        x_next = mean + std * scale * noise
        logp = sde.gaussian_log_prob(x_next, mean, std)
        children = list(range(len(parents), len(parents) + len(level) * k))
        parents += [p for p in level for _ in range(k)]
        logps.append(logp)
        transitions.append(Transition(i, i + 1, x_from, x_next, logp, children))
        if i == n - 1:
            x0_hat = sde.x0_prediction(x, v, float(sigmas[i])).repeat_interleave(k, 0)
        x, level = x_next, children
    return Tree(parents, torch.cat(logps).cpu(), level), transitions, x0_hat
