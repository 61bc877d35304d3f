"""Evaluation that finishes at scale: sharded over processes, resumed after a kill, batched; the
scores do not depend on how the prompts were split (one seed per prompt and image)."""
import os
import subprocess
import sys

import pandas as pd
import yaml
from helpers import ROOT, micro_config


def evaluate(tmp_path, model, out, *extra, processes=1, env=None, batch=1, per_prompt=2):
    cfg = micro_config(tmp_path, evaluate={"images_per_prompt": per_prompt, "batch_size": batch})
    cfg["prompts"]["eval"] = str(ROOT / "config/prompts/eval.txt")   # 16 prompts to split
    config = tmp_path / f"cfg{batch}-{per_prompt}.yaml"
    config.write_text(yaml.safe_dump(cfg))
    args = ["-m", "egrpo", "evaluate", "--config", str(config), "--model", str(model), "--name", "base",
            "--out", str(out), "--resume-dir", str(out) + "-resume", *extra]
    if processes > 1:
        args = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), *args[1:]]
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})))


def test_three_shards_a_killed_and_resumed_job_and_one_process_score_the_same(tmp_path, tiny_model_dir):
    one = evaluate(tmp_path, tiny_model_dir, tmp_path / "one")
    assert one.returncode == 0, one.stderr[-3000:]
    reference = pd.read_csv(tmp_path / "one/scores.csv")
    n_prompts = reference["prompt_index"].nunique()
    assert n_prompts >= 4 and len(reference) == 2 * n_prompts
    assert not (tmp_path / "one-resume").exists(), "the resume state goes after success"

    three = evaluate(tmp_path, tiny_model_dir, tmp_path / "three", processes=3)
    assert three.returncode == 0, three.stderr[-3000:]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "three/scores.csv"), reference)
    assert (tmp_path / "three/grid.png").read_bytes() == (tmp_path / "one/grid.png").read_bytes()

    killed = evaluate(tmp_path, tiny_model_dir, tmp_path / "k", env={"EGRPO_FAULT": "kill-after-prompts:2"})
    assert killed.returncode != 0 and not (tmp_path / "k/scores.csv").exists()
    kept = pd.read_json(tmp_path / "k-resume/eval-0.jsonl", lines=True)
    assert kept["prompt_index"].nunique() == 2
    resumed = evaluate(tmp_path, tiny_model_dir, tmp_path / "k")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming eval: 2 of" in resumed.stderr
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "k/scores.csv"), reference)
    assert (tmp_path / "k/grid.png").read_bytes() == (tmp_path / "one/grid.png").read_bytes()


def test_batched_prompts_score_what_one_prompt_at_a_time_scores(tmp_path, tiny_model_dir):
    one = evaluate(tmp_path, tiny_model_dir, tmp_path / "one", per_prompt=1)
    four = evaluate(tmp_path, tiny_model_dir, tmp_path / "four", batch=4, per_prompt=1)
    assert one.returncode == 0 and four.returncode == 0, four.stderr[-3000:]
    a, b = pd.read_csv(tmp_path / "one/scores.csv"), pd.read_csv(tmp_path / "four/scores.csv")
    pd.testing.assert_frame_equal(a[["prompt_index", "image_index", "seed"]], b[["prompt_index", "image_index", "seed"]])
    assert (a["prompt_color"] - b["prompt_color"]).abs().max() <= 1e-3   # float rounding of a batched forward


def test_a_time_limit_stops_between_prompts_and_the_next_job_continues(tmp_path, tiny_model_dir):
    import time

    env = {"EGRPO_JOB_END_TIME": str(time.time() + 30)}   # the margin (120 s by default) is already past
    first = evaluate(tmp_path, tiny_model_dir, tmp_path / "t", env=env, per_prompt=1)
    assert first.returncode == 75, first.stderr[-3000:]
    assert "prompts scored and kept" in first.stderr.strip().splitlines()[-1]
    second = evaluate(tmp_path, tiny_model_dir, tmp_path / "t", per_prompt=1)
    assert second.returncode == 0, second.stderr[-3000:]
    scores = pd.read_csv(tmp_path / "t/scores.csv")
    assert len(scores) == scores["prompt_index"].nunique() == 16 and "resuming eval: 1 of 16" in second.stderr
