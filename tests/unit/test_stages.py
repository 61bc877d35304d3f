"""One stage module = one subcommand = (for the DAG's stages) one rule file that calls it."""
import argparse
import re

import pytest
from helpers import ROOT

from egrpo import stages
from egrpo.cli import _parser

DAG = ["build-model", "pretrain", "profile", "threshold", "train", "evaluate", "report", "claims"]


@pytest.mark.parametrize("name", sorted(stages.STAGES))
def test_every_stage_declares_name_help_arguments_and_run(name):
    module = stages.load(name)
    assert module.NAME == name and module.HELP.strip()
    assert callable(module.run) and callable(module.add_arguments)
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    for option in getattr(module, "INPUTS", ()):   # the input files it checks are its own arguments
        assert option in {a.dest for a in parser._actions}, option


@pytest.mark.parametrize("name", DAG)
def test_every_dag_stage_has_its_rule_file_calling_it(name):
    rule_file = ROOT / "workflow/rules" / (stages.STAGES[name].rsplit(".", 1)[1] + ".smk")
    text = rule_file.read_text()
    assert re.search(rf"^rule {name.replace('-', '_')}:", text, re.M), rule_file
    assert f"egrpo {name} " in text, f"{rule_file} does not call `egrpo {name}`"
    assert f'include: "workflow/rules/{rule_file.name}"' in (ROOT / "Snakefile").read_text()


def test_the_cli_loads_only_the_named_stage_and_every_stage_for_help(monkeypatch):
    loaded, load = [], stages.load
    monkeypatch.setattr(stages, "load", lambda name: loaded.append(name) or load(name))
    argv = ["threshold", "--config", "x.yaml", "--out", "y.json"]
    args = _parser(argv).parse_args(argv)
    assert args.stage.NAME == "threshold" and loaded == ["threshold"]
    loaded.clear()
    _parser(["--help"])
    assert loaded == list(stages.STAGES)
