"""The whole DAG through Snakemake on the micro config, in a temporary copy of the workflow."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from snakemake_runs import copy_workflow, job_counts, snakemake_local

pytestmark = pytest.mark.slow
RES = Path("results/micro")


def snakemake(workdir, *args):
    return snakemake_local(workdir, *args)


@pytest.fixture
def workflow(finished_micro_dag):
    """The micro DAG, run once to completion for the whole test run (read-only here)."""
    return finished_micro_dag


def test_every_output_exists(workflow):
    r = workflow / RES
    for path in ["model/model_index.json", "profile/entropy.csv", "profile/entropy.png", "plan/plan.json",
                 "report/table.csv", "report/table.md", "report/entropy_plan.png", "report/train_reward_vs_nfe.png"]:
        assert (r / path).is_file(), path
    for algorithm in ("egrpo", "dancegrpo"):
        run = r / f"train/{algorithm}/color/seed0"
        metrics = json.loads((run / "metrics.json").read_text())
        for key in ("algorithm", "reward_setting", "seed", "iterations", "nfe_total", "nfe_per_prompt", "wall_s",
                    "final_train_reward", "mlflow_run_id"):
            assert key in metrics, key
        assert (run / "train_log.csv").is_file() and (run / "checkpoint/meta.json").is_file()
        for f in ("scores.csv", "summary.json", "grid.png"):
            assert (r / f"eval/{algorithm}-color-seed0/{f}").is_file()
    assert (r / "eval/base/summary.json").is_file()
    # MLflow's artifacts (metrics.json, train_log.csv of each train run) beside its store, not in ./mlruns
    assert not (workflow / "mlruns").exists()
    for algorithm in ("egrpo", "dancegrpo"):
        run_id = json.loads((r / f"train/{algorithm}/color/seed0/metrics.json").read_text())["mlflow_run_id"]
        assert (workflow / "results/mlartifacts" / run_id / "artifacts/train_log.csv").is_file()
    plan = json.loads((r / "plan/plan.json").read_text())
    assert set(plan) >= {"tau", "rule", "plan"} and all(set(e) == {"start", "length", "entropy"} for e in plan["plan"])
    table = (r / "report/table.md").read_text()
    assert "egrpo" in table and "dancegrpo" in table and "base" in table
    assert not (r / "resume").exists() or not any((r / "resume").rglob("state.json"))


def test_one_mlflow_run_per_job(workflow):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{workflow / 'results/mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["micro"])
    stages = runs["tags.stage"].value_counts().to_dict()
    assert stages == {"profile": 1, "threshold": 1, "train": 2, "evaluate": 3, "report": 1}
    train = runs[runs["tags.stage"] == "train"]
    assert set(train["tags.algorithm"]) == {"egrpo", "dancegrpo"}
    assert set(train["tags.reward_setting"]) == {"color"} and set(train["tags.seed"]) == {"0"}
    assert (train["status"] == "FINISHED").all()
    assert train["metrics.nfe_total"].notna().all() and train["params.sampling.num_steps"].eq("4").all()
    ids = {json.loads((workflow / RES / f"train/{a}/color/seed0/metrics.json").read_text())["mlflow_run_id"]
           for a in ("egrpo", "dancegrpo")}
    assert ids == set(train["run_id"])


def test_report_html_and_compare_agree_with_the_table(micro_dag_copy):
    workflow = micro_dag_copy
    import pandas as pd

    r = workflow / RES / "report"
    for f in ("reward_std_per_step.png", "train_reward_vs_wall.png", "image_grid.png", "health.png"):
        assert (r / f).is_file(), f
    md = (r / "table.md").read_text()
    assert "Δ% vs dancegrpo" in md and "## Paired comparisons (same prompts, same noise)" in md
    html = subprocess.run([sys.executable, "-m", "snakemake", "--configfile", "tests/data/micro.yaml",
                           "--report", "report.html"], cwd=workflow, capture_output=True, text=True)
    assert html.returncode == 0, html.stderr[-3000:]
    page = (workflow / "report.html").read_text()
    assert "table.csv" in page and "entropy_plan.png" in page and len(page) > 50_000
    config = sorted((workflow / RES / "configs").glob("*.yaml"))[-1]
    out = workflow / "compare.csv"
    compare = subprocess.run([sys.executable, "-m", "egrpo", "compare", "--config", str(config), "--out", str(out)],
                             cwd=workflow, capture_output=True, text=True)
    assert compare.returncode == 0, compare.stderr[-3000:]
    assert "egrpo" in compare.stdout and "dancegrpo" in compare.stdout
    from_mlflow = pd.read_csv(out).set_index(["algorithm", "reward_setting"]).sort_index()
    from_files = pd.read_csv(r / "table.csv").set_index(["algorithm", "reward_setting"]).sort_index()
    pd.testing.assert_frame_equal(from_mlflow[from_files.columns], from_files, check_dtype=False, atol=1e-6)
    # a config with one of the two algorithms: its table keeps to it and says what it left out
    import yaml
    cfg = yaml.safe_load(config.read_text())
    cfg["algorithms"] = ["egrpo"]
    (workflow / "egrpo-only.yaml").write_text(yaml.safe_dump(cfg))
    only = subprocess.run([sys.executable, "-m", "egrpo", "compare", "--config", "egrpo-only.yaml"], cwd=workflow,
                          capture_output=True, text=True)
    assert only.returncode == 0, only.stderr[-3000:]
    assert "| egrpo |" in only.stdout and "| dancegrpo |" not in only.stdout
    assert "left out 1 run(s) outside the config's algorithms, reward settings and seeds: dancegrpo-color-seed0" \
        in only.stderr
    # another variant (a different learning rate): none of these trained policies is its (the base model,
    # which training does not touch, is), and side by side with the config that made them, the differing
    # key is named
    cfg = yaml.safe_load(config.read_text())
    cfg["train"]["learning_rate"] = 0.5
    (workflow / "variant.yaml").write_text(yaml.safe_dump(cfg))
    variant = subprocess.run([sys.executable, "-m", "egrpo", "compare", "--config", "variant.yaml"], cwd=workflow,
                             capture_output=True, text=True)
    assert variant.returncode == 0 and "| base |" in variant.stdout, variant.stderr[-2000:]
    assert "| egrpo |" not in variant.stdout and "| dancegrpo |" not in variant.stdout
    both = subprocess.run([sys.executable, "-m", "egrpo", "compare", str(config), "variant.yaml"], cwd=workflow,
                          capture_output=True, text=True)
    assert "train.learning_rate: " in both.stdout and " -> 0.5" in both.stdout, both.stdout[-2000:]


def test_noop_rerun_and_forced_stage_rerun(micro_dag_copy):
    workflow = micro_dag_copy
    again = snakemake(workflow, "-n")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    dance = workflow / RES / "train/dancegrpo/color/seed0/metrics.json"
    egrpo = workflow / RES / "train/egrpo/color/seed0/metrics.json"
    before = dance.stat().st_mtime_ns, egrpo.stat().st_mtime_ns
    forced = snakemake(workflow, "-R", "threshold")
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert job_counts(forced.stdout + forced.stderr) == {"threshold": 1, "train": 1, "evaluate": 1, "report": 1}
    assert dance.stat().st_mtime_ns == before[0], "baselines do not depend on the plan"
    assert egrpo.stat().st_mtime_ns != before[1]


def test_bad_config_override_is_one_line(micro_dag_copy):
    workflow = micro_dag_copy
    bad = snakemake(workflow, "-n", "--config", "sampling={\"group_size\": 1}")
    assert bad.returncode != 0
    errors = [l for l in bad.stderr.splitlines() if "config error" in l]
    assert errors == ["egrpo: config error: sampling.group_size: 1 is less than the minimum of 2"]
    assert "Traceback" not in bad.stderr
    empty = snakemake(workflow, "-n", "--config", "reward_settings={}")   # would silently keep the file's settings
    assert empty.returncode != 0
    errors = [l for l in empty.stderr.splitlines() if "config error" in l]
    assert len(errors) == 1 and errors[0].startswith("egrpo: config error: --config reward_settings={}: an empty mapping")
    # a missing input stops a real run in onstart, before any job; a dry run resolves and says so
    missing = ["--config", 'model={"source": "pretrained", "path": "/nowhere/FLUX.1-dev"}']
    dry = snakemake(workflow, "-n", *missing)
    assert dry.returncode == 0 and "egrpo: a run would stop here: model.path: /nowhere/FLUX.1-dev does not exist" in dry.stderr
    run = snakemake(workflow, *missing)
    assert run.returncode != 0
    lines = [l for l in run.stderr.splitlines() if l.startswith("egrpo: missing input")]
    assert lines == ["egrpo: missing input: model.path: /nowhere/FLUX.1-dev does not exist; set model.path to the "
                     "FLUX pipeline directory",
                     "egrpo: missing input: prompts.train: tests/data/prompts_train.txt holds the tiny world's captions, "
                     "not prompts for /nowhere/FLUX.1-dev; write the paper's prompt files with `egrpo prompts` "
                     "(docs/paper-data.md)"], run.stderr[-2000:]
    assert "egrpo: 2 missing input(s), listed above; no job was started" in run.stderr
    assert "rule build_model" not in run.stderr and "rule profile" not in run.stderr   # no job started


def job_resources(output: str) -> dict:
    """rule name -> its resources line of a dry run (the first job of each rule)."""
    found, rule = {}, None
    for line in output.splitlines():
        if line.startswith("rule ") or line.startswith("localrule "):
            rule = line.split()[1].rstrip(":")
        elif line.strip().startswith("resources:") and rule and rule not in found:
            found[rule] = dict(item.split("=", 1) for item in line.split(":", 1)[1].strip().split(", ") if "=" in item)
    return found


def test_set_resources_on_the_command_line_keeps_the_rest(micro_dag_copy):
    """Job sizes live in the config's `resources:`; --set-resources changes one value of one rule
    and keeps every other value, also under the SLURM profile (whose own block it would replace)."""
    workflow = micro_dag_copy
    plain = job_resources(snakemake(workflow, "-n", "--forceall", "--profile", "profiles/slurm").stdout)
    assert plain["train"]["mem_mb"] == "4000" and plain["train"]["gpu"] == "0" and plain["train"]["runtime"] == "240"
    assert plain["profile"]["slurm_partition"] == "debug"                     # the profile's side
    dry = snakemake(workflow, "-n", "--forceall", "--profile", "profiles/slurm", "--set-resources", "train:gpu=4")
    changed = job_resources(dry.stdout)
    assert changed["train"] == {**plain["train"], "gpu": "4"}
    assert changed["profile"] == plain["profile"] and changed["evaluate"] == plain["evaluate"]


def test_claims_dag_pretrains_then_writes_claims(tmp_path):
    """model.source: pretrain puts the pretrain rule in the DAG (its tinyclip is the reward), and
    claims.enabled adds the claims stage: claims.md / claims.json with every claim's numbers. The
    claims need no evaluation: asked for alone they run pretrain, profile, threshold, train, claims
    (the report path is the micro DAG's, above)."""
    work = copy_workflow(tmp_path / "wf")
    dry = snakemake_local(work, "-n", config="tests/data/micro_claims.yaml")
    assert job_counts(dry.stdout + dry.stderr) == {"pretrain": 1, "profile": 1, "threshold": 1, "train": 4,
                                                   "evaluate": 5, "report": 1, "claims": 1}, dry.stderr[-3000:]
    run = snakemake_local(work, "results/micro_claims/report/claims.json", config="tests/data/micro_claims.yaml")
    assert run.returncode == 0, run.stderr[-4000:]
    counts = job_counts(run.stdout + run.stderr)
    assert counts == {"pretrain": 1, "profile": 1, "threshold": 1, "train": 4, "claims": 1}
    r = work / "results/micro_claims"
    assert (r / "pretrain/tinyworld/model_index.json").is_file() and (r / "pretrain/tinyclip/config.json").is_file()
    claims = json.loads((r / "report/claims.json").read_text())
    for key in ("spread_falls_with_step", "reward_std_tracks_entropy", "merged_steps_raise_spread",
                "egrpo_beats_dancegrpo", "nfe_fraction_to_match_dancegrpo", "final_heldout", "base_model"):
        assert key in claims, key
    assert claims["merged_steps_raise_spread"]["pairs"] == 3  # steps 0, 1, 2 with k = 2 (N = 4)
    assert sorted(claims["final_heldout"]["egrpo"]["per_seed"]) == ["0", "1"]
    assert "nfe_fraction_to_match_dancegrpo" in (r / "report/claims.md").read_text()
    assert "median_ci95" in claims["nfe_fraction_to_match_dancegrpo"]
    table = {(row["algorithm"], row["forward_equivalents"]) for row in claims["heldout_curve_table"]}
    assert {a for a, _ in table} == {"egrpo", "dancegrpo"} and ("egrpo", 0.0) in table
    assert "Held-out alignment along the budget" in (r / "report/claims.md").read_text()
    assert (r / "report/claims.png").stat().st_size > 10_000
    merged = (r / "profile/entropy_merged.csv").read_text().splitlines()
    assert merged[0].startswith("length,step") and len(merged) == 4


def test_default_config_reads_the_shipped_models_as_plain_inputs(tmp_path):
    """The default DAG never rebuilds the shipped weights: no build_model / pretrain job, whatever
    the file times of a fresh clone."""
    import os
    import shutil

    from helpers import ROOT

    if not (ROOT / "models/compworld").is_dir():
        pytest.skip("shipped weights not present")
    work = copy_workflow(tmp_path / "wf")
    shutil.copytree(ROOT / "models", work / "models")
    for f in (work / "models").rglob("*"):  # newer than anything: would trigger a rule that made them
        os.utime(f, (2e9, 2e9))
    dry = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "2"], cwd=work,
                         capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr[-3000:]
    counts = job_counts(dry.stdout + dry.stderr)
    assert "build_model" not in counts and "pretrain" not in counts and counts["train"] >= 2


@pytest.mark.parametrize("configfile", ["config/paper.yaml", "config/sd35.yaml", "config/qwenimage.yaml"])
def test_paper_scale_configs_resolve_and_stop_in_the_preflight(tmp_path, configfile):
    """Without any weights or data: a dry run resolves the whole DAG and says what a run would miss;
    a real run stops before any job with one line per missing file (the model, every reward's
    weights and tokenizer, the prompt files)."""
    from egrpo.config import input_problems, load

    work = copy_workflow(tmp_path / "wf")
    problems = input_problems(load(work / configfile))
    assert len(problems) >= 5
    dry = snakemake_local(work, "-n", config=configfile)
    assert dry.returncode == 0, dry.stderr[-3000:]
    counts = job_counts(dry.stdout + dry.stderr)
    assert counts["train"] >= 2 and counts["evaluate"] >= 3 and counts["profile"] == 1
    assert [l for l in dry.stderr.splitlines() if l.startswith("egrpo: a run would stop here")] == \
        [f"egrpo: a run would stop here: {p}" for p in problems]
    # the cost before the allocation: GPU-hours where the family's rate is measured (egrpo cost)
    cost = [l for l in dry.stderr.splitlines() if l.startswith("egrpo: cost: ~")]
    assert len(cost) == (configfile == "config/paper.yaml"), dry.stderr[-2000:]
    run = snakemake_local(work, config=configfile)
    assert run.returncode != 0
    assert [l for l in run.stderr.splitlines() if l.startswith("egrpo: missing input: ")] == \
        [f"egrpo: missing input: {p}" for p in problems]
    assert "rule profile" not in run.stderr and "rule train" not in run.stderr
    assert not list((work / "results").glob("*/train")), "no job was started"


def test_resources_are_checked_and_a_dry_run_writes_nothing(tmp_path):
    """A typo in resources.<rule> is one line naming the allowed keys; --set-resources train:gpu with a
    job over several nodes is refused in one line (GPUs are per node there); `snakemake -n` leaves no
    file under results/."""
    from snakemake_runs import copy_workflow

    work = copy_workflow(tmp_path / "wf")
    typo = snakemake(work, "-n", "--config", 'resources={"train": {"gpus": 8}}')
    errors = [l for l in typo.stderr.splitlines() if "config error" in l]
    assert typo.returncode != 0 and len(errors) == 1, typo.stderr[-2000:]
    assert errors[0].startswith("egrpo: config error: resources.train: unknown key ('gpus' was unexpected); allowed: ")
    assert " gpu, " in errors[0] and "slurm_partition" in errors[0]
    dry = snakemake(work, "-n")
    assert dry.returncode == 0 and not (work / "results").exists(), sorted((work / "results").rglob("*"))[:5]
    nodes = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", "config/paper.yaml",
                            "config/paper-dancegrpo-2nodes.yaml", "--set-resources", "train:gpu=4"],
                           cwd=work, capture_output=True, text=True, timeout=300)
    errors = [l for l in nodes.stderr.splitlines() if "config error" in l]
    assert nodes.returncode != 0 and len(errors) == 1, nodes.stderr[-2000:]
    assert errors[0].startswith("egrpo: config error: --set-resources train:gpu=4 with resources.train.nodes = 2: "
                                "GPUs are per node there")
