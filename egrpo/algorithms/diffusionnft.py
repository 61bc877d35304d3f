"""DiffusionNFT: negative-aware fine-tuning on the forward process (NVlabs/DiffusionNFT, ICLR 2026).

No SDE and no likelihoods: rollouts are deterministic ODE samples of the old (sampling) policy, and
training regresses the clean samples through an implicit positive and negative policy weighted by
each sample's optimality probability (egrpo.sde.nft_loss; the update is egrpo/train/nft.py).

Recipe (scripts/train_nft_sd3.py with config/nft.py `_get_config` and its sd3_pickscore / sd3_hpsv2
/ sd3_geneval functions; docs/baselines.md):
  - rollouts: G independent noises per prompt, DPM-Solver++(2M) (`solver: dpm2`) in 10 steps
    (sample.num_steps), deterministic; no CFG in training (guidance_scale 1.0)       (num_steps, solver)
  - advantages per prompt with the std of all the iteration's rewards + 1e-4 (PerPromptStatTracker
    with global_std), clipped at train.adv_clip_max 5                               (advantage_*, global_std)
  - every sample trains int(0.99 * N) of the rollout's N sigmas, each sample its own random
    permutation, a fresh noise per (sample, sigma)                                  (timestep_fraction)
  - one optimizer step per iteration (gradient_step_per_epoch 1)                    (optimizer_step)
  - beta 1.0 (OCR and multi-reward recipes 0.1); KL to the base 1e-4 (train.beta)  (beta, kl_beta)
  - old policy <- d old + (1 - d) theta after each iteration, d by decay_type 1     (decay_type)
  - EMA of the weights (decay 0.9 every step, with warmup) for evaluation and checkpoints.
Cost per prompt: G*N rollout calls; per trained (sample, sigma) one forward+backward of the policy,
one forward of the old policy and, with kl_beta > 0, one of the base (counted as reference forwards).
"""
from __future__ import annotations

import torch

from egrpo.algorithms.base import Algorithm
from egrpo.rollout import Group, dpm_run


class DiffusionNFT(Algorithm):
    name = "diffusionnft"
    update = "nft"
    # train_nft_sd3.py: EMAModuleWrapper(decay=0.9, update_step_interval=1), copied into the weights for
    # evaluation (eval_fn) and saved checkpoints (save_ckpt); config/base.py train.ema = True
    ema_recipe = {"decay": 0.9, "every": 1, "warmup": True, "use_for": ["heldout", "policy"]}

    def __init__(self, cfg, plan=None, sigmas=None):
        super().__init__(cfg, plan, sigmas)
        p = self.params
        self.order = int(p["solver"][-1])
        self.beta = p["beta"]
        self.decay_type = p["decay_type"]
        self.num_trained = max(1, int(p["timestep_fraction"] * self.num_steps))

    def recipe(self) -> dict:
        """Its resolved settings (no SDE: no eta)."""
        return {**{k: v for k, v in super().recipe().items() if k != "eta"}, "num_steps": self.num_steps}

    def rollout(self, model, cond, prompt_index, generator, iteration):
        g = self.group_size
        x = dpm_run(model.velocity, model.initial_noise(g, generator), cond, self.sigmas, self.order)
        trained = [sorted(torch.randperm(self.num_steps, generator=generator, device="cpu")[:self.num_trained].tolist())  # on the CPU: step choice
                   for _ in range(g)]
        noise_seed = int(torch.randint(2**62, (1,), generator=generator, device="cpu"))  # on the CPU: seeds the training noise
        return [Group(prompt_index, {"g1": x}, [], {"trained_steps": trained, "noise_seed": noise_seed})]

    def expected_rollout_nfe(self, groups):
        return self.group_size * self.num_steps * len(groups)

    def expected_train_nfe(self, groups):
        return sum(len(steps) for group in groups for steps in group.info["trained_steps"])

    def expected_reference_nfe(self, groups):
        """One forward of the old policy per trained (sample, sigma), and one of the base with the KL."""
        return self.expected_train_nfe(groups) * (2 if self.kl_beta > 0 else 1)
