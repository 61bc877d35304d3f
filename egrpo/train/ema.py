"""An exponential moving average (EMA) of the trained weights (`train.ema`).

After optimizer step t (t = 1, 2, ...), when t % every == every - 1 (flow_grpo's
`(global_step + 1) % update_step_interval == 0`, global_step = t):

    d_t = min((1 + t) / (10 + t), decay)     with warmup (flow_grpo's EMAModuleWrapper)
    d_t = decay                              without (DanceGRPO's FSDP_EMA)
    s  <- s + (1 - d_t) * (p - s)            for every trained parameter p and its shadow s

The shadow starts at the initial weights. `use_for` says where it replaces the trained weights:
`heldout` (the held-out curve during training) and `policy` (the saved checkpoint, which `egrpo
evaluate` samples). Under FSDP each shadow is sharded like its parameter (1/N per process). Its
state is part of the resume state.
"""
from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def holding(params: list[torch.Tensor], values: list[torch.Tensor]):
    """Within the block the parameters hold `values` (copied in); their own values come back after."""
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, v in zip(params, values):
            p.copy_(v)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, b in zip(params, saved):
                p.copy_(b)


class EMA:
    def __init__(self, params: list[torch.Tensor], decay: float, every: int = 1, warmup: bool = False,
                 use_for: tuple[str, ...] = ("heldout", "policy")):
        self.params = list(params)
        self.decay, self.every, self.warmup, self.use_for = decay, every, warmup, tuple(use_for)
        self.shadow = [p.detach().clone() for p in self.params]

    def current_decay(self, step: int) -> float:
        return min((1 + step) / (10 + step), self.decay) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, step: int) -> bool:
        """After optimizer step `step` (1-based): fold the weights into the shadow when it is due."""
        if (step + 1) % self.every:
            return False
        weight = 1.0 - self.current_decay(step)
        for s, p in zip(self.shadow, self.params):
            s.add_(p.detach() - s, alpha=weight)
        return True

    @contextlib.contextmanager
    def applied(self, purpose: str):
        """Within the block the parameters hold the shadow (when `purpose` is one of use_for)."""
        if purpose not in self.use_for:
            yield
            return
        with holding(self.params, self.shadow):
            yield

    def state(self) -> dict[str, torch.Tensor]:
        """The shadow tensors, named for the resume state (updated in place on load)."""
        return {f"ema.{i}": s for i, s in enumerate(self.shadow)}


def resolve(setting, algorithm) -> dict | None:
    """train.ema: "recipe" (the algorithm's own: Flow-GRPO keeps one, the others none), null (off),
    or a mapping applied to every algorithm."""
    if setting == "recipe":
        return algorithm.ema_recipe
    return setting or None
