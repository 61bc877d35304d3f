"""The default DAG, the compositional world's, on its shipped base (config/config.yaml + the micro
overlay tests/data/micro_comp.yaml): profile, plan, training on the judge and on the learned tinyclip,
evaluation judged per task, and a report whose table states the judge's per-task scores."""
import json
import subprocess
import sys

import pandas as pd
import pytest
from snakemake_runs import copy_workflow

from egrpo import compworld

pytestmark = pytest.mark.slow


def test_the_compositional_world_runs_end_to_end_and_reports_per_task(tmp_path):
    work = copy_workflow(tmp_path / "wf")
    import shutil

    from helpers import ROOT

    shutil.copytree(ROOT / "models", work / "models")
    run = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "config/config.yaml",
                          "tests/data/micro_comp.yaml"], cwd=work, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    res = work / "results/micro_comp"
    assert sorted(p.name for p in (res / "train/egrpo").iterdir()) == ["judge", "tinyclip"]
    base = json.loads((res / "eval/base/summary.json").read_text())
    tasks = {k.removeprefix("task:") for k in base["per_task"] if k.startswith("task:")}
    assert tasks == set(compworld.TASKS)
    assert base["per_task"]["split:heldout"]["images"] == 3 and base["per_task"]["split:seen"]["images"] == 4
    scores = pd.read_csv(res / "eval/base/scores.csv")
    assert scores["judge"].between(0, 1).all() and len(scores) == 7
    per_task = pd.read_csv(res / "report/per_task.csv")
    judged = per_task[per_task["metric"] == "judge"]
    assert {f"task:{t}" for t in compworld.TASKS} <= set(judged["group"]) and {"base", "egrpo"} <= set(judged["algorithm"])
    table = (res / "report/table.md").read_text()
    assert "## Per task: judge" in table
    metrics = json.loads((res / "train/egrpo/tinyclip/seed0/metrics.json").read_text())
    assert "heldout_judge" in metrics["heldout_curve"][0]       # the learned reward, judged while it trains
    assert (res / "report/reward_vs_truth.png").is_file() and (res / "report/health.png").is_file()
