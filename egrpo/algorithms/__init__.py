"""Algorithms are small policies over one rollout/loss code path (egrpo/train/trainer.py runs them all).

Each answers: which steps are stochastic (SDE), how rollouts form groups, which transitions are
trained, and what that costs in model calls. Add one by writing a subclass of
`egrpo.algorithms.base.Algorithm`, a line in `facts.ALGORITHMS` and the schema's enum.
"""
from __future__ import annotations

import importlib

from egrpo.algorithms.facts import ALGORITHMS


def build_algorithm(name: str, cfg: dict, plan: list[tuple[int, int]] | None = None, sigmas=None):
    """The algorithm `name` on the schedule `sigmas` ([N+1]; default: the static closed form)."""
    module, cls = ALGORITHMS[name].target.split(":")
    return getattr(importlib.import_module(module), cls)(cfg, plan, sigmas)
