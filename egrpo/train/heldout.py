"""The held-out curve of a train run (`train.heldout`): the policy's rewards on evaluation prompts
along training, at the cost spent so far, so that runs compare at equal forward-equivalents.

A point is the mean of each `train.heldout.metrics` reward over ODE samples of the first
`num_prompts` evaluation prompts, `images_per_prompt` each, from fixed noise (`seed`: the same for
every algorithm and seed), sampled as `egrpo evaluate` samples (exact timesteps, no rounding). The
base model is the point at zero cost. Sampling is a measurement: its model calls are not counted as
training cost. Unsharded: the main process alone measures. Sharded: every process samples (each
forward gathers the weights from all of them) and the main one scores; the others get {}.
"""
from __future__ import annotations

import torch

from egrpo.rewards import build_reward
from egrpo.runtime.io import load_prompts
from egrpo.sampling import sample_images


class HeldoutCurve:
    def __init__(self, cfg: dict, main: bool, sharded: bool):
        self.cfg, self.main, self.sharded = cfg, main, sharded
        self.h = h = cfg["train"]["heldout"]
        self.every, self.every_fe = h["every"], h["every_forward_equivalents"]
        self._rewards: dict | None = None
        self.last_nfe = 0   # transformer evaluations of the last measurement
        self._prompts = None

    @property
    def enabled(self) -> bool:
        return self.every is not None or self.every_fe is not None

    @property
    def measured_here(self) -> bool:
        """Whether this process takes part in measuring (main, or every process when sharded)."""
        return self.enabled and (self.main or self.sharded)

    def due(self, done_iterations: int, fe_before: float, fe_after: float, last: bool) -> bool:
        """After an iteration: every `every` iterations, whenever the cost crossed a multiple of
        `every_forward_equivalents`, and at the end of the run."""
        if not self.measured_here:
            return False
        by_iteration = self.every is not None and done_iterations % self.every == 0
        by_cost = self.every_fe is not None and fe_after // self.every_fe > fe_before // self.every_fe
        return by_iteration or by_cost or last

    @torch.no_grad()
    def measure(self, model) -> dict:
        """{heldout_<metric>: mean reward} of the model's current policy ({} on non-main processes)."""
        if self._prompts is None:
            self._rewards = {r: build_reward(r, self.cfg) for r in self.h["metrics"]} if self.main else {}
            self._prompts = load_prompts(self.cfg["prompts"]["eval"], "prompts.eval")[:self.h["num_prompts"]]
        rounding, model.round_timesteps = model.round_timesteps, False  # as `egrpo evaluate` samples
        nfe = model.nfe
        try:
            images, texts = [], []
            for p, _, _, image in sample_images(model, self._prompts, self.cfg["sampling"]["num_steps"],
                                                self.h["images_per_prompt"], self.h["seed"], progress=False):
                images.append(image)
                texts.append(self._prompts[p].text)
        finally:   # a measurement, not training cost: its model calls are counted apart (last_nfe)
            self.last_nfe = model.nfe - nfe
            model.nfe, model.round_timesteps = nfe, rounding
        if not self.main:
            return {}
        batch = torch.stack(images)
        return {f"heldout_{r}": float(fn(batch, texts).float().mean()) for r, fn in self._rewards.items()}
