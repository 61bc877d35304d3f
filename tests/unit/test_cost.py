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
    cfg["train"]["heldout"].update(every=1, metrics=["prompt_color"], num_prompts=2, images_per_prompt=1)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"plan": [{"start": s, "length": k} for s, k in plan_without_profile(cfg)]}))
    metrics = run_train(cfg, algorithm, "color", 0, str(tiny_model_dir), str(plan) if algorithm == "egrpo" else None,
                        tmp_path / "o", tmp_path / "r")
    predicted = train_cost(cfg, algorithm, None)
    assert predicted.iterations == 2
    assert predicted.forward_equivalents == metrics["forward_equivalents"]
    assert predicted.rollout_calls == metrics["nfe_rollout_total"] and predicted.train_calls == metrics["nfe_train_total"]
    # the held-out curve (base + after each of the 2 iterations), apart from the budget
    assert predicted.heldout_calls == metrics["nfe_heldout_total"] == 3 * 1 * cfg["sampling"]["num_steps"]   # 1 eval prompt


@pytest.mark.parametrize("config", ["paper.yaml", "sd35.yaml", "qwenimage.yaml"])
def test_paper_configs_hold_out_metrics_they_do_not_train_on(config):
    """Every paper-scale config draws a held-out curve of its trained reward and of evaluation
    metrics no reward setting trains on (the health rules read them), and its cost says so."""
    cfg = load(ROOT / "config" / config)
    trained = {r for weights in cfg["reward_settings"].values() for r in weights}
    held = set(cfg["train"]["heldout"]["metrics"])
    assert trained <= held and held - trained, held
    jobs, _ = estimate(cfg)
    assert all(job.heldout_calls > 0 and "held-out curve" in job.note for job, _, _ in jobs if job.job.startswith("train"))


def test_paper_config_costs_gpu_hours_and_unmeasured_families_say_so(capsys):
    jobs, source = estimate(load(ROOT / "config/paper.yaml"))
    assert "benchmarks/flux_gpu.py" in source and "H100" in source
    train = next(j for j, count, gpus in jobs if j.job == "train egrpo")
    assert train.iterations == 300 and train.gpu_seconds > 0
    evaluate = next(j for j, count, gpus in jobs if j.job.startswith("evaluate"))
    assert evaluate.rollout_calls == (400 + 3200) * 50 and "counted as the published 400" in evaluate.note
    _, source = estimate(load(ROOT / "config/sd35.yaml"))
    assert source.startswith("sd3: no measured rate")


def test_overlays_merge_key_by_key_and_the_runtime_check_counts_the_retries(capsys):
    """`egrpo cost --config paper.yaml paper-1gpu.yaml` reads the overlay as Snakemake merges it; a job
    whose estimate needs more runtimes than the retries allow is named (the SLURM preflight refuses
    it), one that fits is not; a tiny model has no paper-scale rate."""
    from egrpo.cost import attempts_needed, runtime_problems
    from egrpo.stages.cost import add_arguments, run
    import argparse

    cfg = load(ROOT / "config/paper.yaml", ROOT / "config/paper-1gpu.yaml")
    assert cfg["experiment"] == "paper_1gpu" and cfg["train"]["finetune"] == "lora"
    assert cfg["train"]["iterations"] == load(ROOT / "config/paper.yaml")["train"]["iterations"]   # kept from the base
    jobs, _ = estimate(cfg)
    train = next(j for j, _, _ in jobs if j.job == "train egrpo")
    hours = train.gpu_seconds / 3600   # one GPU
    assert attempts_needed(train, 1, hours * 60 * 1.01) == 1 and attempts_needed(train, 1, hours * 60 / 2.5) == 3
    assert attempts_needed(train, 0, 600) is None
    cfg["resources"]["train"]["runtime"] = hours * 60 / 2.5       # 3 jobs of its runtime
    assert runtime_problems(cfg, attempts=3) == []
    [line] = [p for p in runtime_problems(cfg, attempts=2) if p.startswith("train egrpo")]
    assert "3 jobs of its" in line and "retries allow 2" in line
    assert any("needs retries >= 2" in p for p in runtime_problems(cfg, attempts=None))

    p = argparse.ArgumentParser()
    add_arguments(p)
    run(p.parse_args(["--config", str(ROOT / "config/paper.yaml"), str(ROOT / "config/paper-1gpu.yaml"),
                      "--retries", "0"]), None)
    out = capsys.readouterr().out
    row = next(l for l in out.splitlines() if l.startswith("train egrpo"))
    assert "NO: 2 jobs of its runtime, the retries allow 1" in row     # 91.7 h on one GPU against 72 h
    run(p.parse_args(["--config", str(ROOT / "config/config.yaml")]), None)
    assert "rates: a tiny model" in capsys.readouterr().out


def test_the_rates_are_the_measurements_benchmarks_results_records():
    """One source of truth: every rate of egrpo/data/rates.yaml is a per-sample figure of the
    flux_gpu.py table in benchmarks/RESULTS.md (time per call of G samples / G)."""
    import re

    import yaml

    from egrpo.runtime.paths import DATA

    results = (ROOT / "benchmarks/RESULTS.md").read_text()
    section = results[results.index("`flux_gpu.py` on one NVIDIA H100"):]
    samples = int(re.search(r"G = (\d+) samples per call", section).group(1))
    measured = {}
    for px, mode, ms in re.findall(r"\| (\d+) px[^|]*\| (forward|forward\+backward), eager \| ([\d.]+) ms", section):
        measured[(int(px), mode)] = float(ms) / 1000 / samples
    rates = [r for r in yaml.safe_load((DATA / "rates.yaml").read_text()) if r["family"] == "flux"]
    assert rates
    for r in rates:
        assert r["forward_s"] == pytest.approx(measured[(r["resolution"], "forward")], abs=1e-4)
        assert r["forward_backward_s"] == pytest.approx(measured[(r["resolution"], "forward+backward")], abs=1e-4)
