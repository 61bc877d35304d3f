"""The tiny world: procedurally generated scenes with captions, and their rule-based alignment score.

A scene is one coloured shape (circle, square, triangle; small or large) at a position (left,
right, top, bottom, center) on a coloured background. `caption` writes it as a prompt, `parse`
reads a prompt back, `render` draws it, and `alignment(image, scene)` scores how well an image
shows the scene — the ground truth against which learned rewards and policies are measured.
"""
from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from egrpo.rewards.offline import COLORS

PALETTE = ("red", "green", "blue", "yellow", "purple", "cyan", "orange", "white")
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.22, "large": 0.38}                  # half-extent as a fraction of the side
POSITIONS = {"left": (0.3, 0.5), "right": (0.7, 0.5), "top": (0.5, 0.3), "bottom": (0.5, 0.7), "center": (0.5, 0.5)}
TEMPLATES = ("a {size} {color} {shape} on the {position} of a {background} background",
             "a {size} {color} {shape} at the {position}, {background} background",
             "{background} background with a {size} {color} {shape} on the {position}")


@dataclass(frozen=True)
class Scene:
    shape: str
    color: str
    background: str
    position: str
    size: str


def sample_scene(rng: random.Random) -> Scene:
    color = rng.choice(PALETTE)
    background = rng.choice([c for c in PALETTE if c != color])
    return Scene(rng.choice(SHAPES), color, background, rng.choice(list(POSITIONS)), rng.choice(list(SIZES)))


def caption(scene: Scene, rng: random.Random | None = None) -> str:
    template = (rng or random.Random(0)).choice(TEMPLATES)
    return template.format(**scene.__dict__)


def parse(prompt: str) -> Scene | None:
    """The scene a prompt describes, or None if it does not name a shape and two colours."""
    words = re.findall(r"[a-z]+", prompt.lower())
    shape = next((w for w in words if w in SHAPES), None)
    colors = [w for w in words if w in PALETTE]
    if shape is None or len(colors) < 2:
        return None
    if "background" in words:  # the colour right before "background" is the background's
        index = words.index("background")
        background = next((w for w in reversed(words[:index]) if w in PALETTE), colors[-1])
    else:
        background = colors[-1]
    color = next((c for c in colors if c != background), colors[0])
    position = next((w for w in words if w in POSITIONS), "center")
    size = next((w for w in words if w in SIZES), "large")
    return Scene(shape, color, background, position, size)


def object_mask(shape: str, centre: tuple[float, float], extent: float, resolution: int) -> np.ndarray:
    """Boolean [H, W] mask of one shape at `centre` (fractions of the side) with half-extent `extent`
    (a fraction of the side): the drawing both tiny worlds share."""
    mask = Image.new("L", (resolution, resolution), 0)
    draw = ImageDraw.Draw(mask)
    cx, cy = (v * resolution for v in centre)
    r = extent * resolution
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif shape == "square":
        s = r * 0.85
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=255)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=255)
    return np.asarray(mask) > 127


def shape_mask(scene: Scene, resolution: int) -> np.ndarray:
    """Boolean [H, W] mask of the shape's pixels."""
    return object_mask(scene.shape, POSITIONS[scene.position], SIZES[scene.size], resolution)


def render(scene: Scene, resolution: int) -> torch.Tensor:
    """The scene as an image [3, H, W] in [0, 1]."""
    mask = torch.from_numpy(shape_mask(scene, resolution))
    fg = torch.tensor(COLORS[scene.color], device="cpu").view(3, 1, 1)  # on the CPU: rendered images live on the CPU
    bg = torch.tensor(COLORS[scene.background], device="cpu").view(3, 1, 1)  # on the CPU: as fg
    return torch.where(mask, fg, bg).float()


def alignment(image: torch.Tensor, scene: Scene, width: float = 0.3) -> float:
    """How well image [3, H, W] shows the scene, in [0, 1]: the mean of the colour match inside
    the shape's region (object colour) and outside it (background colour); the two regions weigh
    equally, so a canvas of one colour scores at most ~0.5."""
    resolution = image.shape[-1]
    mask = torch.from_numpy(shape_mask(scene, resolution))

    def match(rgb, region):
        target = torch.tensor(COLORS[rgb], device="cpu").view(3, 1, 1)  # on the CPU: images are scored on the CPU
        closeness = torch.exp(-((image.float() - target) ** 2).sum(0) / (2 * width**2))
        return float(closeness[region].mean())

    return 0.5 * match(scene.color, mask) + 0.5 * match(scene.background, ~mask)


def alignment_reward(cfg: dict):
    """Reward `alignment`: the rule-based score of the scene the prompt names (0 if none)."""

    def reward(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        scores = []
        for image, prompt in zip(images, prompts):
            scene = parse(prompt)
            scores.append(alignment(image.clamp(0, 1), scene) if scene else 0.0)
        return torch.tensor(scores, dtype=torch.float32, device="cpu")  # on the CPU: scores, like every reward's

    return reward


def all_scenes() -> list[Scene]:
    """Every tiny-world scene, in a fixed order."""
    return [Scene(shape, color, background, position, size)
            for shape, color, background, position, size in
            itertools.product(SHAPES, PALETTE, PALETTE, POSITIONS, SIZES) if color != background]


def captions(scene: Scene) -> list[str]:
    """The captions of a scene, one per template."""
    return [t.format(**scene.__dict__) for t in TEMPLATES]


score = alignment   # the rule-based score of an image for a scene (pretraining's base-model check)
