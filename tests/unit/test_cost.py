"""`egrpo cost`: the call counts it predicts from the config alone are the ones a run makes, and the
GPU-hours come from the measured rates or say there are none."""
import pytest
from helpers import ROOT, train_cfg

from egrpo.config import load
from egrpo.cost import estimate, plan_without_profile, train_cost


@pytest.mark.parametrize("algorithm", ["egrpo", "flowgrpo"])
def test_predicted_forward_equivalents_are_what_a_run_computes(tmp_path, tiny_model_dir, algorithm):
    import json

    from egrpo.stages.train import run_train

    cfg = train_cfg(tmp_path, iterations=2)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"plan": [{"start": s, "length": k} for s, k in plan_without_profile(cfg)]}))
    metrics = run_train(cfg, algorithm, "color", 0, str(tiny_model_dir), str(plan) if algorithm == "egrpo" else None,
                        tmp_path / "o", tmp_path / "r")
    predicted = train_cost(cfg, algorithm, None)
    assert predicted.iterations == 2
    assert predicted.forward_equivalents == metrics["forward_equivalents"]
    assert predicted.rollout_calls == metrics["nfe_rollout_total"] and predicted.train_calls == metrics["nfe_train_total"]


def test_paper_config_costs_gpu_hours_and_unmeasured_families_say_so(capsys):
    jobs, source = estimate(load(ROOT / "config/paper.yaml"))
    assert "benchmarks/flux_gpu.py" in source and "H100" in source
    train = next(j for j, count, gpus in jobs if j.job == "train egrpo")
    assert train.iterations == 300 and train.gpu_seconds > 0
    evaluate = next(j for j, count, gpus in jobs if j.job.startswith("evaluate"))
    assert evaluate.rollout_calls == (400 + 3200) * 50 and "counted as the published 400" in evaluate.note
    _, source = estimate(load(ROOT / "config/sd35.yaml"))
    assert source.startswith("sd3: no measured rate")
