"""The system tier: the DAG through Snakemake, SLURM, several processes, faults (subprocesses).

Snakemake's slurm executor plugin runs `scontrol show config` whenever Snakemake starts (any
executor). Where SLURM's client is installed but no controller runs (this machine after
tools/slurm_local.sh down), scontrol retries for ~9 s before it fails: every local Snakemake call of
the suite would wait that long. Tests of the local executor get an `scontrol` that fails at once;
test_slurm.py, which starts a controller, takes it off PATH (`real_slurm_env`)."""
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from helpers import _no_inherited_tracking_uri, micro, shared_once, tiny_model_dir  # noqa: F401 (fixtures)
from snakemake_runs import build_micro_dag

_SHIM = Path(tempfile.mkdtemp(prefix="egrpo-no-slurm-controller-"))
(_SHIM / "scontrol").write_text("#!/bin/sh\n# egrpo tests: no SLURM controller for local-executor runs\nexit 1\n")
(_SHIM / "scontrol").chmod(0o755)
os.environ["PATH"] = f"{_SHIM}{os.pathsep}{os.environ.get('PATH', '')}"


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
    shutil.rmtree(_SHIM, ignore_errors=True)
