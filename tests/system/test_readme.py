"""The README's everyday commands run as written, on the finished micro DAG: the sections
"Everyday use" and "Comparing without the files", each command with the default config swapped for
the micro one (config/config.yaml -> tests/data/micro.yaml, results/tiny -> results/micro, the
default's reward setting 'tinyclip' -> the micro's 'color'); Snakemake commands that would start
jobs are dry runs. A stale flag, filter syntax or path in the README fails here."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import ROOT

pytestmark = pytest.mark.slow

SECTIONS = ("## Everyday use", "## Comparing without the files")
SWAPS = {"config/config.yaml": "tests/data/micro.yaml", "results/tiny": "results/micro", "'tinyclip'": "'color'"}


def readme_commands(section: str) -> list[str]:
    """The commands of the first bash block under a README heading, comments removed."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text[text.index(section):], re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip() and not line.startswith("#")]


def as_micro(command: str) -> str:
    for old, new in SWAPS.items():
        command = command.replace(old, new)
    if command.startswith("snakemake"):
        command += " --configfile tests/data/micro.yaml --cores 2" + ("" if " -n" in command else " -n")
    if command == "egrpo compare":   # the default config's runs: here the micro's
        command += " --config tests/data/micro.yaml"
    return command


def test_the_readme_everyday_commands_run_as_written(micro_dag_copy):
    work = micro_dag_copy
    variant = yaml.safe_load((work / "tests/data/micro.yaml").read_text())
    variant["train"]["learning_rate"] = 0.5 * float(variant["train"].get("learning_rate", 1e-3))
    (work / "my-variant.yaml").write_text(yaml.safe_dump(variant))
    commands = [c for s in SECTIONS for c in readme_commands(s)]
    assert any(c.startswith("egrpo compare") and "--filter" in c for c in commands)   # the README still shows them
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    outputs = {}
    for command in commands:
        run = subprocess.run(as_micro(command).replace("/tmp/plan.json", str(work / "plan.json")), shell=True,
                             cwd=work, capture_output=True, text=True, env=env, timeout=300)
        assert run.returncode == 0, f"{command}\n{run.stderr[-2000:]}"
        outputs[command] = run.stdout + run.stderr
    filtered = (work / "t.csv").read_text()
    assert "color" in filtered and "egrpo" in filtered
    side_by_side = next(o for c, o in outputs.items() if "my-variant.yaml" in c)
    assert "train.learning_rate" in side_by_side
    assert (work / "plan.json").is_file()
