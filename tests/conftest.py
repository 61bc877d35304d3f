"""Test isolation (nothing outside the temp tree is read or written: HOME, caches, MLflow) and the
suite's speed on two cores.

The README runs the suite with pytest-xdist (`-n 3` on two cores: one worker mostly waits on the
local SLURM). What makes that fast, and what keeps it safe:
- the slowest tests are scheduled first (`pytest_collection_modifyitems`), so that a long test does
  not start last and hold the run while the other worker is idle;
- expensive read-only artefacts (the finished micro DAG, the tiny model) are built once per run and
  shared by every worker (`shared_once`: a file lock under the run's common temp dir); a test that
  changes one works on its own copy;
- tests that share a module fixture that cannot be built twice at once (the local SLURM cluster)
  carry `pytest.mark.xdist_group`, which `--dist loadgroup` keeps on one worker.
"""
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from snakemake_runs import ROOT, build_micro_dag

_HOME = Path(tempfile.mkdtemp(prefix="egrpo-test-home-"))
for var, sub in {"HOME": "home", "XDG_CACHE_HOME": "cache", "HF_HOME": "hf", "TORCH_HOME": "torch",
                 "MPLCONFIGDIR": "mpl", "XDG_CONFIG_HOME": "config"}.items():
    (_HOME / sub).mkdir(parents=True, exist_ok=True)
    os.environ[var] = str(_HOME / sub)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.setdefault("OMP_NUM_THREADS", "1")
# the ~150 processes the suite starts compile egrpo's modules once, not each (a machine may set it)
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

# Snakemake's slurm executor plugin runs `scontrol show config` whenever Snakemake starts (any
# executor). Where SLURM's client is installed but no controller runs (this machine after
# tools/slurm_local.sh down), scontrol retries for ~9 s before it fails: every local Snakemake call
# of the suite would wait that long. Tests of the local executor get an `scontrol` that fails at
# once; test_slurm.py, which starts a controller, takes it off PATH (`real_slurm_env`).
_SHIM = _HOME / "no-slurm-controller"
_SHIM.mkdir()
(_SHIM / "scontrol").write_text("#!/bin/sh\n# egrpo tests: no SLURM controller for local-executor runs\nexit 1\n")
(_SHIM / "scontrol").chmod(0o755)
os.environ["PATH"] = f"{_SHIM}{os.pathsep}{os.environ.get('PATH', '')}"


def real_slurm_env(env: dict | None = None) -> dict:
    """The environment with SLURM's real client tools (for tests that run a controller)."""
    env = dict(os.environ if env is None else env)
    # every shim: under xdist the controller's conftest put its own on the PATH the workers inherit
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if Path(p).name != _SHIM.name)
    return env


# ---- scheduling: slowest first ------------------------------------------------------------------
# Measured on the 2-core machine (seconds, 2026-12-04); only the order matters. Tests not listed run
# after these, in file order.
SLOW_FIRST = [
    "test_slurm.py::test_tiny_dag_through_the_slurm_profile",          # mostly waiting on SLURM: first
    "test_slurm.py::test_preflight_stops_a_job_no_node_can_run_before_submitting",
    "test_dag.py::test_claims_dag_pretrains_then_writes_claims",
    "test_families.py::test_micro_dag_runs_on_every_family",
    "test_sharding.py::test_fsdp_trains_what_data_parallel_trains_and_resumes",
    "test_train.py::test_sigkill_then_resume_matches_unbroken_run",
    "test_cluster.py::test_two_nodes_end_at_the_weights_of_one_node_with_as_many_processes",
    "test_cluster.py::test_a_peer_that_stops_answering_ends_the_others_within_the_timeout",
    "test_benchmarks.py::test_memory_benchmark_one_iteration",
    # these start from the shared micro DAG, built in the background meanwhile: after the ones above
    "test_faults.py::test_killed_jobs_keep_going_then_resume",
    "test_faults.py::test_ctrl_c_then_continue",
    "test_faults.py::test_snakemake_retry_resumes_into_same_result_as_unbroken",
    "test_dag.py::test_noop_rerun_and_forced_stage_rerun",
    "test_dag.py::test_every_output_exists",
    "test_families.py::test_micro_dag_runs_on_every_family[flux]",     # the shared micro DAG is FLUX's
    "test_benchmarks.py::test_gpu_e2e_smoke_shards_full_fine_tuning_over_two_processes",
    "test_benchmarks.py::test_gpu_e2e_smoke_runs_every_algorithm_through_the_trainer",
]


def pytest_collection_modifyitems(config, items):
    rank = {name: n for n, name in enumerate(SLOW_FIRST)}

    def key(indexed):
        index, item = indexed
        file = Path(item.nodeid.split("::")[0]).name
        named = rank.get(f"{file}::{item.name}", rank.get(f"{file}::{item.originalname}", len(rank)))
        return (named, index)

    items[:] = [item for _, item in sorted(enumerate(items), key=key)]


# ---- artefacts built once per run, shared by the workers ----------------------------------------
# name -> the test files that use it. Under xdist the controller starts its build in the background
# (tests/build_shared.py) as soon as the workers have collected a test that uses it, so that it is
# built while the workers run other tests; a worker that needs it before it is done waits.
BACKGROUND = {"micro-dag": ("test_dag.py", "test_faults.py")}


def _run_root(tmp_path_factory) -> Path:
    """A folder shared by every xdist worker of this run (the run's own base temp without xdist)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    """(xdist controller) Start the background builds that the collected tests need, once."""
    import subprocess
    import sys

    config = node.config
    if hasattr(config, "_egrpo_builds"):
        return
    config._egrpo_builds = []
    root = config._tmp_path_factory.getbasetemp()
    files = {Path(nodeid.split("::")[0]).name for nodeid in ids}
    for name, users in BACKGROUND.items():
        if files & set(users):
            (root / f"{name}.started").write_text("")
            with open(root / f"{name}.log", "w") as log:
                config._egrpo_builds.append(subprocess.Popen(
                    [sys.executable, str(Path(__file__).parent / "build_shared.py"), name, str(root / name)],
                    cwd=Path(__file__).parent, stdout=log, stderr=subprocess.STDOUT))


def pytest_unconfigure(config):
    for proc in getattr(config, "_egrpo_builds", []):   # a run that ends (or is interrupted) first
        if proc.poll() is None:
            proc.kill()


def shared_once(tmp_path_factory, name: str, build) -> Path:
    """<run root>/<name>: built in the background by the controller (`BACKGROUND`), or made by
    `build(path)` by the first worker that asks while the others wait for it (a file lock). A build
    that failed fails every test that needs it, with its message."""
    import time

    from filelock import FileLock

    root = _run_root(tmp_path_factory)
    path, failed, done = root / name, root / f"{name}.failed", root / f"{name}.done"
    if (root / f"{name}.started").exists():
        deadline = time.monotonic() + 1800
        while not done.exists() and not failed.exists():
            if time.monotonic() > deadline:
                pytest.fail(f"shared fixture {name}: the background build did not finish (log: {root / name}.log)")
            time.sleep(0.5)
    with FileLock(str(root / f"{name}.lock")):
        if failed.exists():
            pytest.fail(f"shared fixture {name} failed:\n{failed.read_text()}")
        if not done.exists():
            try:
                build(path)
            except BaseException as error:
                failed.write_text(f"{type(error).__name__}: {error}"[-4000:])
                raise
            done.write_text("")
    return path


def micro_config(tmp_path: Path, **overrides) -> dict:
    """The micro config as a dict, with prompt paths absolute and MLflow in tmp_path."""
    import yaml

    cfg = yaml.safe_load((ROOT / "tests/data/micro.yaml").read_text())
    for key in ("train", "eval"):
        cfg["prompts"][key] = str(ROOT / cfg["prompts"][key])
    cfg["mlflow"] = {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}
    for key, value in overrides.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    return cfg


@pytest.fixture
def micro(tmp_path):
    from egrpo.config import validate

    return validate(micro_config(tmp_path))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """The micro tiny FLUX, built once per run (read-only: copy it to change it)."""
    from egrpo.config import validate
    from egrpo.stages.build_model import run_build_model

    def build(path):
        run_build_model(validate(micro_config(path.parent)), path)

    return shared_once(tmp_path_factory, "tiny-model", build)


@pytest.fixture(scope="session")
def finished_micro_dag(tmp_path_factory):
    """A copy of the workflow in which the micro DAG ran to completion, once per run (read-only:
    tests that run Snakemake again take `micro_dag_copy`)."""
    return shared_once(tmp_path_factory, "micro-dag", build_micro_dag)


@pytest.fixture
def micro_dag_copy(finished_micro_dag, tmp_path):
    """The finished micro DAG in this test's own folder (file times kept: nothing is out of date)."""
    return Path(shutil.copytree(finished_micro_dag, tmp_path / "wf", symlinks=True))


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_HOME, ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_inherited_tracking_uri():
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI: don't let one test's store leak into the
    next, nor into a module-scoped fixture (set up before this one) that starts Snakemake."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    yield
    os.environ.pop("MLFLOW_TRACKING_URI", None)
