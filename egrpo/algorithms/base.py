"""The interface every algorithm implements."""
from __future__ import annotations

from typing import Callable

import torch

from egrpo import sde
from egrpo.rollout import Group


class Algorithm:
    name = "base"
    uses_plan = False

    def __init__(self, cfg: dict, plan: list[tuple[int, int]] | None = None):
        sampling = cfg["sampling"]
        self.cfg = cfg
        self.num_steps = sampling["num_steps"]
        self.group_size = sampling["group_size"]
        self.eta = sampling["eta"]
        self.sigmas = sde.sigma_schedule(self.num_steps, sampling["shift"])
        self.params = cfg["algorithm_params"].get(self.name, {})
        self.mean_std: Callable = sde.sde_mean_std
        self.kl_beta = self.params.get("kl_beta", 0.0)

    def rollout(self, model, cond, prompt_index: int, generator: torch.Generator,
                iteration: int) -> list[Group]:
        """Sample the groups of one prompt (cond: its [1]-batch conditioning)."""
        raise NotImplementedError

    def expected_rollout_nfe(self, groups: list[Group]) -> int:
        """The closed-form model calls of the rollout that produced `groups` (checked in tests)."""
        raise NotImplementedError

    @staticmethod
    def expected_train_nfe(groups: list[Group]) -> int:
        """One forward(+backward) per stored transition, with the batch of its x_from."""
        return sum(t.x_from.shape[0] for g in groups for t in g.transitions)
