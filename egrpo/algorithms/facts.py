"""The facts about each algorithm that the config, the Snakefile's rules and the CLI need, in one
torch-free table (importing it costs nothing, so `snakemake -n` stays fast): where its class is and
whether its train job reads the merge plan (plan.json of `egrpo threshold`)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Facts:
    target: str          # module:class of its implementation
    uses_plan: bool      # its train job reads plan.json


ALGORITHMS: dict[str, Facts] = {
    "egrpo": Facts("egrpo.algorithms.egrpo:EGRPO", uses_plan=True),
    "dancegrpo": Facts("egrpo.algorithms.dancegrpo:DanceGRPO", uses_plan=False),
    "mixgrpo": Facts("egrpo.algorithms.mixgrpo:MixGRPO", uses_plan=False),
    "flowgrpo": Facts("egrpo.algorithms.flowgrpo:FlowGRPO", uses_plan=False),
    "branchgrpo": Facts("egrpo.algorithms.branchgrpo:BranchGRPO", uses_plan=False),
    "diffusionnft": Facts("egrpo.algorithms.diffusionnft:DiffusionNFT", uses_plan=False),
}


def uses_plan(name: str) -> bool:
    return ALGORITHMS[name].uses_plan
