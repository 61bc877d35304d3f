"""Isolation for every test: nothing outside the run's temporary tree is read or written (HOME, the
caches, MLflow's store), and library threads stay at one per process (the suite runs several
processes on two cores). The tiers add their fixtures: tests/unit/conftest.py, tests/system/conftest.py."""
import os
import shutil
import tempfile
from pathlib import Path

_HOME = Path(tempfile.mkdtemp(prefix="egrpo-test-home-"))
for var, sub in {"HOME": "home", "XDG_CACHE_HOME": "cache", "HF_HOME": "hf", "TORCH_HOME": "torch",
                 "MPLCONFIGDIR": "mpl", "XDG_CONFIG_HOME": "config"}.items():
    (_HOME / sub).mkdir(parents=True, exist_ok=True)
    os.environ[var] = str(_HOME / sub)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.setdefault("OMP_NUM_THREADS", "1")
# the processes the suite starts compile egrpo's modules once, not each (a machine may set it)
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_HOME, ignore_errors=True)


# the system tier's scheduling and leak check (tests/system/scheduling.py), for every run of the suite
pytest_plugins = ["system.scheduling"]
