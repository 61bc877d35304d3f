"""The tiny DAG on a real single-node SLURM (tools/slurm_local.sh), through profiles/slurm.

Marked `slurm`: CI runs it as root; the fixture brings the cluster up and tears it down, and a
cluster that cannot start fails the test with the reason (it is not skipped).
"""
import json
import subprocess
import sys

import pytest
from conftest import ROOT, real_slurm_env
from snakemake_runs import copy_workflow

# one worker: the cluster is one per machine (port 6817), brought up once for the module
pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.xdist_group("slurm")]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import socket

    with socket.socket() as probe:  # slurmctld's port: a controller left running (e.g. by a killed test run)
        if probe.connect_ex(("127.0.0.1", 6817)) == 0:  # would make ours exit with "Address already in use"
            pytest.fail("port 6817 is taken: a slurmctld is already running here (a killed earlier run's?); "
                        "stop it (pkill slurmctld slurmd munged) and run again")
    state = tmp_path_factory.mktemp("slurm")
    env = dict(real_slurm_env(), SLURM_LOCAL_DIR=str(state), FAKE_GPUS="2")
    up = subprocess.run(["bash", str(ROOT / "tools/slurm_local.sh"), "up"], env=env, capture_output=True, text=True,
                        timeout=600)
    if up.returncode != 0:
        pytest.fail(f"could not start the local SLURM: {up.stderr[-2000:]}")
    yield state
    subprocess.run(["bash", str(ROOT / "tools/slurm_local.sh"), "down"], env=env, capture_output=True, timeout=120)


GPU_STAGES = ["profile:gpu=1", "train:gpu=1", "evaluate:gpu=1"]


def run_on_slurm(work, *extra, env=None, set_resources=GPU_STAGES):
    """The README's path: profiles/slurm as shipped. The micro config's jobs fit this small node;
    --set-resources gives the GPU stages a (fake) GPU on top of the config's resources."""
    # polled every 2 s instead of the default 10 (test speed; the profile's behaviour is otherwise unchanged)
    return subprocess.run([sys.executable, "-m", "snakemake", "--profile", "profiles/slurm",
                           "--seconds-between-status-checks", "2", "--slurm-init-seconds-before-status-checks", "1",
                           "--configfile", "tests/data/micro.yaml", "--set-resources", *set_resources, *extra],
                          cwd=work, capture_output=True, text=True, timeout=900, env=real_slurm_env(env))


def test_preflight_stops_a_job_no_node_can_run_before_submitting(cluster, tmp_path):
    from egrpo.slurm import read_nodes

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


def test_tiny_dag_through_the_slurm_profile(cluster, tmp_path):
    import mlflow

    work = copy_workflow(tmp_path)
    # the train job is SIGKILLed after its first iteration on the first attempt: the profile's retries
    # start it again, and it resumes from the checkpoint kept outside its outputs (one algorithm: the
    # local executor's tests and test_families cover the others)
    env = dict(real_slurm_env(), EGRPO_KILL_AFTER_ITERATION="1")
    result = run_on_slurm(work, "--config", 'train={"iterations": 2, "checkpoint_every": 1}', "algorithms=[egrpo]",
                          env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    res = work / "results/micro"
    for path in ["profile/entropy.csv", "plan/plan.json", "report/table.md", "eval/base/summary.json"]:
        assert (res / path).is_file(), path
    metrics = json.loads((res / "train/egrpo/color/seed0/metrics.json").read_text())
    assert metrics["iterations"] == 2 and metrics["resumed_from_iteration"] == 1, metrics
    # every job went through sbatch: slurmctld's job-completion log lists them, run in this workflow
    records = [dict(field.split("=", 1) for field in line.split() if "=" in field)
               for line in (cluster / "log/jobcomp.txt").read_text().splitlines()]
    ours = [r for r in records if r.get("WorkDir") == str(work)]
    completed = {r["JobId"] for r in ours if r["JobState"] == "COMPLETED"}
    assert len(completed) == 7, ours  # build_model, profile, threshold, train, 2 evaluate, report
    failed = {r["JobId"] for r in ours if r["JobState"] == "FAILED"}
    assert len(failed) == 1, "the killed first attempt of train"
    # MLflow holds every run, each tagged with its SLURM job; GPU rules got their GPU
    mlflow.set_tracking_uri(f"sqlite:///{work / 'results/mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["micro"])
    assert runs["tags.stage"].value_counts().to_dict() == {"profile": 1, "threshold": 1, "train": 1, "evaluate": 2,
                                                          "report": 1}
    assert runs["tags.slurm_job_id"].notna().all()
    train_ids = set(runs.loc[runs["tags.stage"] == "train", "tags.slurm_job_id"])
    assert set(runs["tags.slurm_job_id"]) - train_ids <= completed, "each run comes from a completed sbatch job"
    assert train_ids <= failed, "train runs were opened by the killed attempt and resumed into"
    gpu_stages = runs[runs["tags.stage"].isin(["profile", "train", "evaluate"])]
    assert (gpu_stages["tags.slurm_gpus"] == "1").all()
    cpu_stages = runs[runs["tags.stage"].isin(["threshold", "report"])]
    assert cpu_stages["tags.slurm_gpus"].isna().all()
    assert (runs["status"] == "FINISHED").all()
    # the profile answers a dry run by name after `egrpo install-profile`
    home = tmp_path / "home"
    link = subprocess.run([sys.executable, "-m", "egrpo", "install-profile"], capture_output=True, text=True,
                          env=dict(real_slurm_env(), XDG_CONFIG_HOME=str(home)))
    assert link.returncode == 0 and (home / "snakemake/slurm/config.yaml").is_file()
    dry = subprocess.run([sys.executable, "-m", "snakemake", "--profile", "slurm", "-n"], cwd=work,
                         capture_output=True, text=True, env=dict(real_slurm_env(), XDG_CONFIG_HOME=str(home)))
    assert dry.returncode == 0, dry.stderr[-2000:]
