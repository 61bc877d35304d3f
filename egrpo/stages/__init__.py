"""The pipeline's stages: one module per `egrpo <stage>` subcommand (and per Snakemake rule file).

A stage module declares

    NAME            the subcommand (`egrpo NAME`)
    HELP            one line for `egrpo --help`
    add_arguments   its arguments (argparse), besides --config
    run(args, cfg)  what it does, with the validated config
    PHASE           (optional) the memory phase of a stage that runs a model on a device: an
                    out-of-memory error there becomes one line and is not run again unchanged
    INPUTS          (optional) argument names that are files it reads: missing ones are one line
    CONFIG          (optional) None for a stage that reads no config; a path for a default config

`egrpo/cli.py` loops over `STAGES`; only the module of the stage that runs is imported.
"""
from __future__ import annotations

import importlib

# subcommand -> module, in the order of `egrpo --help` (the DAG's order, then the tools)
STAGES = {
    "build-model": "egrpo.stages.build_model",
    "pretrain": "egrpo.stages.pretrain",
    "profile": "egrpo.stages.profile",
    "threshold": "egrpo.stages.threshold",
    "train": "egrpo.stages.train",
    "evaluate": "egrpo.stages.evaluate",
    "report": "egrpo.stages.report",
    "claims": "egrpo.stages.claims",
    "compare": "egrpo.stages.compare",
    "cost": "egrpo.stages.cost",
    "mlflow-init": "egrpo.stages.mlflow_init",
    "prompts": "egrpo.stages.prompts",
    "rewards": "egrpo.stages.list_rewards",
    "install-profile": "egrpo.stages.install_profile",
}


def load(name: str):
    """The module of stage `name`."""
    module = importlib.import_module(STAGES[name])
    assert module.NAME == name, f"{STAGES[name]} declares NAME {module.NAME!r}, registered as {name!r}"
    return module
