"""The whole micro DAG on every registered model family (model.family), through Snakemake."""
import json

import pytest
from snakemake_runs import copy_workflow, job_counts, snakemake_local

from egrpo.models import FAMILIES, family_by_pipeline


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_micro_dag_runs_on_every_family(name, tmp_path_factory, request):
    """The DAG up to the trained policy's evaluation (build the tiny model, profile, threshold,
    train, evaluate) with model.family set. FLUX is the suite's shared micro DAG (with the base's
    evaluation and the report, which read only files and are the same for every family); every
    other family runs it here with E-GRPO alone (the algorithms x families matrix is above)."""
    if name == "flux":
        work = request.getfixturevalue("finished_micro_dag")
    else:
        work = copy_workflow(tmp_path_factory.mktemp(f"dag-{name}"))
        override = f'model={{"family": "{name}"}}'
        run = snakemake_local(work, "results/micro/eval/egrpo-color-seed0/summary.json", "--config", override,
                              "algorithms=[egrpo]", 'sampling={"schedule": "pipeline"}')
        assert run.returncode == 0, run.stderr[-4000:]
        assert job_counts(run.stdout + run.stderr) == {"build_model": 1, "profile": 1, "threshold": 1, "train": 1,
                                                       "evaluate": 1}
    res = work / "results/micro"
    index = json.loads((res / "model/model_index.json").read_text())
    assert family_by_pipeline(index["_class_name"]) == name
    plan = json.loads((res / "plan/plan.json").read_text())
    assert plan["plan"] and len(plan["sigmas"]) == 5
    metrics = json.loads((res / "train/egrpo/color/seed0/metrics.json").read_text())
    assert metrics["nfe_total"] > 0
    summary = json.loads((res / "eval/egrpo-color-seed0/summary.json").read_text())
    assert summary["num_prompts"] > 0 and 0 <= summary["metrics"]["prompt_color"]["mean"] <= 1
    meta = json.loads((res / "train/egrpo/color/seed0/checkpoint/meta.json").read_text())
    assert meta["family"] == name and meta["lora_targets"]
