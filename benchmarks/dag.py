"""Snakemake overhead: `snakemake -n` on a fresh tree, a no-op rerun, and per-job start-up cost.

    python benchmarks/dag.py

In a temporary copy of the workflow: times `snakemake -n` on the default config (fresh tree), runs
the micro test config to completion, checks that a second run schedules 0 jobs, and compares each
job's start-up (Python imports + model load, measured by `python -X importtime`-free timing of a
bare `egrpo` call that loads the model) with the work it then does. RESULT = seconds of
`snakemake -n` on the default config.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine  # noqa: E402


def timed(cmd, cwd) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    return time.perf_counter() - start, result


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="egrpo-dag-"))
    for item in ("Snakefile", "workflow", "config", "profiles", "tests/data"):
        (shutil.copytree if (ROOT / item).is_dir() else shutil.copy)(ROOT / item, work / item)
    snake = [sys.executable, "-m", "snakemake"]
    t_dry = min(timed(snake + ["-n"], work)[0] for _ in range(3))
    micro = ["--configfile", "tests/data/micro.yaml", "--cores", "2"]
    t_run, run = timed(snake + micro, work)
    assert run.returncode == 0, run.stderr[-2000:]
    t_noop, noop = timed(snake + micro + ["-n"], work)
    assert "Nothing to be done" in noop.stdout + noop.stderr, "a complete run must leave nothing to do"
    # start-up of one job: imports + config + model load, without any sampling
    startup_code = ("from egrpo.config import load; from egrpo.models import FlowModel, load_pipeline; "
                    "import egrpo.train.trainer, egrpo.runtime.tracking, mlflow; "
                    "cfg = load(sys.argv[1]); FlowModel(load_pipeline(cfg, sys.argv[2]), cfg)")
    config = sorted((work / "results/micro/configs").glob("*.yaml"))[-1]
    t_start = min(timed([sys.executable, "-c", "import sys; " + startup_code, str(config),
                         str(work / "results/micro/model")], work)[0] for _ in range(2))
    jobs = {}
    for tsv in (work / "results/micro/benchmarks").rglob("*.tsv"):
        lines = tsv.read_text().splitlines()
        jobs[str(tsv.relative_to(work / "results/micro/benchmarks"))] = float(lines[1].split("\t")[0])
    train_work = [json.loads(p.read_text())["wall_s"] for p in (work / "results/micro/train").rglob("metrics.json")]
    print(f"machine: {machine()}")
    print(f"snakemake -n, default config, fresh tree: {t_dry:.2f} s")
    print(f"micro DAG, {len(jobs)} jobs: {t_run:.1f} s; no-op rerun check: {t_noop:.2f} s, 0 jobs")
    print(f"one job's start-up (imports + model load): {t_start:.2f} s")
    print(f"micro job wall times (Snakemake benchmark): mean {sum(jobs.values()) / len(jobs):.2f} s, "
          f"train loop work {sum(train_work) / len(train_work):.3f} s")
    print(f"RESULT snakemake_dry_run_s {t_dry:.2f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
