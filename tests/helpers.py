"""What both tiers of the suite share: the repository root, the micro config, artefacts built once
per run and shared by the xdist workers, and the fixtures made of them. A tier's conftest imports the
fixtures it uses from here."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VOLATILE = {"wall_s", "mlflow_run_id", "resumed_from_iteration"}   # metrics that differ between equal runs


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


def train_cfg(tmp_path, **train):
    """The micro config for training tests: 3 iterations of 2 prompts, a checkpoint each."""
    from egrpo.config import validate

    return validate(micro_config(tmp_path, train={"iterations": 3, "prompts_per_iteration": 2,
                                                   "checkpoint_every": 1, "learning_rate": 1e-2, **train}))


def plan_file(tmp_path) -> str:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"plan": [{"start": 0, "length": 1}, {"start": 1, "length": 2}]}))
    return str(path)


def run_root(tmp_path_factory) -> Path:
    """A folder shared by every xdist worker of this run (the run's own base temp without xdist)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def shared_once(tmp_path_factory, name: str, build) -> Path:
    """<run root>/<name>: made by `build(path)` by the first worker that asks while the others wait
    for it (a file lock), or by a background build that tests/system/scheduling.py started. A build
    that failed fails every test that needs it, with its message."""
    from filelock import FileLock

    root = run_root(tmp_path_factory)
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


@pytest.fixture(autouse=True)
def _no_inherited_tracking_uri():
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI: don't let one test's store leak into the
    next, nor into a module-scoped fixture (set up before this one) that starts Snakemake; nor a
    working directory a test changed (the next test on that worker reads config/ relative to it)."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    cwd = os.getcwd()
    yield
    os.chdir(cwd)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
