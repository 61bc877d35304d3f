"""Which prompts an iteration rolls out, and the generator of all its randomness: pure functions of
(seed, iteration), so a run resumed from its resume state draws exactly what an unbroken run draws."""
from __future__ import annotations

import torch

from egrpo.errors import UserError


def iteration_seed(seed: int, iteration: int) -> int:
    return seed * 1_000_003 + iteration


def iteration_generator(seed: int, iteration: int) -> torch.Generator:
    """All randomness of one iteration: prompts, noises, subsets (a pure function of seed, t)."""
    return torch.Generator(device="cpu").manual_seed(iteration_seed(seed, iteration))


class PromptSampler:
    """Which training prompts iteration t rolls out (over all processes), a pure function of
    (seed, t), so a resumed run draws what an unbroken one draws.

    epoch (the official trainers' shuffled DistributedSampler): epoch e is a permutation of the
    prompts seeded by (seed, e); its first floor(n / P) * P entries make floor(n / P) iterations of
    P prompts (the rest waits for a later epoch, as drop_last does): each prompt at most once per
    epoch, never twice in one iteration. replacement: P independent uniform draws per iteration from
    the iteration's generator (egrpo's earlier way: a prompt can form two groups of one step)."""

    def __init__(self, num_prompts: int, per_iteration: int, seed: int, mode: str):
        self.n, self.per_iteration, self.seed, self.mode = num_prompts, per_iteration, seed, mode
        if mode == "epoch" and per_iteration > num_prompts:
            raise UserError(f"train.prompts_per_iteration: {per_iteration} prompts per iteration but prompts.train has "
                            f"{num_prompts}; epoch sampling draws a prompt at most once per iteration (set "
                            "train.prompt_sampling: replacement, or give more prompts)")
        self.per_epoch = max(1, num_prompts // per_iteration)

    def epoch(self, iteration: int) -> int:
        return iteration // self.per_epoch if self.mode == "epoch" else 0

    def prompts(self, iteration: int, generator: torch.Generator) -> list[int]:
        if self.mode == "replacement":   # prompt indices live on the CPU, as the generator does
            return torch.randint(self.n, (self.per_iteration,), generator=generator, device="cpu").tolist()
        epoch, slot = divmod(iteration, self.per_epoch)
        order = torch.randperm(self.n, generator=iteration_generator(self.seed, epoch), device="cpu")
        return order[slot * self.per_iteration:(slot + 1) * self.per_iteration].tolist()
