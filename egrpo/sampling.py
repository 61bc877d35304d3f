"""The fixed-noise ODE sampler shared by every measurement of a policy: `egrpo evaluate`, the
held-out curve during training and the tiny world's checks. Deterministic (eta 0, what the family's
pipeline does with the pinned schedule), with one seed per (prompt, image), so the base model and
every policy see the same initial noise and their differences are paired."""
from __future__ import annotations

import torch
from tqdm import tqdm

from egrpo.rollout import ode_run


def image_seed(base: int, prompt_index: int, image_index: int) -> int:
    return base * 1_000_003 + prompt_index * 1009 + image_index


def sample_images(model, prompts, num_steps: int, per_prompt: int, seed: int, progress: bool = True):
    """Yield (prompt index, image index, seed, image [3, H, W]) for every prompt and image."""
    sigmas = model.sigmas(num_steps)
    grid = list(range(num_steps + 1))
    for p, prompt in enumerate(tqdm(prompts, desc="evaluate", unit="prompt", disable=not progress)):
        cond = model.encode([prompt.text])
        seeds = [image_seed(seed, p, m) for m in range(per_prompt)]
        x0 = torch.cat([model.initial_noise(1, torch.Generator().manual_seed(s)) for s in seeds])
        with torch.no_grad():
            images = model.decode(ode_run(model.velocity, x0, cond.expand(per_prompt), sigmas, grid))
        for m, s in enumerate(seeds):
            yield p, m, s, images[m]
