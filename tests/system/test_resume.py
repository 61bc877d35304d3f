"""A train process killed (SIGKILL) between checkpoints resumes into exactly the unbroken run."""
import json
import os
import subprocess
import sys

import pandas as pd
import yaml
from helpers import VOLATILE, plan_file, train_cfg


def test_sigkill_then_resume_matches_unbroken_run(tmp_path, tiny_model_dir):
    cfg = train_cfg(tmp_path, iterations=4, checkpoint_every=2)
    config_path = tmp_path / "cfg.yaml"
    config_path.write_text(yaml.safe_dump(cfg))
    plan = plan_file(tmp_path)

    def train(out, resume, kill_after=None):
        env = dict(os.environ)
        if kill_after:
            env["EGRPO_FAULT"] = f"kill-after-iteration:{kill_after}"
        return subprocess.run([sys.executable, "-m", "egrpo", "train", "--config", str(config_path), "--model",
                               str(tiny_model_dir), "--plan", plan, "--algorithm", "egrpo", "--reward-setting",
                               "color", "--seed", "3", "--out", str(out), "--resume-dir", str(resume)],
                              env=env, capture_output=True, text=True)

    unbroken = train(tmp_path / "u", tmp_path / "ru")
    assert unbroken.returncode == 0, unbroken.stderr
    killed = train(tmp_path / "k", tmp_path / "rk", kill_after=3)
    assert killed.returncode == -9
    assert not (tmp_path / "k/metrics.json").exists(), "a killed job leaves no complete-looking output"
    state = json.loads((tmp_path / "rk/state/state.json").read_text())
    assert state["iteration"] == 2, "last checkpoint before the kill"
    resumed = train(tmp_path / "k", tmp_path / "rk")
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "u/metrics.json").read_text())
    b = json.loads((tmp_path / "k/metrics.json").read_text())
    assert b["resumed_from_iteration"] == 2
    assert b["mlflow_run_id"] == state["mlflow_run_id"], "resumes into the same MLflow run"
    assert {k: v for k, v in a.items() if k not in VOLATILE} == {k: v for k, v in b.items() if k not in VOLATILE}
    timings = ["iteration_s", "wall_s", "rollout_s", "scoring_s", "training_s"]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "u/train_log.csv").drop(columns=timings),
                                  pd.read_csv(tmp_path / "k/train_log.csv").drop(columns=timings))
