"""Flow-GRPO: every step SDE, G independent trajectories, KL to the reference policy.

The same rollout as DanceGRPO with flow_grpo's recipe as defaults (scripts/train_sd3.py and
config/grpo.py; docs/baselines.md): the E-GRPO/Flow-GRPO SDE at sampling.eta (noise_level 0.7),
independent initial noises, the reward on the final SDE sample, the first int(0.99*N) steps trained
in order, two optimizer steps per iteration (gradient_accumulation_steps = num_batches_per_epoch/2),
advantages with the population std of the whole batch (global_std) plus 1e-4, no timestep rounding,
beta * KL with flow_grpo's form |mean - mean_ref|^2 / (2 std_t^2) at the human-preference recipe's
beta 0.01 (config/grpo.py pickscore_sd3; its OCR and GenEval recipes use 0.04), and an EMA of the
weights for evaluation and checkpoints (decay 0.9 every 8 steps, egrpo/train/ema.py). The reference is
the base model (LoRA adapter switched off, or a frozen copy under full fine-tuning): one extra
forward without backward per trained transition and member.
"""
from __future__ import annotations

from egrpo.algorithms.dancegrpo import DanceGRPO


class FlowGRPO(DanceGRPO):
    name = "flowgrpo"
    # scripts/train_sd3.py: EMAModuleWrapper(decay=0.9, update_step_interval=8), copied into the weights
    # for evaluation and for saved checkpoints (config/grpo.py pickscore_sd3: train.ema = True)
    ema_recipe = {"decay": 0.9, "every": 8, "warmup": True, "use_for": ["heldout", "policy"]}
