"""`egrpo rewards`: the registered rewards, what each needs and which original it reproduces."""
from __future__ import annotations

from egrpo.rewards import REWARDS

NAME = "rewards"
HELP = "List the registered rewards, what each needs and which original it reproduces."
CONFIG = None


def add_arguments(p) -> None:
    pass


def run(args, cfg) -> None:

    for name, spec in REWARDS.items():
        print(f"{name:24s} {spec.description}\n{'':24s} needs: {spec.needs}")
        if spec.original:
            print(f"{'':24s} reproduces: {spec.original} (precision {spec.precision}; docs/rewards.md)")
