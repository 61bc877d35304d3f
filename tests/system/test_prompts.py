"""`egrpo prompts` turns a downloaded HPDv2 into the paper's prompt files; the evaluation scores a
styled benchmark per style. Small files in the HPDv2 download's formats."""
import json
import subprocess
import sys

import pytest

from helpers import micro_config
from egrpo.runtime.io import load_prompts

STYLES = ("anime", "concept-art", "paintings", "photo")


def hpdv2(tmp_path):
    """An HPDv2-like download: train.json with a prompt per annotated pair (repeats, a line break),
    test.json with image paths and ranks, benchmark/<style>.json lists of strings."""
    root = tmp_path / "HPDv2"
    (root / "benchmark").mkdir(parents=True)
    train = [{"prompt": "a red circle", "human_preference": [1, 0], "file_path": ["a.jpg", "b.jpg"]},
             {"prompt": "a blue\nsquare", "human_preference": [0, 1], "file_path": ["c.jpg", "d.jpg"]},
             {"prompt": "a red circle", "human_preference": [0, 1], "file_path": ["e.jpg", "f.jpg"]}]
    test = [{"prompt": f"test prompt {i}", "image_path": [f"{i}.jpg"], "rank": [1]} for i in range(3)]
    (root / "train.json").write_text(json.dumps(train))
    (root / "test.json").write_text(json.dumps(test))
    for style in STYLES:
        (root / "benchmark" / f"{style}.json").write_text(json.dumps([f"{style} one", f"{style} two"]))
    return root


def egrpo(*args):
    return subprocess.run([sys.executable, "-m", "egrpo", *args], capture_output=True, text=True)


def test_prompts_converts_an_hpdv2_download(tmp_path):
    out = tmp_path / "data/hpd"
    result = egrpo("prompts", "--hpdv2", str(hpdv2(tmp_path)), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "train.txt 2 prompts, test.txt 3" in result.stdout and "anime 2" in result.stdout
    assert (out / "train.txt").read_text() == "a red circle\na blue square\n"   # each once, one a line
    assert [p.text for p in load_prompts(out / "test.txt")] == ["test prompt 0", "test prompt 1", "test prompt 2"]
    benchmark = load_prompts(out / "benchmark.json")
    assert [(p.text, p.style) for p in benchmark][:3] == [("anime one", "anime"), ("anime two", "anime"),
                                                          ("concept-art one", "concept-art")]
    assert sorted({p.style for p in benchmark}) == sorted(STYLES) and len(benchmark) == 8
    assert "the published HPDv2 test set has 400" in result.stderr   # counts that differ are reported


def test_prompts_names_what_is_missing(tmp_path):
    root = hpdv2(tmp_path)
    (root / "benchmark/photo.json").unlink()
    result = egrpo("prompts", "--hpdv2", str(root), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    lines = [l for l in result.stderr.splitlines() if "error" in l]
    assert len(lines) == 1 and "benchmark/photo.json not found" in lines[0] and "Traceback" not in result.stderr


def test_evaluation_scores_the_benchmark_per_style(tmp_path, tiny_model_dir):
    """prompts.benchmark: every evaluation also scores the styled benchmark, and the report breaks
    every metric down per style from it (the 400 test prompts carry no style)."""
    from egrpo.config import validate
    from egrpo.stages.evaluate import run_evaluate
    from egrpo.analysis.runs import per_style_table

    benchmark = tmp_path / "benchmark.json"
    benchmark.write_text(json.dumps([{"prompt": "a red circle", "style": "anime"},
                                     {"prompt": "a blue square on a white background", "style": "photo"},
                                     {"prompt": "a green star", "style": "photo"}]))
    cfg = micro_config(tmp_path)
    cfg["prompts"]["benchmark"] = str(benchmark)
    cfg = validate(cfg)
    summary = run_evaluate(cfg, "base", tiny_model_dir, None, tmp_path / "ev")
    scores = __import__("pandas").read_csv(tmp_path / "ev/scores_benchmark.csv")
    assert len(scores) == 3 and set(scores["style"]) == {"anime", "photo"}
    assert set(summary["per_style"]) == {"anime", "photo"}
    assert summary["per_style"]["photo"]["prompt_color"] == pytest.approx(
        scores.loc[scores["style"] == "photo", "prompt_color"].mean())
    table = per_style_table([str(tmp_path / "ev/summary.json")])
    assert set(table["style"]) == {"anime", "photo"} and set(table["metric"]) == {"prompt_color"}
