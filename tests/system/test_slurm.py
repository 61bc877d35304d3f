"""The tiny DAG on a real SLURM of two nodes on this host (tools/slurm_local.sh, NODES=2), through
profiles/slurm: a crash, stops before a 1-minute time limit, and a train job over both nodes.

Marked `slurm`: the fixture brings the cluster up and tears it down. Where SLURM cannot be had (not
root and SLURM not installed, or no apt-get to install it) the tests are skipped with one line that
says why and how to run them; CI sets EGRPO_REQUIRE_SLURM=1 (.ci/run), so there a cluster that cannot
start fails the test with the reason.
"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT
from snakemake_runs import real_slurm_env
from snakemake_runs import copy_workflow

# one worker: the cluster is one per machine (port 6817), brought up once for the module
pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.xdist_group("slurm")]


def why_no_slurm() -> str | None:
    """Why tools/slurm_local.sh cannot run here (None: it can)."""
    if all(shutil.which(tool) for tool in ("slurmctld", "slurmd", "munged", "scontrol")):
        return None if os.geteuid() == 0 else "not root (the local cluster runs its daemons as root)"
    if os.geteuid() != 0:
        return "SLURM is not installed and installing it (apt-get) needs root"
    if not shutil.which("apt-get"):
        return "SLURM is not installed and there is no apt-get to install it"
    return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import socket

    reason = why_no_slurm()
    if reason and not os.environ.get("EGRPO_REQUIRE_SLURM"):
        pytest.skip(f"SLURM tests skipped: {reason}; run the suite as root on Debian/Ubuntu to include them "
                    "(tools/slurm_local.sh installs and starts a local cluster)")

    with socket.socket() as probe:  # slurmctld's port: a controller left running (e.g. by a killed test run)
        if probe.connect_ex(("127.0.0.1", 6817)) == 0:  # would make ours exit with "Address already in use"
            pytest.fail("port 6817 is taken: a slurmctld is already running here (a killed earlier run's?); "
                        "stop it (pkill slurmctld slurmd munged) and run again")
    state = tmp_path_factory.mktemp("slurm")
    env = dict(real_slurm_env(), SLURM_LOCAL_DIR=str(state), FAKE_GPUS="2", NODES="2")
    up = subprocess.run(["bash", str(ROOT / "tools/slurm_local.sh"), "up"], env=env, capture_output=True, text=True,
                        timeout=600)
    if up.returncode != 0:
        pytest.fail(f"could not start the local SLURM: {up.stderr[-2000:]}")
    yield state
    subprocess.run(["bash", str(ROOT / "tools/slurm_local.sh"), "down"], env=env, capture_output=True, timeout=120)
    # after `down`, scontrol fails at once (no slurm.conf of ours) instead of retrying ~9 s for a
    # controller that is gone: every later Snakemake start (its slurm plugin asks scontrol) stays fast
    start = time.monotonic()
    subprocess.run(["scontrol", "show", "config"], env=real_slurm_env(), capture_output=True, timeout=60)
    assert time.monotonic() - start < 2, "scontrol still waits for the stopped controller"
    assert not Path("/etc/slurm/slurm.conf").exists() or "egrpo" not in Path("/etc/slurm/slurm.conf").read_text()


GPU_STAGES = ["profile:gpu=1", "train:gpu=1", "evaluate:gpu=1"]


def run_on_slurm(work, *extra, env=None, set_resources=GPU_STAGES):
    """The README's path: profiles/slurm as shipped. The micro config's jobs fit this small node;
    --set-resources gives the GPU stages a (fake) GPU on top of the config's resources."""
    # polled every 2 s instead of the default 10 (test speed; the profile's behaviour is otherwise unchanged)
    return subprocess.run([sys.executable, "-m", "snakemake", "--profile", "profiles/slurm",
                           "--seconds-between-status-checks", "2", "--slurm-init-seconds-before-status-checks", "1",
                           "--configfile", "tests/data/micro.yaml",
                           *(["--set-resources", *set_resources] if set_resources else []), *extra],
                          cwd=work, capture_output=True, text=True, timeout=900, env=real_slurm_env(env))


def test_preflight_stops_a_job_no_node_can_run_before_submitting(cluster, tmp_path):
    from egrpo.runtime.slurm import read_nodes

    work = copy_workflow(tmp_path)
    node = max(read_nodes(), key=lambda n: n.mem_mb)
    too_much = node.mem_mb + 1000
    result = run_on_slurm(work, set_resources=GPU_STAGES + [f"train:mem_mb={too_much}"])
    assert result.returncode != 0
    lines = [l for l in result.stderr.splitlines() if l.startswith("egrpo: slurm preflight")]
    assert len(lines) == 1, result.stderr[-3000:]
    assert f"rule train: mem_mb={too_much} > {node.mem_mb}" in lines[0] and "'debug'" in lines[0]
    assert "rule evaluate" not in lines[0] and "rule profile" not in lines[0]   # those fit
    # nothing was submitted: slurmctld's job log has no job from this working directory
    log = cluster / "log/jobcomp.txt"
    assert str(work) not in (log.read_text() if log.exists() else "")
    assert not (work / "results/micro/model").exists()


def test_tiny_dag_through_the_slurm_profile(cluster, tmp_path, monkeypatch):
    import mlflow
    import pandas as pd
    import torch
    import yaml
    from safetensors.torch import load_file

    from egrpo.stages.train import run_train

    work = copy_workflow(tmp_path)
    # The train job's iterations take ~13 s and its jobs have 1 minute, of which the last 40 s are the
    # margin: after its first iteration a job has less than margin + an iteration left, so it stops
    # with its state saved outside its outputs, the profile's retries submit it again and the next job
    # continues: 3 iterations take 3 jobs, 2 stops (one algorithm: the local executor's tests and
    # test_families cover the others; a SIGKILLed job resumes the same way: tests/system/test_faults.py)
    env = dict(real_slurm_env(), EGRPO_FAULT="slow-iteration:12")
    train = {"iterations": 3, "checkpoint_every": 1, "time_limit_margin_s": 40}
    result = run_on_slurm(work, "--config", f"train={json.dumps(train)}", "algorithms=[egrpo]", "--retries", "10",
                          env=env, set_resources=GPU_STAGES + ["train:runtime=1"])
    assert result.returncode == 0, result.stderr[-4000:]
    res = work / "results/micro"
    for path in ["profile/entropy.csv", "plan/plan.json", "report/table.md", "eval/base/summary.json"]:
        assert (res / path).is_file(), path
    metrics = json.loads((res / "train/egrpo/color/seed0/metrics.json").read_text())
    assert metrics["iterations"] == 3 and metrics["resumed_from_iteration"] == 2, metrics
    stops = metrics["time_limit_stops"]
    assert stops == 2, "one iteration per 1-minute job that stops 40 s early"
    # every job went through sbatch: slurmctld's job-completion log lists them, run in this workflow
    records = [dict(field.split("=", 1) for field in line.split() if "=" in field)
               for line in (cluster / "log/jobcomp.txt").read_text().splitlines()]
    ours = [r for r in records if r.get("WorkDir") == str(work)]
    completed = {r["JobId"] for r in ours if r["JobState"] == "COMPLETED"}
    assert len(completed) == 7, ours  # build_model, profile, threshold, train, 2 evaluate, report
    failed = {r["JobId"] for r in ours if r["JobState"] == "FAILED"}
    assert len(failed) == stops, "one train job per stop (exit 75), then the one that finished"
    assert "Requeued at a time limit" in (res / "report/table.md").read_text()
    assert f"egrpo-color-seed0 {stops};" in (res / "report/table.md").read_text()
    # the same run in one piece, without slow iterations or a time limit: identical
    (config_file,) = (res / "configs").glob("*.yaml")
    cfg = yaml.safe_load(config_file.read_text())
    cfg["mlflow"]["tracking_uri"] = f"sqlite:///{tmp_path / 'whole.db'}"
    monkeypatch.chdir(work)
    whole = run_train(cfg, "egrpo", "color", 0, str(res / "model"), str(res / "plan/plan.json"),
                      tmp_path / "whole", tmp_path / "whole-resume")
    skip = {"wall_s", "mlflow_run_id", "resumed_from_iteration", "time_limit_stops"}
    assert {k: v for k, v in whole.items() if k not in skip} == {k: v for k, v in metrics.items() if k not in skip}
    a = pd.read_csv(tmp_path / "whole/train_log.csv")
    b = pd.read_csv(res / "train/egrpo/color/seed0/train_log.csv")
    same = [c for c in a.columns if not c.endswith(("wall_s", "_s"))]
    pd.testing.assert_frame_equal(a[same], b[same])
    wa = load_file(str(tmp_path / "whole/checkpoint/lora.safetensors"))
    wb = load_file(str(res / "train/egrpo/color/seed0/checkpoint/lora.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # MLflow holds every run, each tagged with its SLURM job; GPU rules got their GPU
    mlflow.set_tracking_uri(f"sqlite:///{work / 'results/mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["micro"])
    assert runs["tags.stage"].value_counts().to_dict() == {"profile": 1, "threshold": 1, "train": 1, "evaluate": 2,
                                                          "report": 1}
    assert runs["tags.slurm_job_id"].notna().all()
    train_ids = set(runs.loc[runs["tags.stage"] == "train", "tags.slurm_job_id"])
    assert set(runs["tags.slurm_job_id"]) - train_ids <= completed, "each run comes from a completed sbatch job"
    assert train_ids <= failed, "the train run was opened by the first job and resumed into"
    gpu_stages = runs[runs["tags.stage"].isin(["profile", "train", "evaluate"])]
    assert (gpu_stages["tags.slurm_gpus"] == "1").all()
    cpu_stages = runs[runs["tags.stage"].isin(["threshold", "report"])]
    assert cpu_stages["tags.slurm_gpus"].isna().all()
    assert (runs["status"] == "FINISHED").all()

    # A train job over the two nodes: srun starts one launcher per node, they meet at the first node
    two_nodes = {"train": {"nodes": 2, "mem_mb": 2000, "runtime": 10}}
    result = run_on_slurm(work, "--config", "algorithms=[dancegrpo]", f"resources={json.dumps(two_nodes)}",
                          'train={"iterations": 2, "prompts_per_iteration": 2, "checkpoint_every": 1}',
                          "--", "results/micro/train/dancegrpo/color/seed0/metrics.json", set_resources=[])
    assert result.returncode == 0, result.stderr[-4000:]
    assert json.loads((res / "train/dancegrpo/color/seed0/metrics.json").read_text())["processes"] == 2
    log = (res / "logs/train/dancegrpo/color/seed0.log").read_text()
    assert "node 0 of 2" in log and "node 1 of 2" in log
    records = [dict(field.split("=", 1) for field in line.split() if "=" in field)
               for line in (cluster / "log/jobcomp.txt").read_text().splitlines()]
    (job,) = [r for r in records if r.get("WorkDir") == str(work) and r.get("NodeCnt") == "2"]
    assert job["JobState"] == "COMPLETED" and job["NodeList"] == "n[1-2]"

    # the profile answers a dry run by name after `egrpo install-profile`
    home = tmp_path / "home"
    link = subprocess.run([sys.executable, "-m", "egrpo", "install-profile"], capture_output=True, text=True,
                          env=dict(real_slurm_env(), XDG_CONFIG_HOME=str(home)))
    assert link.returncode == 0 and (home / "snakemake/slurm/config.yaml").is_file()
    dry = subprocess.run([sys.executable, "-m", "snakemake", "--profile", "slurm", "-n"], cwd=work,
                         capture_output=True, text=True, env=dict(real_slurm_env(), XDG_CONFIG_HOME=str(home)))
    assert dry.returncode == 0, dry.stderr[-2000:]


def test_where_slurm_cannot_be_had_the_reason_is_one_line(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(shutil, "which", lambda tool: None)
    assert why_no_slurm() == "SLURM is not installed and installing it (apt-get) needs root"
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert why_no_slurm() == "SLURM is not installed and there is no apt-get to install it"
    monkeypatch.setattr(shutil, "which", lambda tool: f"/usr/sbin/{tool}")
    assert why_no_slurm() is None
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert why_no_slurm() == "not root (the local cluster runs its daemons as root)"
