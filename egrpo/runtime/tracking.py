"""MLflow: one store per workflow, one experiment per config, one run per job.

The tracking URI is the user's MLFLOW_TRACKING_URI if set, else `mlflow.tracking_uri` of the
config (default sqlite:///results/mlflow.db, relative to the working directory). The store and the
experiment are created once (`egrpo mlflow-init`, run by the Snakefile's onstart) because several
processes creating one SQLite store at once crash. A SQLite store keeps its artifacts beside it
(results/mlartifacts/ by default), not in MLflow's default ./mlruns of whatever directory a job
runs in; a tracking server decides where its artifacts go.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)


def tracking_uri(cfg: dict) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg["mlflow"]["tracking_uri"]


def mlflow_for(cfg: dict):
    """The mlflow module, pointed at the config's tracking URI (its SQLite folder made)."""
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    import mlflow

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    return mlflow


def artifact_location(cfg: dict) -> str | None:
    """Where a new experiment keeps its artifacts: mlartifacts/ beside a SQLite store; None (the
    server's choice) for other stores."""
    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()
    return None


def _experiment(mlflow, cfg: dict):
    """The config's experiment, created with its artifact location if it does not exist yet."""
    name = cfg["experiment"]
    if mlflow.get_experiment_by_name(name) is None:
        from mlflow.exceptions import MlflowException
        try:
            mlflow.create_experiment(name, artifact_location=artifact_location(cfg))
        except MlflowException:   # created meanwhile by another job
            pass
    return mlflow.set_experiment(name)


def init_store(cfg: dict) -> str:
    """Create the store and the experiment if needed; return the experiment id."""
    return _experiment(mlflow_for(cfg), cfg).experiment_id


# the columns of MLflow's SQL schema that hold an artifact location (MLflow 3)
ARTIFACT_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"), ("logged_models", "artifact_location"))


def relocate_artifacts(cfg: dict) -> list[tuple[str, str]]:
    """After a workflow directory moved: point the SQLite store's experiments and runs at the
    mlartifacts/ beside the store again. MLflow records absolute artifact locations and has no API to
    change one, so the store's own columns are rewritten (old prefix -> new, nothing else). Only
    locations this module created (a file URI ending in /mlartifacts) move; returns (old, new) pairs."""
    uri, new = tracking_uri(cfg), artifact_location(cfg)
    if new is None or not Path(uri[len("sqlite:///"):]).is_file():
        return []
    moved = []
    with contextlib.closing(sqlite3.connect(uri[len("sqlite:///"):])) as db, db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        olds = {loc for (loc,) in db.execute("SELECT DISTINCT artifact_location FROM experiments")
                if loc and loc.startswith("file://") and loc.endswith("/mlartifacts") and loc != new}
        for old in sorted(olds):
            for table, column in ARTIFACT_COLUMNS:
                if table in tables:
                    db.execute(f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                               f"WHERE {column} = ? OR substr({column}, 1, ?) = ?",
                               (new, len(old) + 1, old, len(old) + 1, old + "/"))
            moved.append((old, new))
    return moved


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = str(value)[:6000]
    return out


def scheduler_tags() -> dict[str, str]:
    """Where the job ran: the SLURM job id and the GPUs SLURM allocated to it, host name."""
    import socket

    tags = {"host": socket.gethostname()}
    for tag, var in (("slurm_job_id", "SLURM_JOB_ID"), ("slurm_gpus", "SLURM_GPUS_ON_NODE"),
                     ("slurm_partition", "SLURM_JOB_PARTITION")):
        if os.environ.get(var):
            tags[tag] = os.environ[var]
    return tags


def origin(cfg: dict, out: str | os.PathLike | None) -> str:
    """"dag" for outputs under the experiment's results/<experiment>/ (where the workflow writes),
    "by-hand" for a stage run by hand into another folder (e.g. --out /tmp/plan.json)."""
    if out is None:
        return "dag"
    results = (Path("results") / cfg["experiment"]).resolve()
    return "dag" if Path(out).resolve().is_relative_to(results) else "by-hand"


@contextmanager
def stage_run(cfg: dict, stage: str, tags: dict | None = None, run_id: str | None = None, run_name: str | None = None,
              out: str | os.PathLike | None = None):
    """Start (or, with run_id, resume) the MLflow run of one job; yields the mlflow module and run.
    A run whose outputs go outside results/<experiment>/ (`out`) is tagged origin=by-hand, named so,
    and supersedes nothing: the workflow's runs stay the current ones."""
    mlflow = mlflow_for(cfg)
    _experiment(mlflow, cfg)
    where = origin(cfg, out)
    all_tags = {"stage": stage, "origin": where, **{k: str(v) for k, v in (tags or {}).items()}, **scheduler_tags()}
    name = (run_name or stage) + ("-by-hand" if where == "by-hand" else "")
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else name) as run:   # a resumed run keeps its name
        if run_id is None:
            mlflow.set_tags(all_tags)
            mlflow.log_params(flatten(cfg))
            if where == "dag":
                mark_superseded(mlflow, run, stage)
        try:
            yield mlflow, run
        except KeyboardInterrupt:   # Ctrl-C or SIGTERM (egrpo.errors.Terminated): KILLED, not left RUNNING
            mlflow.end_run(status="KILLED")
            raise


def mark_superseded(mlflow, run, stage: str) -> list[str]:
    """A rerun of a job (e.g. after `snakemake -R threshold`) starts a new run with the same name:
    tag the earlier ones `superseded_by=<new run id>`, so that a query for the current results adds
    `and tags.superseded_by IS NULL` (egrpo compare keeps the latest run per job anyway)."""
    name = run.info.run_name.replace("'", "\\'")
    earlier = mlflow.search_runs(
        experiment_ids=[run.info.experiment_id], output_format="list",
        filter_string=f"attributes.run_name = '{name}' and tags.stage = '{stage}' and tags.superseded_by IS NULL")
    ids = [r.info.run_id for r in earlier if r.info.run_id != run.info.run_id]
    client = mlflow.MlflowClient()
    for run_id in ids:
        client.set_tag(run_id, "superseded_by", run.info.run_id)
    return ids
