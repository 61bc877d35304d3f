"""Prompt files and offline rewards."""
import json
import os

import pytest
import torch

from egrpo.errors import UserError
from egrpo.runtime.io import Prompt, atomic_dir, load_prompts
from egrpo.rewards import REWARDS, RewardSetting, build_reward
from egrpo.rewards.offline import prompt_colors


def test_prompt_files(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("# comment\na red circle\n\n  a blue square  \n")
    assert load_prompts(txt) == [Prompt("a red circle"), Prompt("a blue square")]
    js = tmp_path / "p.json"
    js.write_text(json.dumps([{"prompt": "a cat", "style": "photo"}, "a dog"]))
    assert load_prompts(js) == [Prompt("a cat", "photo"), Prompt("a dog")]
    hpd = tmp_path / "hpd.json"
    hpd.write_text(json.dumps({"anime": ["x", "y"], "photo": ["z"]}))
    assert [p.style for p in load_prompts(hpd)] == ["anime", "anime", "photo"]


@pytest.mark.parametrize("content,match", [
    (b"", "holds no prompts"), (b"# only a comment\n\n", "holds no prompts"),
    (b"\xff\xfe bad bytes", "not UTF-8")])
def test_bad_prompt_files(tmp_path, content, match):
    path = tmp_path / "p.txt"
    path.write_bytes(content)
    with pytest.raises(UserError, match=match):
        load_prompts(path, "prompts.train")
    with pytest.raises(UserError, match="prompt file not found"):
        load_prompts(tmp_path / "missing.txt")
    bad_json = tmp_path / "p.json"
    bad_json.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_prompts(bad_json)


def test_prompt_color_reward_prefers_named_colors():
    reward = build_reward("prompt_color", {})
    red = torch.zeros(1, 3, 8, 8); red[:, 0] = 0.9; red[:, 1:] = 0.1
    blue = torch.zeros(1, 3, 8, 8); blue[:, 2] = 0.9; blue[:, :2] = 0.1
    half = torch.cat([red[..., :4], blue[..., 4:]], dim=-1)
    images = torch.cat([red, blue, half])
    scores = reward(images, ["a red circle"] * 3)
    assert scores[0] > 0.9 and scores[1] < 0.01
    both = reward(images, ["a red circle on a blue background"] * 3)
    assert both[2] > both[0] and both[2] > both[1]
    assert float(reward(red, ["a circle"])[0]) == 0.0
    assert prompt_colors("A Grey square on grey and RED") == ["gray", "red"]


def test_jpeg_compressibility_prefers_flat_images():
    reward = build_reward("jpeg_compressibility", {})
    flat = torch.full((1, 3, 32, 32), 0.5)
    noise = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    scores = reward(torch.cat([flat, noise]), ["x", "x"])
    assert scores.shape == (2,) and scores[0] > scores[1] and (scores < 0).all()


def test_reward_setting_components_and_weights():
    setting = RewardSetting({"prompt_color": 2.0, "jpeg_compressibility": 0.5}, {})
    images = torch.rand(3, 3, 16, 16)
    comps = setting.components(images, ["a red thing"] * 3)
    assert set(comps) == set(REWARDS) & {"prompt_color", "jpeg_compressibility"}
    torch.testing.assert_close(setting.combine(comps), 2.0 * comps["prompt_color"] + 0.5 * comps["jpeg_compressibility"])


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("crash")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with atomic_dir(target) as tmp:
        (tmp / "done.txt").write_text("ok")
    assert (target / "done.txt").read_text() == "ok"


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_outputs_get_the_mode_the_umask_gives(tmp_path, umask, file_mode, dir_mode):
    """Atomic writes go through 0600 temporary files and 0700 temporary directories; the results
    must still be readable by collaborators as far as the umask allows (tables, plots, checkpoints)."""
    import stat

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from egrpo.runtime.io import atomic_write_json, save_figure

    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "metrics.json", {"a": 1})
        with atomic_dir(tmp_path / "checkpoint") as tmp:
            (tmp / "weights.txt").write_text("w")
        fig = plt.figure()
        save_figure(fig, tmp_path / "plot.png")
        plt.close(fig)
    finally:
        os.umask(old)
    for name in ("metrics.json", "plot.png", "checkpoint/weights.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == file_mode, name
    assert stat.S_IMODE((tmp_path / "checkpoint").stat().st_mode) == dir_mode


def test_per_style_table(tmp_path):
    from egrpo.analysis.runs import per_style_table

    def summary(name, values):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"name": name, "per_style": {"anime": {"hps": values[0]}, "photo": {"hps": values[1]}}}))
        return str(path)

    paths = [summary("base", (0.2, 0.3)), summary("egrpo-hps-seed0", (0.4, 0.5)), summary("egrpo-hps-seed1", (0.6, 0.7))]
    table = per_style_table(paths).set_index(["algorithm", "style"])
    assert table.loc[("egrpo", "anime"), "mean"] == pytest.approx(0.5)
    assert table.loc[("egrpo", "photo"), "std"] == pytest.approx(0.1414, abs=1e-3)
    assert table.loc[("base", "photo"), "mean"] == pytest.approx(0.3)
    empty = per_style_table([])
    assert empty.empty and empty.to_csv(index=False).strip() == "algorithm,reward_setting,style,metric,mean,std"


def test_resume_state_and_its_empty_folders_go_after_success(tmp_path):
    from egrpo.train.resume import remove_resume_state

    exp = tmp_path / "results/exp"
    for seed in (0, 1):
        (exp / f"resume/egrpo/color/seed{seed}/state").mkdir(parents=True)
    (exp / "resume/dancegrpo/color/seed0").mkdir(parents=True)
    remove_resume_state(exp / "resume/egrpo/color/seed0")
    assert not (exp / "resume/egrpo/color/seed0").exists() and (exp / "resume/egrpo/color/seed1").is_dir()
    remove_resume_state(exp / "resume/egrpo/color/seed1")
    assert not (exp / "resume/egrpo").exists() and (exp / "resume/dancegrpo/color/seed0").is_dir()
    remove_resume_state(exp / "resume/dancegrpo/color/seed0")
    assert not (exp / "resume").exists() and exp.is_dir()        # up to resume/, never above
    elsewhere = tmp_path / "mine/keep/state"                   # a hand-chosen --resume-dir: only itself goes
    elsewhere.mkdir(parents=True)
    remove_resume_state(elsewhere)
    assert not elsewhere.exists() and (tmp_path / "mine/keep").is_dir()
