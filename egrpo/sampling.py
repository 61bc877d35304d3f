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


def sample_images(model, prompts, num_steps: int, per_prompt: int, seed: int, progress: bool = True,
                  indices: list[int] | None = None, batch_prompts: int = 1):
    """Yield (prompt index, image index, seed, image [3, H, W]) for every prompt (or the prompts at
    `indices`) and image; `batch_prompts` prompts share one ODE run (their images stacked)."""
    sigmas = model.sigmas(num_steps)
    grid = list(range(num_steps + 1))
    order = list(range(len(prompts))) if indices is None else list(indices)
    chunks = [order[i:i + batch_prompts] for i in range(0, len(order), batch_prompts)]
    bar = tqdm(total=len(order), desc="evaluate", unit="prompt", disable=not progress)
    for chunk in chunks:
        if len(chunk) == 1:   # one prompt: its conditioning repeated for its images (the original path)
            cond = model.encode([prompts[chunk[0]].text]).expand(per_prompt)
        else:
            cond = model.encode([prompts[p].text for p in chunk]).repeat_each(per_prompt)
        seeds = [image_seed(seed, p, m) for p in chunk for m in range(per_prompt)]
        x0 = torch.cat([model.initial_noise(1, torch.Generator().manual_seed(s)) for s in seeds])
        with torch.no_grad():
            images = model.decode(ode_run(model.velocity, x0, cond, sigmas, grid))
        for k, s in enumerate(seeds):
            yield chunk[k // per_prompt], k % per_prompt, s, images[k]
        bar.update(len(chunk))
    bar.close()
