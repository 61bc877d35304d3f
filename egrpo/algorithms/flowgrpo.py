"""Flow-GRPO: every step SDE, G independent trajectories, KL to the reference policy.

The same rollout as DanceGRPO with flow_grpo's recipe as defaults (scripts/train_sd3.py and
config/grpo.py; docs/baselines.md): the E-GRPO/Flow-GRPO SDE at sampling.eta (noise_level 0.7),
independent initial noises, the reward on the final SDE sample, the first int(0.99*N) steps trained
in order, two optimizer steps per iteration (gradient_accumulation_steps = num_batches_per_epoch/2),
advantages with the population std of the whole batch (global_std) plus 1e-4, no timestep rounding,
and beta * KL with flow_grpo's form |mean - mean_ref|^2 / (2 std_t^2) (beta 0.04). The reference is
the base model (LoRA adapter switched off, or a frozen copy under full fine-tuning): one extra
forward without backward per trained transition and member.
"""
from __future__ import annotations

from egrpo.algorithms.dancegrpo import DanceGRPO


class FlowGRPO(DanceGRPO):
    name = "flowgrpo"
