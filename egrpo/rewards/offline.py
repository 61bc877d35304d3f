"""Rewards that need no downloaded weights: they run anywhere, offline, in milliseconds."""
from __future__ import annotations

import io
import re

import numpy as np
import torch
from PIL import Image

# Named colours the prompt reward understands (RGB in [0, 1]).
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.9, 0.1, 0.1), "green": (0.1, 0.7, 0.2), "blue": (0.1, 0.2, 0.9),
    "yellow": (0.95, 0.9, 0.1), "orange": (1.0, 0.55, 0.0), "purple": (0.55, 0.15, 0.7),
    "pink": (1.0, 0.6, 0.75), "white": (0.95, 0.95, 0.95), "black": (0.05, 0.05, 0.05),
    "gray": (0.5, 0.5, 0.5), "brown": (0.5, 0.3, 0.1), "cyan": (0.1, 0.85, 0.9),
}
_WORD = re.compile(r"[a-z]+")


def prompt_colors(prompt: str) -> list[str]:
    """Colour names in the prompt, in order, without repeats ('grey' counts as 'gray')."""
    found: list[str] = []
    for word in _WORD.findall(prompt.lower()):
        word = "gray" if word == "grey" else word
        if word in COLORS and word not in found:
            found.append(word)
    return found


def color_coverage(images: torch.Tensor, rgb: tuple[float, float, float], width: float = 0.25) -> torch.Tensor:
    """Mean over pixels of exp(-|p - c|^2 / (2 width^2)): 1 if every pixel has colour c. [B]"""
    target = torch.tensor(rgb, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    dist2 = ((images - target) ** 2).sum(dim=1)
    return torch.exp(-dist2 / (2 * width**2)).flatten(1).mean(dim=1)


def prompt_color(cfg: dict):
    """Score = geometric mean over the colours a prompt names of their pixel coverage (each colour
    must be present: a red-only image scores ~0 for "a red circle on blue"); 0 if it names none."""

    def reward(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        images = images.float().clamp(0, 1)
        scores = torch.zeros(len(prompts), device="cpu")  # on the CPU: rule-based scores of CPU images
        for b, prompt in enumerate(prompts):
            names = prompt_colors(prompt)
            if names:
                coverage = torch.stack([color_coverage(images[b:b + 1], COLORS[c])[0] for c in names])
                scores[b] = torch.exp(torch.log(coverage + 1e-4).mean()) - 1e-4
        return scores

    return reward


def jpeg_size_kb(image: torch.Tensor, quality: int = 95) -> float:
    array = (image.float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return buffer.tell() / 1000.0


def jpeg_compressibility(cfg: dict):
    """Score = -(JPEG size in kB at quality 95): smaller files, higher reward (DDPO)."""

    def reward(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return torch.tensor([-jpeg_size_kb(img) for img in images], dtype=torch.float32, device="cpu")  # on the CPU: rule-based scores of CPU images

    return reward
