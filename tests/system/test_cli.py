"""The CLI: --help for every stage, one-line errors without a traceback for user mistakes."""
import subprocess
import sys

import yaml

from helpers import micro_config

STAGES = ["build-model", "profile", "threshold", "train", "evaluate", "report", "mlflow-init"]


def egrpo(*args):
    return subprocess.run([sys.executable, "-m", "egrpo", *args], capture_output=True, text=True)


def test_every_stage_has_help():
    for stage in STAGES:
        result = egrpo(stage, "--help")
        assert result.returncode == 0 and "--config" in result.stdout, stage


def test_version_and_help_of_the_helper_commands():
    from importlib.metadata import version

    result = egrpo("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"egrpo {version('egrpo')}"
    assert "which original it reproduces" in egrpo("rewards", "--help").stdout
    assert "~/.config/snakemake/<name>" in egrpo("install-profile", "--help").stdout


def test_rewards_lists_the_registry():
    result = egrpo("rewards")
    assert result.returncode == 0
    assert "prompt_color" in result.stdout and "jpeg_compressibility" in result.stdout and "needs:" in result.stdout


def one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = [l for l in result.stderr.splitlines() if "error" in l]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_bad_config_is_one_line(tmp_path):
    cfg = micro_config(tmp_path)
    cfg["sampling"]["eta"] = -1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    one_line_error(egrpo("threshold", "--config", str(path), "--out", str(tmp_path / "p.json")), "sampling.eta")


def test_missing_inputs_are_one_line(tmp_path, tiny_model_dir):
    cfg = micro_config(tmp_path)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    one_line_error(egrpo("profile", "--config", str(path), "--model", str(tmp_path / "missing"),
                         "--out-csv", str(tmp_path / "e.csv"), "--out-png", str(tmp_path / "e.png")), "model.path")
    one_line_error(egrpo("train", "--config", str(path), "--model", str(tiny_model_dir), "--algorithm", "egrpo",
                         "--reward-setting", "color", "--seed", "0", "--out", str(tmp_path / "o"),
                         "--resume-dir", str(tmp_path / "r")), "--plan")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    cfg["prompts"]["eval"] = str(empty)
    path.write_text(yaml.safe_dump(cfg))
    one_line_error(egrpo("evaluate", "--config", str(path), "--model", str(tiny_model_dir), "--name", "base",
                         "--out", str(tmp_path / "ev")), "prompts.eval", "no prompts")
    assert not (tmp_path / "ev" / "summary.json").exists()


def test_unknown_algorithm_and_missing_profile_are_one_line(tmp_path):
    cfg = micro_config(tmp_path)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    one_line_error(egrpo("threshold", "--config", str(path), "--profile", str(tmp_path / "missing.csv"),
                         "--out", str(tmp_path / "p.json")), "--profile", "missing.csv")
    result = egrpo("train", "--config", str(path), "--algorithm", "grpo", "--reward-setting", "color", "--seed", "0",
                   "--out", str(tmp_path / "o"), "--resume-dir", str(tmp_path / "r"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "invalid choice: 'grpo'" in result.stderr and "dancegrpo" in result.stderr


def test_mlflow_runs_are_quiet_where_git_is_missing(tmp_path):
    """A job in a git checkout on a machine without the git executable: MLflow's git lookups stay
    silent once egrpo has quieted the libraries (without that, GitPython prints a screenful)."""
    import os
    import shutil

    repo = tmp_path / "checkout"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    bindir = tmp_path / "bin"                   # an empty PATH: no git (python is called by its full path,
    bindir.mkdir()                              # which keeps the venv: a copy or link elsewhere would lose it)
    probe = repo / "job.py"
    probe.write_text(
        "import sys\n"
        "if sys.argv[1] == 'egrpo':\n"
        "    from egrpo.cli import _quiet_libraries\n"
        "    _quiet_libraries()\n"
        "from egrpo.runtime.tracking import stage_run\n"
        f"cfg = {{'experiment': 'probe', 'mlflow': {{'tracking_uri': 'sqlite:///{tmp_path}/mlflow.db'}}}}\n"
        "with stage_run(cfg, 'probe'):\n"
        "    pass\n")
    env = {k: v for k, v in os.environ.items() if k != "GIT_PYTHON_REFRESH"}
    env["PATH"] = str(bindir)
    assert shutil.which("git", path=env["PATH"]) is None

    def run(mode):
        return subprocess.run([sys.executable, str(probe), mode], cwd=repo, env=env, capture_output=True, text=True)

    quiet = run("egrpo")
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert "git" not in quiet.stderr.lower(), quiet.stderr[-2000:]
    assert "git" in run("bare").stderr.lower()   # the noise this guards against


def test_a_rerun_job_marks_the_runs_it_replaces(tmp_path, monkeypatch):
    import mlflow

    from egrpo.runtime.tracking import stage_run

    cfg = {"experiment": "rerun", "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}}
    ids = {}
    for key, name in (("first", "train egrpo/color/seed0"), ("other", "train egrpo/color/seed1"),
                      ("second", "train egrpo/color/seed0")):
        with stage_run(cfg, "train", run_name=name) as (_, run):
            ids[key] = run.info.run_id
    with stage_run(cfg, "train", run_id=ids["second"]):     # resuming a run is not a rerun
        pass
    runs = mlflow.search_runs(experiment_names=["rerun"]).set_index("run_id")
    assert runs.loc[ids["first"], "tags.superseded_by"] == ids["second"]
    assert runs[["tags.superseded_by"]].drop(ids["first"]).isna().all().all()
    current = mlflow.search_runs(experiment_names=["rerun"], filter_string="tags.superseded_by IS NULL")
    assert set(current["run_id"]) == {ids["other"], ids["second"]}
    # a stage run by hand into another folder: its own tag and name, and the workflow's run stays current
    monkeypatch.chdir(tmp_path)   # results/<experiment>/ is relative to the working directory
    with stage_run(cfg, "train", run_name="train egrpo/color/seed0", out=tmp_path / "elsewhere") as (_, run):
        by_hand = run.info.run_id
    with stage_run(cfg, "train", run_name="train egrpo/color/seed0", out=tmp_path / "results/rerun/train/x") as (_, run):
        dag = run.info.run_id
    runs = mlflow.search_runs(experiment_names=["rerun"]).set_index("run_id")
    assert runs.loc[by_hand, "tags.origin"] == "by-hand" and runs.loc[by_hand, "tags.mlflow.runName"].endswith("-by-hand")
    assert runs.loc[ids["second"], "tags.superseded_by"] == dag, "only the workflow's rerun supersedes"
    assert runs.loc[dag, "tags.origin"] == "dag" and runs[["tags.superseded_by"]].loc[[by_hand, dag]].isna().all().all()


def test_every_subcommand_reports_bad_input_in_one_line(tmp_path):
    cfg = micro_config(tmp_path)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    c, missing = str(path), str(tmp_path / "missing.json")
    cases = {
        "build-model": (["--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "m")], "config file not found"),
        "pretrain": (["--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "p")], "config file not found"),
        "profile": (["--config", c, "--model", str(tmp_path / "missing"), "--out-csv", "e.csv", "--out-png", "e.png"],
                    "model.path"),
        "threshold": (["--config", c, "--profile", missing, "--out", str(tmp_path / "p.json")], "--profile"),
        "train": (["--config", c, "--algorithm", "egrpo", "--reward-setting", "color", "--seed", "0", "--plan", missing,
                   "--out", str(tmp_path / "o"), "--resume-dir", str(tmp_path / "r")], "--plan"),
        "evaluate": (["--config", c, "--checkpoint", str(tmp_path / "nockpt"), "--name", "egrpo-color-seed0",
                      "--out", str(tmp_path / "ev")], "--checkpoint"),
        "report": (["--config", c, "--profile", missing, "--plan", missing, "--eval-summaries", missing,
                    "--out", str(tmp_path / "rep")], "--profile"),
        "claims": (["--config", c, "--profile", missing, "--train-metrics", missing, "--out", str(tmp_path / "cl")],
                   "--profile"),
        "compare": (["--config", c], "no finished runs"),
        "mlflow-init": (["--config", str(tmp_path / "nope.yaml")], "config file not found"),
        "install-profile": (["no_such_profile"], "no profile 'no_such_profile'"),
    }
    for command, (args, fragment) in cases.items():
        one_line_error(egrpo(command, *args), fragment)
