"""egrpo as users install it: `pip install .` (not editable) carries the schema and the profiles
inside the package, so its CLI runs a stage from anywhere; and the suite's leak check works."""
import os
import shutil
import subprocess
import sys
import uuid

import yaml
from helpers import ROOT, micro_config


def test_a_non_editable_install_runs_help_a_stage_and_installs_a_profile(tmp_path):
    source, target = tmp_path / "src", tmp_path / "site"
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:   # a clean copy of the tracked tree: the build writes nothing into the checkout
        if (ROOT / f).is_file() and not (ROOT / f).is_symlink():
            (source / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / f, source / f)
    built = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                            "--target", str(target), str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    assert (target / "egrpo/data/config.schema.yaml").is_file()
    assert (target / "egrpo/data/profiles/slurm/config.yaml").is_file()
    env = dict(os.environ, PYTHONPATH=str(target))
    work = tmp_path / "elsewhere"
    work.mkdir()

    def egrpo(*args):
        return subprocess.run([sys.executable, "-m", "egrpo", *args], cwd=work, env=env, capture_output=True,
                              text=True, timeout=300)

    where = subprocess.run([sys.executable, "-c", "import egrpo; print(egrpo.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True)
    assert where.stdout.strip().startswith(str(target)), where.stdout + where.stderr
    assert egrpo("--help").returncode == 0
    config = work / "micro.yaml"
    config.write_text(yaml.safe_dump(micro_config(work)))
    plan = egrpo("threshold", "--config", str(config), "--out", str(work / "plan.json"))
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert (work / "plan.json").is_file()
    linked = egrpo("install-profile", "slurm")
    assert linked.returncode == 0, linked.stderr
    installed = os.path.realpath(os.path.join(os.environ["XDG_CONFIG_HOME"], "snakemake", "slurm"))
    assert installed == str(target / "egrpo/data/profiles/slurm")
    os.unlink(os.path.join(os.environ["XDG_CONFIG_HOME"], "snakemake", "slurm"))


def test_the_leak_check_names_an_egrpo_process_left_running():
    import time

    from scheduling import MARK, _marked_processes, leftover_egrpo_processes

    mark = uuid.uuid4().hex
    probe = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "egrpo-leak-probe"],
                             env=dict(os.environ, **{MARK: mark}))
    try:
        # a loaded machine can show the new process's /proc entries a moment late (seen once in CI): wait
        # until it is visible, so that the check below tests naming it, not the race
        deadline = time.monotonic() + 10
        while "egrpo-leak-probe" not in _marked_processes(mark).get(probe.pid, "") and time.monotonic() < deadline:
            time.sleep(0.1)
        left = leftover_egrpo_processes(mark, grace_s=0.5)
        assert list(left) == [probe.pid] and "egrpo-leak-probe" in left[probe.pid]
    finally:
        probe.kill()
        probe.wait()
    assert leftover_egrpo_processes(mark, grace_s=0.5) == {}
