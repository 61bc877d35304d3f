"""The compositional tiny world's judge on rendered ground truth: perfect renderings score 1.0 on
every task, and wrong counts, swapped colours, wrong relations and missing objects score what the
rules say."""
import pytest
import torch

from egrpo import compworld as W
from egrpo.rewards import build_reward


@pytest.mark.parametrize("resolution", [32, 48])
def test_every_perfect_rendering_scores_one_on_every_task(resolution):
    scenes = W.split(120, 0, heldout=False) + W.split(60, 1, heldout=True)
    assert {s.task for s in scenes} == set(W.TASKS)
    for scene in scenes:
        text = W.prompt(scene)
        parsed = W.parse(text)
        assert parsed is not None and W.prompt(parsed) == text
        asked = W.judge(W.render(scene, resolution), parsed)
        assert asked.correct and asked.score == 1.0, (text, asked.checks)


def test_soft_edges_keep_the_shapes():
    """What a VAE's decoder does to small shapes (corners rounded, edges mixed with the background)
    must not turn triangles into discs: renderings softened by a 3x3 binomial blur keep every shape
    of the one- and two-object tasks (the bounding-box fill alone read 13-17% of them wrong)."""
    import torch.nn.functional as F

    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16

    def soft(image):
        return F.conv2d(F.pad(image[None], (1, 1, 1, 1), mode="replicate"), kernel.view(1, 1, 3, 3).repeat(3, 1, 1, 1),
                        groups=3)[0]

    scenes = [s for s in W.all_scenes() if s.task in ("single_object", "colors")]
    assert all(W.judge(soft(W.render(s, 32)), s).correct for s in scenes)
    two = [s for s in W.all_scenes() if s.task == "two_objects"]
    assert sum(W.judge(soft(W.render(s, 32)), s).correct for s in two) / len(two) >= 0.95
    # and a shape that is not there is still not read: a soft disc is no triangle, nor a square
    disc = soft(W.render(scene("single_object", [("circle", "red")]), 32))
    assert [c.shape for c in W.components(disc, "blue")] == ["circle"]


def scene(task, objects, background="blue", **kw):
    return W.CompScene(task, tuple(W.Obj(s, c) for s, c in objects), background, **kw)


def test_a_wrong_count_scores_zero_and_the_right_one_scores_one():
    asked = W.parse("three squares on a blue background")
    two = W.render(scene("counting", [("square", "red")] * 2, count=2), 32)
    three = W.render(scene("counting", [("square", "red")] * 3, count=3), 32)
    assert W.judge(two, asked).checks == {"3 square": False}
    assert W.judge(three, asked).score == 1.0
    assert W.judge(three, W.parse("three circles on a blue background")).score == 0.0


def test_swapped_colours_fail_the_binding_but_keep_the_shapes():
    asked = W.parse("a red circle and a green square on a blue background")
    swapped = W.render(scene("color_attr", [("circle", "green"), ("square", "red")]), 32)
    assert W.judge(swapped, asked).checks == {"red circle": False, "green square": False}
    assert W.judge(swapped, W.parse("a circle and a square on a blue background")).score == 1.0
    half = W.render(scene("color_attr", [("circle", "red"), ("square", "yellow")]), 32)
    assert W.judge(half, asked).score == 0.5


def test_a_wrong_relation_fails_only_the_relation():
    asked = W.parse("a circle left of a square on a white background")
    mirrored = W.render(scene("position", [("circle", "red"), ("square", "red")], "white", relation="right of"), 32)
    assert W.judge(mirrored, asked).checks == {"circle present": True, "square present": True,
                                               "circle left of square": False}
    below = W.parse("a circle below a square on a white background")
    above = W.render(scene("position", [("circle", "red"), ("square", "red")], "white", relation="above"), 32)
    assert W.judge(above, below).score == pytest.approx(2 / 3)


def test_a_missing_object_or_an_empty_canvas():
    asked = W.parse("a triangle and a circle on a blue background")
    only_circle = W.render(scene("single_object", [("circle", "red")]), 32)
    assert W.judge(only_circle, asked).checks == {"triangle present": False, "circle present": True}
    blank = W.render(scene("single_object", [("circle", "blue")]), 32)   # the object in the background's colour
    assert W.components(blank, "blue") == [] and W.judge(blank, asked).score == 0.0
    noise = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert W.judge(noise, asked).score < 1.0


def test_held_out_compositions_never_reach_the_training_prompts():
    train = W.split(300, 0, heldout=False)
    held = W.split(50, 1, heldout=True)
    assert not any(W.is_heldout(s) for s in train) and all(W.is_heldout(s) for s in held)
    assert {s.task for s in held} == set(W.TASKS) - {"single_object"}


def test_the_judge_reward_scores_prompts_and_zero_for_other_text():
    reward = build_reward("judge", {})
    s = scene("colors", [("triangle", "yellow")], "purple")
    images = torch.stack([W.render(s, 32), W.render(s, 32)])
    scores = reward(images, [W.prompt(s), "a photo of a cat"])
    assert scores.tolist() == [1.0, 0.0] and scores.dtype == torch.float32


def test_per_task_means_accuracy_and_the_held_out_split():
    import pandas as pd

    prompts = ["a circle on a blue background", "three squares on a red background",
               "a triangle above a square on a cyan background"]
    scores = pd.DataFrame({"prompt_index": [0, 0, 1, 1, 2, 2], "judge": [1.0, 0.5, 1.0, 1.0, 0.0, 1 / 3]})
    out = W.per_task(prompts, scores, ["judge"])
    assert out["task:single_object"] == {"images": 2, "judge": 0.75, "judge_accuracy": 0.5}
    assert out["task:counting"]["judge_accuracy"] == 1.0 and out["task:position"]["judge"] == pytest.approx(1 / 6)
    assert W.is_heldout(W.parse(prompts[1])) and out["split:heldout"]["images"] == 2   # ("square", 3) is held out
    assert out["split:seen"]["images"] == 4
    assert out["mean_over_tasks"]["judge"] == pytest.approx((0.75 + 1.0 + 1 / 6) / 3)
    assert W.per_task(["a photo of a cat"], scores.iloc[:2].assign(prompt_index=0), ["judge"]) == {}


def test_a_shrunk_rendering_keeps_its_slots_and_loses_area():
    """render(scale=s) (pretrain.undersized) draws every object about the same slot with about s^2
    of its pixels; the scene itself is unchanged."""
    scene = W.parse("a purple circle and a blue square on a white background")
    full, small = (sorted(W.components(W.render(scene, 64, s), scene.background), key=lambda c: c.color)
                   for s in (1.0, 0.4))
    assert [c.color for c in full] == [c.color for c in small] == ["blue", "purple"]
    for a, b in zip(full, small):
        assert abs(a.centre[0] - b.centre[0]) < 1.5 / 64 and abs(a.centre[1] - b.centre[1]) < 1.5 / 64
        assert 0.1 < b.area / a.area < 0.22   # 0.4^2 = 0.16, up to the pixel grid
