"""Cluster scale on the CPU: a train job over two nodes (emulated: two node launchers with the
environment a 2-node SLURM step gives, gloo), a peer that stops answering, out of memory, and the
stop before a time limit. The same on the real local SLURM: tests/system/test_slurm.py."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from helpers import VOLATILE, plan_file, train_cfg

pytestmark = pytest.mark.slow

TRAIN_ARGS = ["--algorithm", "egrpo", "--reward-setting", "color", "--seed", "0"]
# columns that measure time, not what was computed
TIMING = ("wall_s", "rollout_s", "scoring_s", "training_s", "iteration_s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fake_scontrol(tmp_path):
    """`scontrol` as a 2-node allocation n[1-2] answers it: the node names do not resolve as hosts,
    their NodeAddr is this machine."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "scontrol"
    script.write_text("#!/bin/sh\n"
                      'if [ "$1 $2" = "show hostnames" ]; then printf "n1\\nn2\\n"; exit 0; fi\n'
                      'if [ "$1 $2" = "show node" ]; then echo "NodeName=$3 Arch=x86_64 NodeAddr=127.0.0.1 '
                      'NodeHostName=$3 State=ALLOCATED"; exit 0; fi\n'
                      "exit 1\n")
    script.chmod(0o755)
    return bin_dir


def node_env(tmp_path, node: int, port: int, **extra) -> dict:
    """What `srun --nodes 2 --ntasks-per-node 1` gives the task on node `node` of job 4242."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "WORLD_SIZE", "RANK", "LOCAL_RANK"))}
    env.update(PATH=f"{fake_scontrol(tmp_path)}:{env['PATH']}", OMP_NUM_THREADS="1", SLURM_JOB_ID="4242",
               SLURM_JOB_NODELIST="n[1-2]", SLURM_NNODES="2", SLURM_JOB_NUM_NODES="2", SLURM_NODEID=str(node),
               SLURM_PROCID=str(node), SLURM_NTASKS="2", EGRPO_MASTER_PORT=str(port), **extra)
    return env


def write_config(tmp_path, cfg) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def egrpo_train(config, model, plan, out, resume, *extra):
    return [sys.executable, "-m", "egrpo", "train", "--config", config, "--model", str(model), "--plan", plan,
            *TRAIN_ARGS, "--out", str(out), "--resume-dir", str(resume), *extra]


def start_two_nodes(tmp_path, config, model, plan, out, env_extra=None, node_extra=None):
    port = free_port()
    procs = []
    for node in range(2):
        env = node_env(tmp_path, node, port, **(env_extra or {}), **((node_extra or {}).get(node, {})))
        procs.append(subprocess.Popen(egrpo_train(config, model, plan, out, tmp_path / "resume2", "--nodes", "2",
                                                  "--gpus", "0"),
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      start_new_session=True))
    return procs


def test_two_nodes_end_at_the_weights_of_one_node_with_as_many_processes(tmp_path, tiny_model_dir):
    import mlflow

    cfg = train_cfg(tmp_path, iterations=2, prompts_per_iteration=2)  # over both processes
    config, plan = write_config(tmp_path, cfg), plan_file(tmp_path)
    # one node, two processes (what `egrpo train --gpus 2` runs on GPUs; torchrun's gloo on the CPU)
    one = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          *egrpo_train(config, tiny_model_dir, plan, tmp_path / "one", tmp_path / "resume1")[1:]],
                         env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    log = pd.read_csv(tmp_path / "one/train_log.csv")
    g = cfg["sampling"]["group_size"]
    assert list(log["nfe_rollout"]) == [2 * (2 + g * 4 + g * 3)] * 2, "two processes, one prompt each"
    assert (log["optimizer_steps"] == 2).all() and (log["ratio_abs_dev_first"] < 1e-5).all()
    assert (log["nfe_rollout"] == log["nfe_rollout_expected"]).all()
    assert json.loads((tmp_path / "one/metrics.json").read_text())["nfe_per_prompt"] == log["nfe_rollout"].iloc[0] / 2 + 2

    # two nodes, one process each: two node launchers meet at the first node's address
    procs = start_two_nodes(tmp_path, config, tiny_model_dir, plan, tmp_path / "two")
    results = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    assert "node 1 of 2: 1 process(es), rendezvous 127.0.0.1:" in results[1][1]
    a, b = (load_file(str(tmp_path / d / "checkpoint/lora.safetensors")) for d in ("one", "two"))
    assert a.keys() == b.keys()
    moved = max(float(a[k].abs().max()) for k in a if "lora_B" in k)   # B starts at zero
    assert moved > 0
    for k in a:
        assert float((a[k] - b[k]).abs().max()) <= 1e-6 * moved, k
    two_log = pd.read_csv(tmp_path / "two/train_log.csv")
    same = [c for c in log.columns if not c.endswith(TIMING)]
    pd.testing.assert_frame_equal(log[same], two_log[same])
    mlflow.set_tracking_uri(cfg["mlflow"]["tracking_uri"])
    runs = mlflow.search_runs(experiment_names=["micro"])
    assert sorted(runs["tags.processes"]) == ["2", "2"]


def test_a_peer_that_stops_answering_ends_the_others_within_the_timeout(tmp_path, tiny_model_dir):
    cfg = train_cfg(tmp_path, iterations=3, prompts_per_iteration=2, peer_timeout_s=5)
    config, plan = write_config(tmp_path, cfg), plan_file(tmp_path)
    # node 1's process hangs after its first iteration (a stuck GPU, a hung file system)
    procs = start_two_nodes(tmp_path, config, tiny_model_dir, plan, tmp_path / "o",
                            node_extra={1: {"EGRPO_FAULT": "hang-after-iteration:1"}})
    try:
        _, err = procs[0].communicate(timeout=240)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    assert procs[0].returncode not in (0, None)
    errors = [line for line in err.splitlines() if line.startswith("egrpo train: error:")]
    assert len(errors) == 1, err[-3000:]
    assert "train.peer_timeout_s = 5" in errors[0] and "process 0 of 2" in errors[0], errors[0]
    assert "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == errors[0], "the error is the job's last line"
    assert not (tmp_path / "o/metrics.json").exists()


def error_lines(capsys) -> list[str]:
    """The lines of stderr that report an error (progress bars and log lines aside); the last line is one."""
    lines = [l for l in capsys.readouterr().err.strip().splitlines() if l.strip()]
    errors = [l for l in lines if "error:" in l or "Traceback" in l]
    assert not errors or lines[-1] == errors[-1], lines[-5:]
    return errors


def test_out_of_memory_is_one_line_and_not_run_again_unchanged(tmp_path, tiny_model_dir, monkeypatch, capsys):
    from egrpo.cli import main

    monkeypatch.chdir(tmp_path)
    cfg = train_cfg(tmp_path, iterations=1)
    config, plan = write_config(tmp_path, cfg), plan_file(tmp_path)
    argv = ["train", "--config", config, "--model", str(tiny_model_dir), "--plan", plan, *TRAIN_ARGS,
            "--out", str(tmp_path / "o"), "--resume-dir", str(tmp_path / "r")]
    monkeypatch.setenv("EGRPO_FAULT", "oom:train:training")
    assert main(argv) == 2
    err = error_lines(capsys)
    assert len(err) == 1 and err[0].startswith("egrpo train: error: out of memory"), err
    assert "stage train, phase training" in err[0] and "train.gradient_checkpointing" in err[0]
    # Snakemake's retry of the same command with the same config: refused at once, nothing runs
    monkeypatch.delenv("EGRPO_FAULT")
    assert main(argv) == 2
    again = error_lines(capsys)
    assert len(again) == 1 and "not run again unchanged" in again[0] and "phase training" in again[0], again
    assert not (tmp_path / "o/metrics.json").exists()
    # a changed knob is a new command: it runs
    cfg["train"]["gradient_checkpointing"] = True
    write_config(tmp_path, cfg)
    assert main(argv) == 0, capsys.readouterr().err
    assert (tmp_path / "o/metrics.json").is_file()


@pytest.mark.parametrize("phase", ["rollout", "decode", "scoring"])
def test_out_of_memory_names_each_phase_and_its_knob(tmp_path, tiny_model_dir, monkeypatch, capsys, phase):
    from egrpo.cli import main
    from egrpo.runtime.device import MEMORY_KNOBS

    monkeypatch.chdir(tmp_path)
    config, plan = write_config(tmp_path, train_cfg(tmp_path, iterations=1)), plan_file(tmp_path)
    monkeypatch.setenv("EGRPO_FAULT", f"oom:train:{phase}")
    assert main(["train", "--config", config, "--model", str(tiny_model_dir), "--plan", plan, *TRAIN_ARGS,
                 "--out", str(tmp_path / "o"), "--resume-dir", str(tmp_path / "r")]) == 2
    err = error_lines(capsys)
    assert len(err) == 1 and f"phase {phase}:" in err[0] and MEMORY_KNOBS[phase] in err[0], err


def test_a_stop_before_the_time_limit_saves_and_the_next_job_continues_identically(tmp_path, tiny_model_dir,
                                                                                  monkeypatch):
    from egrpo.errors import TimeLimitStop
    from egrpo.stages.train import run_train

    cfg = train_cfg(tmp_path, iterations=3)
    plan = plan_file(tmp_path)
    whole = run_train(cfg, "egrpo", "color", 0, str(tiny_model_dir), plan, tmp_path / "whole", tmp_path / "r0")
    # the first job: SLURM's end time is near (within the margin): it stops after one iteration
    monkeypatch.setenv("EGRPO_JOB_END_TIME", str(time.time() + 60))
    cfg_limited = dict(cfg, train=dict(cfg["train"], time_limit_margin_s=3600))
    with pytest.raises(TimeLimitStop, match="stopped after iteration 1 of 3"):
        run_train(cfg_limited, "egrpo", "color", 0, str(tiny_model_dir), plan, tmp_path / "o", tmp_path / "r")
    assert not (tmp_path / "o/metrics.json").exists()
    # the second job: a USR1 (a hand-written sbatch's --signal) after its first iteration stops it too
    monkeypatch.delenv("EGRPO_JOB_END_TIME")
    from egrpo.train import trainer as train_module

    original = train_module.Trainer.iteration

    def signalled(self, it):
        row = original(self, it)
        os.kill(os.getpid(), signal.SIGUSR1)
        return row

    monkeypatch.setattr(train_module.Trainer, "iteration", signalled)
    with pytest.raises(TimeLimitStop, match="SIGUSR1 received; stopped after iteration 2 of 3"):
        run_train(cfg, "egrpo", "color", 0, str(tiny_model_dir), plan, tmp_path / "o", tmp_path / "r")
    monkeypatch.setattr(train_module.Trainer, "iteration", original)
    # the third job finishes: the same run as one uninterrupted job
    resumed = run_train(cfg, "egrpo", "color", 0, str(tiny_model_dir), plan, tmp_path / "o", tmp_path / "r")
    assert resumed["time_limit_stops"] == 2 and whole["time_limit_stops"] == 0
    skip = VOLATILE | {"time_limit_stops"}
    assert {k: v for k, v in resumed.items() if k not in skip} == {k: v for k, v in whole.items() if k not in skip}
    a, b = (pd.read_csv(tmp_path / d / "train_log.csv") for d in ("whole", "o"))
    same = [c for c in a.columns if not c.endswith(TIMING)]
    pd.testing.assert_frame_equal(a[same], b[same])
    wa, wb = (load_file(str(tmp_path / d / "checkpoint/lora.safetensors")) for d in ("whole", "o"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
