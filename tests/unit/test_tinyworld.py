"""The tiny world: scenes, captions that parse back, rendering, and the alignment score."""
import random

import torch

from egrpo.rewards import build_reward
from egrpo.tinyworld import SHAPES, Scene, alignment, caption, parse, render, sample_scene


def test_captions_parse_back_to_their_scene():
    rng = random.Random(0)
    for _ in range(300):
        scene = sample_scene(rng)
        assert parse(caption(scene, rng)) == scene


def test_parse_rejects_prompts_without_a_scene():
    assert parse("a photo of a cat") is None
    assert parse("a red circle") is None  # no background colour
    assert parse("a red circle on a blue background") == Scene("circle", "red", "blue", "center", "large")


def test_alignment_of_renders():
    rng = random.Random(1)
    scene = Scene("triangle", "red", "blue", "left", "large")
    image = render(scene, 64)
    assert image.shape == (3, 64, 64) and alignment(image, scene) > 0.95
    # the right picture beats: a wrong position, a wrong shape, swapped colours, a flat canvas
    wrong = [Scene("triangle", "red", "blue", "right", "large"), Scene("square", "red", "blue", "left", "large"),
             Scene("triangle", "blue", "red", "left", "large")]
    for other in wrong:
        assert alignment(render(other, 64), scene) < alignment(image, scene) - 0.05, other
    flat = torch.full((3, 64, 64), 0.5)
    assert alignment(flat, scene) < 0.5
    # chance level: random scenes' renders against a fixed prompt
    others = [sample_scene(rng) for _ in range(50)]
    chance = sum(alignment(render(o, 64), scene) for o in others) / 50
    assert chance < 0.6


def test_alignment_reward_in_the_registry():
    reward = build_reward("alignment", {})
    scene = Scene("circle", "green", "white", "top", "small")
    images = torch.stack([render(scene, 32), render(Scene("square", "red", "cyan", "bottom", "large"), 32)])
    scores = reward(images, [caption(scene)] * 2)
    assert scores[0] > 0.9 > scores[1]
    assert float(reward(images[:1], ["a photo of a cat"])[0]) == 0.0
    assert set(SHAPES) == {"circle", "square", "triangle"}
