"""Everything distributed about a train job, behind one interface: which process is the main one,
how gradients are averaged, how processes stay in step, agree to stop, count over processes, and
what a lost peer looks like. The trainer calls these and never asks how many processes run.

- `SingleProcess`: one process; every collective is the identity.
- `DataParallel`: several processes with full copies of the weights (accelerate launches them; the
  DDP wrapper is made once for its initial broadcast of the weights and then left uncalled, because
  processes train different numbers of transitions per optimizer step, which DDP's per-backward
  reduction cannot follow: a DDP forward outside no_sync arms it). Gradients are all-reduced once
  per optimizer step.
- `Sharded` (`train.sharding: fsdp`, several processes): FSDP2 holds 1/N of the weights, gradients
  and AdamW state per process (egrpo/train/sharding.py). Every forward and backward is a collective,
  so every process must make the same calls: per optimizer step each process pads to the largest
  transition count with zero-weight transitions, a skipped (non-finite) loss still runs a zero
  backward, every process samples the held-out curve and writes its shards of a checkpoint.

`make_processes` picks one; the process group is started with `train.peer_timeout_s` first, so a
collective that waits longer on a peer fails (gloo raises; NCCL's watchdog aborts) instead of hanging
until the job's limit.
"""
from __future__ import annotations

import logging
import os
from datetime import timedelta

import torch

from egrpo.errors import PeerLost, UserError
from egrpo.runtime.device import select_device
from egrpo.train import sharding
from egrpo.train.sampler import iteration_seed

log = logging.getLogger("egrpo.train")


class SingleProcess:
    """One process: the identity for every collective."""

    sharded = False

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.device = accelerator.device
        self.world, self.rank = accelerator.num_processes, accelerator.process_index
        self.main = accelerator.is_main_process

    @property
    def writes_checkpoints(self) -> bool:
        """Whether this process writes the resume state (the main one; every one when sharded)."""
        return self.main

    @property
    def measures_heldout(self) -> bool:
        """Whether this process samples the held-out curve (the main one; every one when sharded)."""
        return self.main

    def prompt_share(self, drawn: list[int]) -> list[int]:
        """This process's equal share of the iteration's prompts."""
        return drawn[self.rank::self.world]

    def noise_generator(self, generator: torch.Generator, seed: int, iteration: int) -> torch.Generator:
        """The generator this process draws its noises from (its own on each of several processes)."""
        return generator

    # ---- weights -----------------------------------------------------------------------------
    def shard_reference(self, module, compute_dtype, blocks) -> None:
        """The frozen KL reference as it is copied (sharded at once: one full copy at a time)."""

    def make_masters(self, transformer, compute_dtype, blocks) -> None:
        """fp32 master weights of what is trained; the forward computes in the model's dtype."""
        for p in transformer.parameters():
            if p.requires_grad:
                p.data = p.data.float()

    def prepare(self, transformer, optimizer):
        return optimizer

    def policy_state(self, transformer) -> dict | None:
        """The weights to save as the policy (None: read them from the transformer)."""
        return None

    # ---- one optimizer step ------------------------------------------------------------------
    def padding(self, units: list) -> list[int]:
        """Per optimizer step, how many zero-weight transitions this process adds to stay in step
        (one entry per optimizer step that any process takes)."""
        return [0] * len(units)

    def zero_backward(self, velocity: torch.Tensor) -> None:
        """A skipped (non-finite) loss: nothing to run here."""

    def clip_grad_norm(self, params: list[torch.Tensor], max_norm: float) -> float:
        """Average gradients over processes, clip their global norm; returns the norm before clipping."""
        return float(self.accelerator.clip_grad_norm_(params, max_norm))

    # ---- counting, stopping, failing together --------------------------------------------------
    def sum_counts(self, counts: list[int]) -> list[int]:
        return counts

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        return values

    def agree_to_stop(self, reason: str | None) -> str | None:
        """Every process gets the same answer to "stop before the next iteration?"."""
        return reason

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    def lost_peer(self, error: RuntimeError, peer_timeout_s: float) -> PeerLost | None:
        """The one-line error for a collective that failed because a peer died or hangs."""
        return None


class DataParallel(SingleProcess):
    """Several processes, each with the full weights."""

    def noise_generator(self, generator, seed, iteration):
        return torch.Generator().manual_seed(iteration_seed(seed, iteration) * 64 + self.rank)

    def prepare(self, transformer, optimizer):
        _, optimizer = self.accelerator.prepare(transformer, optimizer)
        return optimizer

    def padding(self, units):
        import torch.distributed as dist

        count = torch.tensor([len(units)], device=self.device)
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        return [0] * int(count)   # a process without the step steps on zero gradients

    def clip_grad_norm(self, params, max_norm):
        import torch.distributed as dist

        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= self.world
        return super().clip_grad_norm(params, max_norm)

    def sum_counts(self, counts):
        total = self.accelerator.reduce(torch.tensor(counts, device=self.device), "sum").tolist()
        return [int(c) for c in total]

    def gather(self, values):
        return self.accelerator.gather(values.to(self.device)).cpu()

    def agree_to_stop(self, reason):
        import torch.distributed as dist

        flag = torch.tensor([1.0 if reason else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and not reason:
            reason = "another process of the job was told to stop"
        return reason

    def lost_peer(self, error, peer_timeout_s):
        if not _collective_failure(error):
            return None
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return PeerLost(f"process {self.rank} of {self.world}: a peer process stopped answering (a collective "
                        f"failed: {first[-200:]}; train.peer_timeout_s = {peer_timeout_s:g}); this "
                        "process exits too; the first error is in the log of the process that stopped")


class Sharded(DataParallel):
    """Several processes, each with 1/N of the weights (FSDP2)."""

    sharded = True

    @property
    def writes_checkpoints(self):
        return True

    @property
    def measures_heldout(self):
        return True

    def shard_reference(self, module, compute_dtype, blocks):

        sharding.shard(module, compute_dtype, blocks=blocks)

    def make_masters(self, transformer, compute_dtype, blocks):
        """Each block becomes fp32 just before it is sharded, so no full fp32 copy exists."""

        sharding.shard(transformer, compute_dtype, master_dtype=torch.float32, blocks=blocks)

    def prepare(self, transformer, optimizer):
        return optimizer

    def policy_state(self, transformer):
        """Gathered from every process's shards onto the main one (a collective)."""

        return sharding.full_state_dict(transformer)

    def padding(self, units):
        import torch.distributed as dist

        count = torch.tensor([len(units)], device=self.device)
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        sizes = torch.zeros(int(count), dtype=torch.long, device=self.device)
        sizes[:len(units)] = torch.tensor([len(unit) for unit in units], dtype=torch.long, device=self.device)
        most = sizes.clone()
        dist.all_reduce(most, op=dist.ReduceOp.MAX)
        return (most - sizes).tolist()

    def zero_backward(self, velocity):
        """Every process must still run a backward (FSDP reduce-scatters in it)."""
        self.accelerator.backward(velocity.sum() * 0.0)

    def clip_grad_norm(self, params, max_norm):
        """Sharded gradients were already averaged by FSDP at every backward."""

        return sharding.clip_grad_norm(params, max_norm)


def make_processes(cfg: dict):
    """The accelerator and the `Processes` of this train job (from WORLD_SIZE and train.sharding)."""
    from accelerate import Accelerator

    tcfg = cfg["train"]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:   # the process group first, with its timeout
        from accelerate import PartialState
        PartialState(cpu=cfg["model"].get("device") == "cpu" or not torch.cuda.is_available(),
                     timeout=timedelta(seconds=tcfg["peer_timeout_s"]))
    device = select_device(cfg)  # model.device: auto (this process's GPU, else the CPU), cpu, cuda[:N]
    accelerator = Accelerator(mixed_precision=tcfg["mixed_precision"], cpu=device.type == "cpu")
    world = accelerator.num_processes
    if tcfg["prompts_per_iteration"] % world:
        raise UserError(f"train.prompts_per_iteration: {tcfg['prompts_per_iteration']} prompts per iteration "
                        f"cannot be split evenly over {world} processes")
    if tcfg["sharding"] == "fsdp" and world == 1:
        log.info("train.sharding: fsdp with one process has nothing to shard; training unsharded")
    if world == 1:
        return SingleProcess(accelerator)
    return Sharded(accelerator) if tcfg["sharding"] == "fsdp" else DataParallel(accelerator)


def _collective_failure(error: RuntimeError) -> bool:
    """A collective failed because a peer died or did not answer in time (gloo or NCCL)."""
    import torch.distributed as dist

    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = str(error)
    return any(s in text for s in ("gloo", "NCCL", "Connection reset by peer", "Connection closed by peer",
                                   "Timed out", "Broken pipe"))
