"""Flow-GRPO: every step SDE, G independent trajectories, KL to the reference policy.

The same rollout as DanceGRPO (G * N model calls per prompt); by default every step is trained
(`timestep_fraction` 1.0) and the loss adds beta * KL(policy || reference) per transition, the
reference being the base model (LoRA adapter switched off, or a frozen copy under full
fine-tuning): one extra forward without backward per trained transition and member.
"""
from __future__ import annotations

from egrpo.algorithms.dancegrpo import DanceGRPO


class FlowGRPO(DanceGRPO):
    name = "flowgrpo"
