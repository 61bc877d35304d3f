"""Running Snakemake from the tests: copies of the workflow, the local executor, reading what it did
from its output, and the finished micro DAG that many tests start from. No side effects on import:
tests/build_shared.py (a background process) imports it too."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
MICRO_JOBS = {"build_model": 1, "profile": 1, "threshold": 1, "train": 2, "evaluate": 3, "report": 1}


def copy_workflow(dest: Path) -> Path:
    """A runnable copy of the workflow (Snakefile, rules, configs, profiles, test data) in dest."""
    dest.mkdir(parents=True, exist_ok=True)
    for item in ("Snakefile", "workflow", "config", "profiles", "tests/data"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / item)
    return dest


def build_micro_dag(path: Path) -> None:
    """A copy of the workflow in `path` with the micro DAG run to completion (raises with
    Snakemake's stderr otherwise)."""
    work = copy_workflow(path)
    dry = snakemake_local(work, "-n")
    counts = job_counts(dry.stdout + dry.stderr)
    if dry.returncode != 0 or counts != MICRO_JOBS:
        raise RuntimeError(f"micro DAG dry run: jobs {counts}, expected {MICRO_JOBS}\n{dry.stderr[-3000:]}")
    run = snakemake_local(work)
    if run.returncode != 0:
        raise RuntimeError(f"micro DAG run failed\n{run.stderr[-4000:]}")


def snakemake_local(workdir, *args, config="tests/data/micro.yaml", env=None, cores=2, timeout=900):
    """`python -m snakemake args... --cores N --configfile <config>` in workdir (output captured);
    args first, so that a target is not read as a second config file."""
    return subprocess.run([sys.executable, "-m", "snakemake", *args, "--cores", str(cores), "--configfile", config],
                          cwd=workdir, capture_output=True, text=True, env=env, timeout=timeout)


def job_counts(output: str) -> dict:
    """rule -> number of jobs, from the job table Snakemake prints before it runs (or dry-runs)."""
    counts, in_table = {}, False
    for line in output.splitlines():
        if line.startswith("job ") and "count" in line:
            in_table = True
            continue
        if in_table:
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                counts[parts[0]] = int(parts[1])
            elif line.strip() and not line.startswith("-"):
                in_table = False
    counts.pop("all", None)
    counts.pop("total", None)
    return counts


def real_slurm_env(env: dict | None = None) -> dict:
    """The environment with SLURM's real client tools (for tests that run a controller)."""
    env = dict(os.environ if env is None else env)
    # every shim: under xdist the controller's conftest put its own on the PATH the workers inherit
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not Path(p).name.startswith("egrpo-no-slurm-controller-"))
    return env
