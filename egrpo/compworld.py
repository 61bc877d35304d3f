"""The compositional tiny world: GenEval's tasks in miniature, with an exact rule-based judge.

A scene is 1-3 flat shapes (circle, square, triangle) of palette colours on a coloured background,
placed on fixed slots (one object: the centre; two: left and right, or top and bottom for the
vertical relations; three: a row). Prompts come from one template per task:

    single_object   "a circle on a blue background"                       asks: the shape is there
    colors          "a red circle on a blue background"                   asks: the shape, its colour
    two_objects     "a circle and a square on a blue background"           asks: both shapes
    counting        "three triangles on a blue background"                 asks: the number of that shape
    position        "a circle left of a square on a blue background"       asks: both shapes, the relation
    color_attr      "a red circle and a green square on a blue background" asks: each shape in its colour

The judge reads an image with no model: every pixel takes its nearest palette colour (or none when
nothing is close), pixels not of the background's colour form 4-connected components per colour,
components smaller than `min_area` are noise, and each component's shape is read from two shares:
of its pixels in the upper half of its bounding box (an apex-up triangle keeps about a quarter there,
a disc or a square half: under 0.4 it is a triangle) and of the box it fills (a square 1.0, a disc
pi/4 = 0.79: 0.86 and above is a square). Both survive soft edges (a VAE's decoding of small shapes:
tests/unit/test_compworld.py), where the fill alone read blurred triangles as discs. A prompt's score is the share of its asked attributes that hold (the reward `judge`); it is
correct when all hold (GenEval's accuracy, per task). Held-out compositions: `split` keeps some
attribute pairs and counts out of the training prompts (`HELDOUT`), so that evaluation separates
learning the composition from memorising it.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from egrpo.rewards.offline import COLORS
from egrpo.tinyworld import object_mask

PALETTE = ("red", "green", "blue", "yellow", "purple", "cyan", "orange", "white")
SHAPES = ("circle", "square", "triangle")
TASKS = ("single_object", "colors", "two_objects", "counting", "position", "color_attr")
NUMBERS = {"one": 1, "two": 2, "three": 3}
RELATIONS = {"left of": (-1, 0), "right of": (1, 0), "above": (0, -1), "below": (0, 1)}
# half-extent of an object (fraction of the side) by how many objects share the image
EXTENT = {1: 0.26, 2: 0.17, 3: 0.12}
# the judge's shape thresholds (classify): a triangle keeps less than this share of its pixels in the
# upper half of its box; a square fills at least this share of its box
TRIANGLE_TOP, SQUARE_FILL = 0.4, 0.86
# compositions kept out of the training prompts (evaluation only): a colour-shape pair, a shape pair,
# a count of a shape, a relation of a pair
HELDOUT = {"color_shape": {("purple", "triangle"), ("cyan", "circle")},
           "shape_pair": {("triangle", "circle")},
           "count": {("square", 3)},
           "relation": {("square", "above", "triangle")}}


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str


@dataclass(frozen=True)
class CompScene:
    task: str
    objects: tuple[Obj, ...]
    background: str
    relation: str | None = None          # position task: objects[0] <relation> objects[1]
    count: int | None = None             # counting task: objects are `count` copies of one shape

    def slots(self) -> list[tuple[float, float]]:
        """Centres of the objects (fractions of the side), in order."""
        n = len(self.objects)
        if n == 1:
            return [(0.5, 0.5)]
        if n == 2:
            dx, dy = RELATIONS.get(self.relation or "left of")
            if dy:   # vertical relation: the first object above (dy = -1) or below the second
                return [(0.5, 0.5 + 0.22 * dy), (0.5, 0.5 - 0.22 * dy)]
            return [(0.5 + 0.22 * dx, 0.5), (0.5 - 0.22 * dx, 0.5)]
        return [(0.2, 0.5), (0.5, 0.5), (0.8, 0.5)]


@dataclass
class Asked:
    """What a prompt asks, as named checks, each True or False."""
    checks: dict[str, bool] = field(default_factory=dict)

    @property
    def score(self) -> float:
        return sum(self.checks.values()) / len(self.checks) if self.checks else 0.0

    @property
    def correct(self) -> bool:
        return bool(self.checks) and all(self.checks.values())


# ---- prompts ---------------------------------------------------------------------------------------

def _a(words: str) -> str:
    """The indefinite article and the words: "an orange circle", "a red circle"."""
    return ("an " if words[0] in "aeiou" else "a ") + words


def prompt(scene: CompScene) -> str:
    o, on = scene.objects, f"on {_a(scene.background)} background"
    if scene.task == "single_object":
        return f"{_a(o[0].shape)} {on}"
    if scene.task == "colors":
        return f"{_a(f'{o[0].color} {o[0].shape}')} {on}"
    if scene.task == "two_objects":
        return f"{_a(o[0].shape)} and {_a(o[1].shape)} {on}"
    if scene.task == "counting":
        word = next(w for w, n in NUMBERS.items() if n == scene.count)
        return f"{word} {o[0].shape + 's' if scene.count > 1 else o[0].shape} {on}"
    if scene.task == "position":
        return f"{_a(o[0].shape)} {scene.relation} {_a(o[1].shape)} {on}"
    return f"{_a(f'{o[0].color} {o[0].shape}')} and {_a(f'{o[1].color} {o[1].shape}')} {on}"


_SHAPE = r"(circle|square|triangle)s?"
_COLOR = "(" + "|".join(PALETTE) + ")"
_BG = rf" on an? {_COLOR} background$"
PATTERNS = [
    ("color_attr", re.compile(rf"^an? {_COLOR} {_SHAPE} and an? {_COLOR} {_SHAPE}{_BG}")),
    ("colors", re.compile(rf"^an? {_COLOR} {_SHAPE}{_BG}")),
    ("position", re.compile(rf"^an? {_SHAPE} (left of|right of|above|below) an? {_SHAPE}{_BG}")),
    ("two_objects", re.compile(rf"^an? {_SHAPE} and an? {_SHAPE}{_BG}")),
    ("counting", re.compile(rf"^(one|two|three) {_SHAPE}{_BG}")),
    ("single_object", re.compile(rf"^an? {_SHAPE}{_BG}")),
]


def parse(text: str) -> CompScene | None:
    """The scene a prompt of this world describes (None for any other text). Colours the prompt does
    not name are left as None-free placeholders: the first palette colour other than the background."""
    text = " ".join(text.lower().strip().rstrip(".").split())
    for task, pattern in PATTERNS:
        m = pattern.match(text)
        if not m:
            continue
        g, bg = m.groups(), m.groups()[-1]
        other = next(c for c in PALETTE if c != bg)
        if task == "color_attr":
            return CompScene(task, (Obj(g[1], g[0]), Obj(g[3], g[2])), bg)
        if task == "colors":
            return CompScene(task, (Obj(g[1], g[0]),), bg)
        if task == "position":
            return CompScene(task, (Obj(g[0], other), Obj(g[2], other)), bg, relation=g[1])
        if task == "two_objects":
            return CompScene(task, (Obj(g[0], other), Obj(g[1], other)), bg)
        if task == "counting":
            n = NUMBERS[g[0]]
            return CompScene(task, (Obj(g[1], other),) * n, bg, count=n)
        return CompScene(task, (Obj(g[0], other),), bg)
    return None


# ---- sampling scenes -------------------------------------------------------------------------------

def _compositions(scene: CompScene) -> set[tuple[str, object]]:
    out = {("color_shape", (o.color, o.shape)) for o in scene.objects if scene.task in ("colors", "color_attr")}
    if len(scene.objects) == 2 and scene.task != "counting":
        out.add(("shape_pair", (scene.objects[0].shape, scene.objects[1].shape)))
    if scene.task == "counting":
        out.add(("count", (scene.objects[0].shape, scene.count)))
    if scene.task == "position":
        out.add(("relation", (scene.objects[0].shape, scene.relation, scene.objects[1].shape)))
    return out


def is_heldout(scene: CompScene) -> bool:
    """Whether the scene uses a composition kept out of the training prompts."""
    return any(value in HELDOUT[kind] for kind, value in _compositions(scene))


def sample(task: str, rng: random.Random) -> CompScene:
    bg = rng.choice(PALETTE)
    colors = [c for c in PALETTE if c != bg]
    if task in ("single_object", "colors"):
        return CompScene(task, (Obj(rng.choice(SHAPES), rng.choice(colors)),), bg)
    if task == "counting":
        n = rng.choice(tuple(NUMBERS.values()))
        return CompScene(task, (Obj(rng.choice(SHAPES), rng.choice(colors)),) * n, bg, count=n)
    a, b = rng.sample(SHAPES, 2)
    if task == "color_attr":
        c1, c2 = rng.sample(colors, 2)
        return CompScene(task, (Obj(a, c1), Obj(b, c2)), bg)
    color = rng.choice(colors)
    relation = rng.choice(tuple(RELATIONS)) if task == "position" else None
    return CompScene(task, (Obj(a, color), Obj(b, color)), bg, relation=relation)


def all_scenes() -> list[CompScene]:
    """Every scene of the world outside the held-out compositions, in a fixed order (what pretraining
    renders): each task over every shape, colour, background (and count or relation)."""
    out = []
    for bg in PALETTE:
        colors = [c for c in PALETTE if c != bg]
        for shape in SHAPES:
            for color in colors:
                out.append(CompScene("single_object", (Obj(shape, color),), bg))
                out.append(CompScene("colors", (Obj(shape, color),), bg))
                out += [CompScene("counting", (Obj(shape, color),) * n, bg, count=n) for n in NUMBERS.values()]
        for a in SHAPES:
            for b in SHAPES:
                if a == b:
                    continue
                for color in colors:
                    out.append(CompScene("two_objects", (Obj(a, color), Obj(b, color)), bg))
                    out += [CompScene("position", (Obj(a, color), Obj(b, color)), bg, relation=r) for r in RELATIONS]
                out += [CompScene("color_attr", (Obj(a, c1), Obj(b, c2)), bg) for c1 in colors for c2 in colors if c1 != c2]
    return [s for s in out if not is_heldout(s)]


def captions(scene: CompScene) -> list[str]:
    """The captions of a scene (one template per task)."""
    return [prompt(scene)]


def score(image: torch.Tensor, scene: CompScene) -> float:
    """The judge's score of an image for a scene (what pretraining's base-model check reports)."""
    return judge(image, scene).score


def split(n: int, seed: int, heldout: bool, tasks=TASKS) -> list[CompScene]:
    """n scenes, tasks in turn: with heldout False only compositions outside HELDOUT (training
    prompts); with True only scenes that use one (the held-out evaluation prompts)."""
    rng, out, tries = random.Random(seed), [], 0
    if heldout:   # single objects ask for no composition: none of them is held out
        tasks = tuple(t for t in tasks if t != "single_object")
    while len(out) < n:
        tries += 1
        if tries > 200 * n:
            raise ValueError(f"cannot draw {n} {'held-out' if heldout else 'training'} scenes of tasks {tasks}")
        scene = sample(tasks[len(out) % len(tasks)], rng)
        if is_heldout(scene) == heldout:
            out.append(scene)
    return out


# ---- rendering -------------------------------------------------------------------------------------

def render(scene: CompScene, resolution: int, scale: float = 1.0) -> torch.Tensor:
    """The scene as an image [3, H, W] in [0, 1]; scale < 1 shrinks every object about its slot
    (pretrain.undersized: a defect of the pretraining data, not of the scene)."""
    image = torch.tensor(COLORS[scene.background], device="cpu").view(3, 1, 1).expand(3, resolution, resolution).clone()
    extent = EXTENT[len(scene.objects)] * scale
    for obj, centre in zip(scene.objects, scene.slots()):
        mask = torch.from_numpy(object_mask(obj.shape, centre, extent, resolution))
        image[:, mask] = torch.tensor(COLORS[obj.color], device="cpu").view(3, 1)
    return image


# ---- the judge -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Component:
    color: str
    shape: str
    area: int
    centre: tuple[float, float]   # (x, y), fractions of the side


def _label_components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean mask, as lists of (row, col) pixels."""
    seen, out = np.zeros_like(mask), []
    h, w = mask.shape
    for r0, c0 in zip(*np.nonzero(mask)):
        if seen[r0, c0]:
            continue
        stack, pixels = [(r0, c0)], []
        seen[r0, c0] = True
        while stack:
            r, c = stack.pop()
            pixels.append((r, c))
            for rr, cc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                if 0 <= rr < h and 0 <= cc < w and mask[rr, cc] and not seen[rr, cc]:
                    seen[rr, cc] = True
                    stack.append((rr, cc))
        out.append(np.array(pixels))
    return out


def classify(fill: float, top: float) -> str:
    """A component's shape from the share of its bounding box it fills and the share of its pixels in
    the box's upper half: the triangle (apex up) keeps about a quarter there, a disc or a square half,
    and this stays so when the edges are soft; fill then tells the square (1.0) from the disc (pi/4)."""
    if top < TRIANGLE_TOP or fill < 0.6:
        return "triangle"
    return "square" if fill >= SQUARE_FILL else "circle"


def components(image: torch.Tensor, background: str, max_distance: float = 0.35,
               min_area_fraction: float = 0.012) -> list[Component]:
    """The objects an image [3, H, W] shows on the named background, largest first."""
    h = image.shape[-1]
    pixels = image.clamp(0, 1).permute(1, 2, 0).reshape(-1, 3).double()
    palette = torch.tensor([COLORS[c] for c in PALETTE], dtype=torch.float64, device="cpu")
    distance = torch.cdist(pixels, palette)
    nearest, index = distance.min(1)
    labels = index.view(h, h).numpy()
    known = (nearest <= max_distance).view(h, h).numpy()
    out = []
    for k, color in enumerate(PALETTE):
        if color == background:
            continue
        for comp in _label_components(known & (labels == k)):
            if len(comp) < max(3, min_area_fraction * h * h):
                continue
            rows, cols = comp[:, 0], comp[:, 1]
            box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
            middle = (rows.min() + rows.max()) / 2   # rows above it: the upper half (the middle row counts half)
            top = (float((rows < middle).sum()) + 0.5 * float((rows == middle).sum())) / len(comp)
            out.append(Component(color, classify(len(comp) / box, top), len(comp),
                                 ((cols.mean() + 0.5) / h, (rows.mean() + 0.5) / h)))
    return sorted(out, key=lambda c: -c.area)


def judge(image: torch.Tensor, scene: CompScene) -> Asked:
    """The checks the scene's prompt asks, each read off the image's components."""
    found = components(image, scene.background)
    asked, o = Asked(), scene.objects

    def first(shape: str, color: str | None = None):
        return next((c for c in found if c.shape == shape and (color is None or c.color == color)), None)

    if scene.task == "single_object":
        asked.checks[f"{o[0].shape} present"] = first(o[0].shape) is not None
    elif scene.task == "colors":
        asked.checks[f"{o[0].shape} present"] = first(o[0].shape) is not None
        asked.checks[f"{o[0].shape} is {o[0].color}"] = first(o[0].shape, o[0].color) is not None
    elif scene.task == "two_objects":
        for obj in o:
            asked.checks[f"{obj.shape} present"] = first(obj.shape) is not None
    elif scene.task == "counting":
        asked.checks[f"{scene.count} {o[0].shape}"] = sum(c.shape == o[0].shape for c in found) == scene.count
    elif scene.task == "position":
        a, b = first(o[0].shape), first(o[1].shape)
        asked.checks[f"{o[0].shape} present"] = a is not None
        asked.checks[f"{o[1].shape} present"] = b is not None
        dx, dy = RELATIONS[scene.relation]
        asked.checks[f"{o[0].shape} {scene.relation} {o[1].shape}"] = bool(
            a is not None and b is not None and (a.centre[0] - b.centre[0]) * dx + (a.centre[1] - b.centre[1]) * dy > 0.05)
    else:   # color_attr
        for obj in o:
            asked.checks[f"{obj.color} {obj.shape}"] = first(obj.shape, obj.color) is not None
    return asked


def judge_reward(cfg: dict):
    """Reward `judge`: the share of what each prompt asks that its image shows (0 for other text)."""

    def reward(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        scores = []
        for image, text in zip(images, prompts):
            scene = parse(text)
            scores.append(judge(image, scene).score if scene else 0.0)
        return torch.tensor(scores, dtype=torch.float32, device="cpu")   # on the CPU: scores, like every reward's

    return reward


def per_task(prompts: list[str], scores: pd.DataFrame, metrics: list[str]) -> dict:
    """Per task (and for the prompts of held-out compositions apart from the rest), the mean of every
    metric and, with `judge`, the share of images that show everything asked (GenEval's accuracy);
    {} when no prompt is of this world. scores: one row per image with prompt_index and the metrics."""
    scenes = {i: parse(text) for i, text in enumerate(prompts)}
    if not any(scenes.values()):
        return {}
    rows = scores.assign(task=scores["prompt_index"].map(lambda i: scenes[i].task if scenes[i] else None),
                         split=scores["prompt_index"].map(lambda i: "heldout" if scenes[i] and is_heldout(scenes[i])
                                                          else "seen"))
    rows = rows[rows["task"].notna()]
    out = {}
    for key, column in (("task", "task"), ("split", "split")):
        for name, g in rows.groupby(column):
            entry = {"images": len(g), **{m: float(g[m].mean()) for m in metrics}}
            if "judge" in metrics:
                entry["judge_accuracy"] = float((g["judge"] >= 1.0 - 1e-9).mean())
            out[f"{key}:{name}"] = entry
    tasks = [v for k, v in out.items() if k.startswith("task:")]
    out["mean_over_tasks"] = {m: float(sum(t[m] for t in tasks) / len(tasks)) for m in tasks[0] if m != "images"}
    return out
