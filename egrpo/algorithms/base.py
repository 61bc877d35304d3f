"""The interface every algorithm implements, and the recipe settings every algorithm has.

Each algorithm reads its block `algorithm_params.<name>`, whose schema defaults are that
algorithm's published recipe (docs/baselines.md lists every setting, the official value and the
source). The settings that shape training rather than the rollout live here:

    optimizer_step      which (transition, member) pairs one optimizer step averages over
    advantage           how group rewards become advantages (std, eps, global std, combination)
    kl_beta, kl_divisor the KL to the reference policy
    timestep_rounding   the transformer sees int(1000*sigma)/1000 (the SDE keeps the exact sigma)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from egrpo import sde
from egrpo.algorithms.facts import ALGORITHMS
from egrpo.rollout import Group


@dataclass(frozen=True)
class AdvantageRule:
    """A = (r - mean_G r) / (std + eps) per group; see egrpo.sde.group_advantages."""
    unbiased: bool = True            # advantage_std: sample (torch.std) / population (np.std)
    eps: float = 1e-8                # advantage_eps
    global_std: bool = False         # std of the whole iteration's rewards instead of the group's
    combination: str = "sum_then_normalize"  # or normalize_then_sum
    per_group: Callable | None = None  # (group, its combined rewards) -> its advantages, replacing the rule above


class Algorithm:
    name = "base"
    update = "ppo"                   # its update phase: ppo (egrpo/train/update.py) or nft (egrpo/train/nft.py)
    ema_recipe: dict | None = None   # the EMA of the weights its official trainer keeps (train.ema: recipe)

    def __init__(self, cfg: dict, plan: list[tuple[int, int]] | None = None, sigmas: torch.Tensor | None = None):
        sampling = cfg["sampling"]
        self.cfg = cfg
        self.params = p = cfg["algorithm_params"][self.name]
        self.num_steps = p.get("num_steps") or sampling["num_steps"]   # its own rollout length, where it has one
        self.group_size = sampling["group_size"]
        # the model's schedule (FlowModel.sigmas); E-GRPO's static closed form when none is given
        self.sigmas = sde.sigma_schedule(self.num_steps, sampling["shift"]) if sigmas is None else sigmas
        if len(self.sigmas) != self.num_steps + 1:
            raise ValueError(f"sigmas: {len(self.sigmas)} values for {self.num_steps} steps")
        self.eta = sampling["eta"] if p.get("eta") is None else p["eta"]   # SDE settings: the GRPO family's
        self.mean_std: Callable = sde.dance_mean_std if p.get("sde") == "dance" else sde.sde_mean_std
        self.kl_beta = p["kl_beta"]
        self.kl_divisor = p.get("kl_divisor", "sde_std")
        self.timestep_rounding = p["timestep_rounding"]
        self.advantage = AdvantageRule(unbiased=p["advantage_std"] == "sample", eps=p["advantage_eps"],
                                       global_std=p["global_std"], combination=p["reward_combination"])
        self.learning_rate = cfg["train"]["learning_rate"] if p["learning_rate"] is None else p["learning_rate"]
        self.optimizer_step = p.get("optimizer_step", "per_iteration")
        self.samples_per_step = p.get("samples_per_step", 1)
        self.steps_per_iteration = p.get("steps_per_iteration", 1)
        self.prompts_per_process = p.get("prompts_per_process", 1)
        self.clip_range = p.get("clip_range")       # null: train.clip_range

    @property
    def uses_plan(self) -> bool:
        """Whether its train job reads the merge plan (egrpo/algorithms/facts.py)."""
        return ALGORITHMS[self.name].uses_plan

    def recipe(self) -> dict:
        """The resolved settings of this run (logged to MLflow and metrics.json)."""
        return {**self.params, "eta": self.eta, "learning_rate": self.learning_rate}

    def rollout(self, model, cond, prompt_index: int, generator: torch.Generator,
                iteration: int) -> list[Group]:
        """Sample the groups of one prompt (cond: its [1]-batch conditioning)."""
        raise NotImplementedError

    def expected_rollout_nfe(self, groups: list[Group]) -> int:
        """The closed-form model calls of the rollout that produced `groups` (checked in tests)."""
        raise NotImplementedError

    # ---- which pairs one optimizer step covers ---------------------------------------------------
    def member_chunks(self) -> list[list[int]]:
        """The members of every group that one optimizer step covers, in order.

        every_n_samples: consecutive chunks of samples_per_step members (DanceGRPO steps after every
        gradient_accumulation_steps samples); n_per_iteration: steps_per_iteration equal chunks
        (flow_grpo: twice per epoch); per_entry / per_iteration: all members at once.
        """
        g = self.group_size
        if self.optimizer_step == "every_n_samples":
            size = self.samples_per_step
        elif self.optimizer_step == "n_per_iteration":
            size = math.ceil(g / min(self.steps_per_iteration, g))
        else:
            size = g
        return [list(range(start, min(start + size, g))) for start in range(0, g, size)]

    def sample_chunks(self) -> list[dict[int, set[int]]]:
        """Per optimizer step, the members it covers of the groups in each prompt slot (slot = group
        index mod prompts_per_process). An official process holds prompts_per_process prompts
        (train_batch_size) whose samples it lists prompt after prompt; every_n_samples steps after every
        samples_per_step of that list (DanceGRPO's Qwen-Image script: 2 prompts x 12 samples, a step
        every 12: two steps, each over one prompt of every process). With one prompt per process
        this is member_chunks for every group."""
        p = self.prompts_per_process
        if self.optimizer_step != "every_n_samples" or p == 1:
            return [{0: set(chunk)} for chunk in self.member_chunks()]
        listed = [(slot, m) for slot in range(p) for m in range(self.group_size)]
        out = []
        for start in range(0, len(listed), self.samples_per_step):
            chunk: dict[int, set[int]] = {}
            for slot, m in listed[start:start + self.samples_per_step]:
                chunk.setdefault(slot, set()).add(m)
            out.append(chunk)
        return out

    def update_units(self, groups: list[Group], advantages=None) -> list[list[tuple[int, object]]]:
        """The iteration's training work as optimizer steps: each unit is a list of
        (group index, transition restricted to the unit's members). One optimizer step per unit
        minimizes the mean PPO term over the unit's (member, transition) pairs, as the official
        trainers do (their losses are divided by the accumulation count). `advantages` (per group) is
        for algorithms that prune by them (BranchGRPO)."""
        pairs = [(gi, tr) for gi, g in enumerate(groups) for tr in g.transitions]
        if self.optimizer_step == "per_entry":  # one step per plan entry (s, s+k) or step index (i, i+1)
            keys = sorted({(tr.i, tr.j) for _, tr in pairs})
            return [[(gi, tr) for gi, tr in pairs if (tr.i, tr.j) == key] for key in keys]
        units = []
        for chunk in self.sample_chunks():
            unit = []
            for gi, tr in pairs:
                members = chunk.get(gi % self.prompts_per_process, set())
                rows = [r for r, m in enumerate(tr.member_ids()) if m in members]
                if rows:
                    unit.append((gi, tr if len(rows) == len(tr.member_ids()) else tr.select(rows)))
            if unit:
                units.append(unit)
        return units

    def loss_denominator(self, unit) -> float:
        """What a unit's summed terms are divided by: its pairs (the unit's mean)."""
        return float(sum(tr.x_to.shape[0] for _, tr in unit))

    def expected_train_nfe(self, groups: list[Group]) -> int:
        """One forward(+backward) per stored transition and unit, with the batch of its x_from."""
        return sum(tr.x_from.shape[0] for unit in self.update_units(groups) for _, tr in unit)

    def expected_reference_nfe(self, groups: list[Group]) -> int:
        """Forwards without backward besides the rollout: the KL reference's, one per trained forward."""
        return self.expected_train_nfe(groups) if self.kl_beta > 0 else 0
