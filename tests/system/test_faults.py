"""Faults on the local executor: killed jobs, --keep-going, Ctrl-C; concurrent MLflow writers.

Each fault test starts from a copy of the finished micro DAG and changes the train config
(`LONGER`), so that exactly the train jobs and what depends on them run again: the faults hit what
they are about without rebuilding the model, the profile and the plan every time."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from snakemake_runs import job_counts, snakemake_local

pytestmark = pytest.mark.slow
RES = Path("results/micro")
LONGER = ["--config", 'train={"iterations": 3, "checkpoint_every": 1}']


def snakemake(work, *args, env=None):
    return snakemake_local(work, *args, env=env, timeout=600)


def test_killed_jobs_keep_going_then_resume(micro_dag_copy):
    work = micro_dag_copy
    res = work / RES
    shutil.rmtree(res / "eval/base")   # an independent job that must still run while the train jobs die
    killing = dict(os.environ, EGRPO_FAULT="kill-after-iteration:2")
    first = snakemake(work, *LONGER, "--keep-going", "--retries", "0", env=killing)
    assert first.returncode != 0
    assert job_counts(first.stdout + first.stderr) == {"train": 2, "evaluate": 3, "report": 1}
    # the independent job finished; the killed ones left no output that looks complete
    assert (res / "eval/base/summary.json").is_file()
    for algorithm in ("egrpo", "dancegrpo"):
        run = res / f"train/{algorithm}/color/seed0"
        assert not (run / "metrics.json").exists() and not (run / "checkpoint").exists()
        state = json.loads((res / f"resume/{algorithm}/color/seed0/state/state.json").read_text())
        assert state["iteration"] == 2, "the resume state survives Snakemake's cleanup of failed outputs"
    second = snakemake(work, *LONGER, "--until", "train")
    assert second.returncode == 0, second.stderr[-3000:]
    counts = job_counts(second.stdout + second.stderr)
    assert counts == {"train": 2}, counts     # the finished jobs (base evaluation, plan, model) are not redone
    for algorithm in ("egrpo", "dancegrpo"):
        metrics = json.loads((res / f"train/{algorithm}/color/seed0/metrics.json").read_text())
        assert metrics["resumed_from_iteration"] == 2 and metrics["iterations"] == 3
    assert not list((res / "resume").rglob("state.json")), "resume state cleared after success"


def test_snakemake_retry_resumes_into_same_result_as_unbroken(micro_dag_copy, tmp_path):
    """DanceGRPO (random steps per sample and iteration: the harder resume) through Snakemake's
    retry; tests/unit/test_train.py does the same for E-GRPO with the CLI alone."""
    broken = micro_dag_copy
    unbroken = Path(shutil.copytree(broken, tmp_path / "unbroken", symlinks=True))
    env = dict(os.environ, EGRPO_FAULT="kill-after-iteration:1")
    target = str(RES / "train/dancegrpo/color/seed0/metrics.json")
    retried = snakemake(broken, target, *LONGER, "--retries", "1", env=env)
    assert retried.returncode == 0, retried.stderr[-3000:]
    assert job_counts(retried.stdout + retried.stderr) == {"train": 1}
    assert snakemake(unbroken, target, *LONGER).returncode == 0
    volatile = {"wall_s", "mlflow_run_id", "resumed_from_iteration"}
    for algorithm in ("dancegrpo",):
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


def test_ctrl_c_then_continue(micro_dag_copy):
    """Ctrl-C while a training job runs, then the same command again: it finishes without redoing
    the finished jobs. Driven by conditions, not sleeps: the signal goes once the first train job
    has started (its log is rewritten), while the second (one core: one job at a time) cannot have;
    the child gets SIGINT's default action back even when the suite runs with SIGINT ignored."""
    work = micro_dag_copy
    targets = [RES / f"train/{a}/color/seed0/metrics.json" for a in ("egrpo", "dancegrpo")]
    train_logs = work / RES / "logs/train"
    logs_before = {p: p.stat().st_mtime_ns for p in train_logs.rglob("*.log")}
    command = ["--until", "train", *LONGER]
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", *command, "--cores", "1", "--configfile",
                             "tests/data/micro.yaml"], cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    started = lambda: any(not p.exists() or p.stat().st_mtime_ns != t for p, t in logs_before.items())
    wait_for(lambda: started() or proc.poll() is not None, "a train job to start")
    assert proc.poll() is None, "the workflow ended before a train job started:\n" + proc.stdout.read()[-3000:]
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode != 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    done = [json.loads((work / t).read_text())["iterations"] == 3 for t in targets]
    assert not all(done), "the interrupt stopped the workflow before both train jobs ran"
    again = snakemake(work, *command)
    assert again.returncode == 0, again.stderr[-3000:]
    counts = job_counts(again.stdout + again.stderr)
    # what is left: the train jobs not done (one the interrupt caught at its very end counts as
    # incomplete and runs again); nothing before them (model, profile, plan) runs again
    assert set(counts) == {"train"} and counts["train"] >= done.count(False), counts
    assert all(json.loads((work / t).read_text())["iterations"] == 3 for t in targets)


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


def test_sigterm_ends_a_train_job_in_one_line_and_its_mlflow_run_killed(tmp_path, tiny_model_dir):
    """A scheduler's cancel (SIGTERM) unwinds like Ctrl-C: exit 143, one line, the MLflow run KILLED
    (not left RUNNING), the resume state of the last finished iteration kept for the next job."""
    import mlflow
    import yaml
    from helpers import plan_file, train_cfg

    cfg = train_cfg(tmp_path, iterations=50, checkpoint_every=1)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, EGRPO_FAULT="slow-iteration:1")
    proc = subprocess.Popen([sys.executable, "-m", "egrpo", "train", "--config", str(tmp_path / "cfg.yaml"), "--model",
                             str(tiny_model_dir), "--plan", plan_file(tmp_path), "--algorithm", "egrpo",
                             "--reward-setting", "color", "--seed", "0", "--out", str(tmp_path / "o"),
                             "--resume-dir", str(tmp_path / "r")], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "r/state/state.json").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert err.strip().splitlines()[-1] == "egrpo train: terminated (SIGTERM)" and "Traceback" not in err
    mlflow.set_tracking_uri(cfg["mlflow"]["tracking_uri"])
    runs = mlflow.search_runs(experiment_names=[cfg["experiment"]])
    assert list(runs["status"]) == ["KILLED"]
    assert (tmp_path / "r/state/state.json").is_file() and not (tmp_path / "o/metrics.json").exists()
