"""Test isolation: nothing outside the temp tree is read or written (HOME, caches, MLflow)."""
import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_HOME = Path(tempfile.mkdtemp(prefix="egrpo-test-home-"))
for var, sub in {"HOME": "home", "XDG_CACHE_HOME": "cache", "HF_HOME": "hf", "TORCH_HOME": "torch",
                 "MPLCONFIGDIR": "mpl", "XDG_CONFIG_HOME": "config"}.items():
    (_HOME / sub).mkdir(parents=True, exist_ok=True)
    os.environ[var] = str(_HOME / sub)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.setdefault("OMP_NUM_THREADS", "1")


def copy_workflow(dest: Path) -> Path:
    """A runnable copy of the workflow (Snakefile, rules, configs, profiles, test data) in dest."""
    dest.mkdir(parents=True, exist_ok=True)
    for item in ("Snakefile", "workflow", "config", "profiles", "tests/data"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / item)
    return dest


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
    """The micro tiny FLUX, built once per session."""
    from egrpo.config import validate
    from egrpo.model import run_build_model

    tmp = tmp_path_factory.mktemp("model")
    cfg = validate(micro_config(tmp))
    return run_build_model(cfg, tmp / "model")


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_HOME, ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_inherited_tracking_uri():
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI: don't let one test's store leak into the
    next, nor into a module-scoped fixture (set up before this one) that starts Snakemake."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    yield
    os.environ.pop("MLFLOW_TRACKING_URI", None)
