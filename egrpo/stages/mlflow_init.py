"""Stage `mlflow-init`: create the MLflow store and the config's experiment once, before parallel
jobs start (the Snakefile's onstart runs it). A workflow directory that was moved (or copied) keeps
working: the SQLite store's artifact locations are pointed at the mlartifacts/ beside it again."""
from __future__ import annotations

from egrpo.runtime.tracking import init_store, relocate_artifacts, tracking_uri

NAME = "mlflow-init"
HELP = "Create the MLflow store and experiment once, before parallel jobs start."
QUIET = False   # no model libraries are imported: nothing to quiet


def add_arguments(p) -> None:
    pass


def run(args, cfg) -> None:
    for old, new in relocate_artifacts(cfg):
        print(f"mlflow: the store moved: artifacts recorded under {old} now read from {new}")
    print(f"mlflow: experiment {cfg['experiment']} ({init_store(cfg)}) in {tracking_uri(cfg)}")
