"""MLflow store kept by egrpo/runtime/tracking.py: a workflow directory that moves keeps its artifacts."""
import os
import shutil

from egrpo.runtime.tracking import artifact_location, init_store, mlflow_for, relocate_artifacts


def test_a_moved_workflow_directory_reads_and_writes_its_artifacts_in_the_new_place(tmp_path, monkeypatch):
    """MLflow records absolute artifact locations: after `mv old new`, mlflow-init points the store's
    experiment and runs at new/results/mlartifacts; an artifact logged before the move is read there,
    one logged after it lands there, and the old directory is not recreated."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = {"experiment": "moved", "mlflow": {"tracking_uri": "sqlite:///results/mlflow.db"}}
    old = tmp_path / "old"
    old.mkdir()
    monkeypatch.chdir(old)
    # before the move, by its absolute path: MLflow caches one store per URI in a process, and the
    # cached one would keep the moved file open (a new process, as `egrpo mlflow-init` is, does not)
    before = {**cfg, "mlflow": {"tracking_uri": f"sqlite:///{old}/results/mlflow.db"}}
    mlflow = mlflow_for(before)
    init_store(before)
    with mlflow.start_run() as run:
        mlflow.log_text("before the move", "note.txt")
    assert relocate_artifacts(cfg) == [] and relocate_artifacts(before) == []   # nothing moved yet
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)   # mlflow.set_tracking_uri exports it
    shutil.move(old, tmp_path / "new")
    new = tmp_path / "new"
    monkeypatch.chdir(new)
    mlflow = mlflow_for(cfg)
    client = mlflow.MlflowClient()
    assert client.get_run(run.info.run_id).info.artifact_uri.startswith(old.as_uri())   # still the old place
    moved = relocate_artifacts(cfg)
    assert moved == [((old / "results" / "mlartifacts").as_uri(), artifact_location(cfg))]
    assert artifact_location(cfg) == (new / "results" / "mlartifacts").as_uri()
    assert mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/note.txt") == "before the move"
    init_store(cfg)
    with mlflow.start_run() as later:
        mlflow.log_text("after the move", "note.txt")
    assert (new / "results/mlartifacts" / later.info.run_id / "artifacts/note.txt").read_text() == "after the move"
    assert not old.exists()
    assert relocate_artifacts(cfg) == []          # idempotent
    assert os.getcwd() == str(new)
