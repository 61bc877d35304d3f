"""Faults on the local executor: killed jobs, --keep-going, Ctrl-C; concurrent MLflow writers."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import copy_workflow
from test_dag import job_counts

pytestmark = pytest.mark.slow
RES = Path("results/micro")
LONGER = ["--config", 'train={"iterations": 3, "checkpoint_every": 1}']


def snakemake(work, *args, env=None):
    return subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "tests/data/micro.yaml",
                           *args], cwd=work, capture_output=True, text=True, env=env, timeout=600)


def test_killed_jobs_keep_going_then_resume(tmp_path):
    work = copy_workflow(tmp_path)
    killing = dict(os.environ, EGRPO_KILL_AFTER_ITERATION="2")
    first = snakemake(work, *LONGER, "--keep-going", "--retries", "0", env=killing)
    assert first.returncode != 0
    res = work / RES
    # independent jobs finished; the killed ones left no output that looks complete
    assert (res / "eval/base/summary.json").is_file() and (res / "plan/plan.json").is_file()
    for algorithm in ("egrpo", "dancegrpo"):
        run = res / f"train/{algorithm}/color/seed0"
        assert not (run / "metrics.json").exists() and not (run / "checkpoint").exists()
        state = json.loads((res / f"resume/{algorithm}/color/seed0/state/state.json").read_text())
        assert state["iteration"] == 2, "the resume state survives Snakemake's cleanup of failed outputs"
    second = snakemake(work, *LONGER)
    assert second.returncode == 0, second.stderr[-3000:]
    counts = job_counts(second.stdout + second.stderr)
    assert counts["train"] == 2 and "profile" not in counts and "threshold" not in counts
    for algorithm in ("egrpo", "dancegrpo"):
        metrics = json.loads((res / f"train/{algorithm}/color/seed0/metrics.json").read_text())
        assert metrics["resumed_from_iteration"] == 2 and metrics["iterations"] == 3
    assert not list((res / "resume").rglob("state.json")), "resume state cleared after success"


def test_snakemake_retry_resumes_into_same_result_as_unbroken(tmp_path):
    broken = copy_workflow(tmp_path / "a")
    unbroken = copy_workflow(tmp_path / "b")
    env = dict(os.environ, EGRPO_KILL_AFTER_ITERATION="1")
    assert snakemake(broken, *LONGER, "--retries", "1", "--until", "train", env=env).returncode == 0
    assert snakemake(unbroken, *LONGER, "--until", "train").returncode == 0
    volatile = {"wall_s", "mlflow_run_id", "resumed_from_iteration"}
    for algorithm in ("egrpo", "dancegrpo"):
        a = json.loads((broken / RES / f"train/{algorithm}/color/seed0/metrics.json").read_text())
        b = json.loads((unbroken / RES / f"train/{algorithm}/color/seed0/metrics.json").read_text())
        assert a["resumed_from_iteration"] == 1 and b["resumed_from_iteration"] is None
        assert {k: v for k, v in a.items() if k not in volatile} == {k: v for k, v in b.items() if k not in volatile}


def wait_for(condition, what: str, timeout: float = 600) -> None:
    """Poll a condition (a file, a process state) with a generous limit; fail saying what never happened."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.2)


def test_ctrl_c_then_continue(tmp_path):
    """Ctrl-C while a training job runs, then the same command again: it finishes without redoing
    the finished jobs. Driven by conditions, not sleeps: the signal goes once a train job has
    started (its log exists), when the report cannot be done yet on any machine speed; the child
    gets SIGINT's default action back even when the suite runs with SIGINT ignored (nohup, &)."""
    work = copy_workflow(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "1", "--configfile", "tests/data/micro.yaml"],
                            cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    train_logs = work / RES / "logs/train"
    wait_for(lambda: train_logs.is_dir() and any(train_logs.rglob("*.log")) or proc.poll() is not None,
             "a train job to start")
    assert proc.poll() is None, "the workflow ended before a train job started:\n" + proc.stdout.read()[-3000:]
    assert not (work / RES / "report/table.csv").exists()
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode != 0, output[-3000:]
    assert not (work / RES / "report/table.csv").exists()
    again = snakemake(work)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (work / RES / "report/table.csv").is_file()
    assert "build_model" not in job_counts(again.stdout + again.stderr)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(params=["sqlite", "server"])
def tracking_uri(request, tmp_path):
    """A SQLite store (created first, as the Snakefile's onstart does), or an `mlflow server` on loopback."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/mlflow.db"
        return
    import urllib.request

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
                               "--default-artifact-root", str(tmp_path / "artifacts"), "--workers", "2"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not start")
        yield uri
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_concurrent_mlflow_writers_lose_nothing(tracking_uri):
    """Six processes log runs, params, tags and metric histories to one store at the same time."""
    import mlflow

    script = f"""
import sys, mlflow
mlflow.set_tracking_uri({tracking_uri!r})
mlflow.set_experiment("concurrent")
k = int(sys.argv[1])
with mlflow.start_run(run_name=f"job{{k}}"):
    mlflow.set_tags({{"stage": "train", "job": str(k)}})
    mlflow.log_params({{"p": k}})
    for step in range(20):
        mlflow.log_metric("m", k * 100 + step, step=step)
"""
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("concurrent")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(k)], env=env) for k in range(6)]
    assert all(p.wait(timeout=180) == 0 for p in procs)
    runs = mlflow.search_runs(experiment_names=["concurrent"])
    assert sorted(runs["tags.job"].astype(int)) == list(range(6))
    assert sorted(runs["params.p"].astype(int)) == list(range(6))
    client = mlflow.tracking.MlflowClient()
    for _, run in runs.iterrows():
        history = client.get_metric_history(run["run_id"], "m")
        k = int(run["tags.job"])
        assert sorted(h.value for h in history) == [k * 100 + s for s in range(20)]
