"""Run `egrpo train` in one process of a multi-process job, with two perturbations that make the
processes' work uneven (tests/system/test_sharding.py launches it under torch.distributed.run):

- process 0 leaves out the last transition of every iteration's first optimizer step;
- process 1's first PPO loss of every iteration is NaN (the trainer skips that transition).

Unsharded, the other process simply trains more; sharded, the trainer must keep both in step.
"""
import os
import sys

from egrpo import sde
from egrpo.algorithms.base import Algorithm
from egrpo.cli import main
from egrpo.train.update import PPOUpdate

rank = int(os.environ["RANK"])
update_units = Algorithm.update_units


def fewer_on_rank0(self, groups, advantages=None):
    units = update_units(self, groups, advantages)
    if rank == 0:
        units[0] = units[0][:-1]
    return units


ppo_clip_loss, update, calls = sde.ppo_clip_loss, PPOUpdate.__call__, []


def nan_first_on_rank1(*args, **kwargs):
    loss, ratio = ppo_clip_loss(*args, **kwargs)
    calls.append(1)
    return (loss * float("nan") if rank == 1 and len(calls) == 1 else loss), ratio


def counting_from_each_update(self, *args):
    calls.clear()  # per iteration, so that a resumed run meets the same NaNs as an unbroken one
    return update(self, *args)


Algorithm.update_units = fewer_on_rank0
sde.ppo_clip_loss = nan_first_on_rank1
PPOUpdate.__call__ = counting_from_each_update
sys.exit(main(sys.argv[1:]))
