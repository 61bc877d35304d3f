"""Full fine-tuning sharded over the processes of a train job (`train.sharding: fsdp`).

PyTorch's FSDP2 (`torch.distributed.fsdp.fully_shard`, the primitive that accelerate's FSDP2
plugin calls) shards every FLUX block and the root: each process keeps 1/N of the fp32 master
weights, their gradients and AdamW's moments; a block's weights are all-gathered (in the compute
dtype: bf16 at paper scale) just before its forward or backward and freed after. Gradients are
reduce-scattered in fp32 and averaged over processes at every backward.

accelerate's FSDP plugin is not used because it refuses CPU processes (its FSDP distributed type
exists for accelerators only), so the sharded path could not be tested anywhere but on GPUs;
`fully_shard` runs on CPU processes over gloo and on GPUs over NCCL alike. accelerate still
launches the processes and picks each one's device.

The contract of a sharded module: every process runs the same sequence of forwards and
backwards (each one all-gathers, each backward reduce-scatters). The trainer keeps it by padding
(see `Trainer.update`); the state dicts below are collectives too, so every process calls them.
"""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import torch

from egrpo.runtime.io import as_created, replace_dir


def block_lists(transformer, names=("transformer_blocks", "single_transformer_blocks")) -> list[torch.nn.ModuleList]:
    """The transformer's lists of blocks (`Family.block_lists`: FLUX's double- and single-stream
    blocks, SD3's and Qwen-Image's joint blocks)."""
    return [m for name in names if isinstance(m := getattr(transformer, name, None), torch.nn.ModuleList)]


def shard(module: torch.nn.Module, compute_dtype: torch.dtype, master_dtype: torch.dtype | None = None,
          blocks=("transformer_blocks", "single_transformer_blocks")) -> torch.nn.Module:
    """fully_shard each block, then the root (which holds the embedders and the output layer).

    master_dtype: the trainable parameters of each part become this dtype (fp32 masters) just
    before that part is sharded, so the full model never exists in it on one device. With a lower
    compute dtype the all-gathered copies are cast to it (FSDP's MixedPrecisionPolicy), and
    gradients are reduced in fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # FLUX's single blocks return slices of one tensor; FSDP2 warns that an in-place op on such a view
    # would drop its backward hook. diffusers' FLUX makes none (its next op is a cat or a norm), and
    # the sharded gradients are checked against unsharded ones with both kinds of block (the system tests).
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDPFlux.*returned a view tensor")
    # cast_forward_inputs=False: the latents and the timestep reach the transformer in fp32, as the
    # official FLUX trainers feed them (VisualGRPO's FSDP wrapper sets it too), not cast to bf16
    # (int(1000 sigma)/1000 = 0.978 would arrive as 0.9766); the unit tests check both the input
    # and what the time embedding sees against the official call
    policy = MixedPrecisionPolicy(param_dtype=None if compute_dtype == torch.float32 else compute_dtype,
                                  reduce_dtype=torch.float32, cast_forward_inputs=False)
    parts = [b for blocks_ in block_lists(module, blocks) for b in blocks_]
    if not parts:
        raise ValueError(f"{type(module).__name__}: none of the block lists {list(blocks)} to shard")
    for part in [*parts, module]:  # the root last: its fully_shard takes the parameters no block took
        if master_dtype is not None:
            for p in part.parameters():
                if p.requires_grad and p.dtype != master_dtype:
                    p.data = p.data.to(master_dtype)
        fully_shard(part, mp_policy=policy)
    return module


def clip_grad_norm(params: list[torch.Tensor], max_norm: float) -> float:
    """Clip the global gradient norm of sharded parameters; returns the norm before clipping."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def full_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded weights on the CPU of process 0 (empty elsewhere); every process must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _broadcast_path(path: Path | None) -> Path:
    import torch.distributed as dist

    holder = [str(path) if path is not None else None]
    dist.broadcast_object_list(holder, src=0)
    return Path(holder[0])


def save_sharded(module: torch.nn.Module, optimizer: torch.optim.Optimizer, directory: Path,
                 write_main, extra: dict[str, torch.Tensor] | None = None) -> None:
    """Each process writes its shards of the weights, optimizer state and `extra` tensors (sharded
    like the weights: the EMA) with torch.distributed.checkpoint into a fresh sibling of `directory`;
    process 0 adds its files with `write_main(tmp)` and swaps the folder into place in one rename, so
    a crash mid-save leaves the previous state intact."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    main = dist.get_rank() == 0
    tmp = None
    if main:
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.", suffix=".tmp"))
        as_created(tmp)
    tmp = _broadcast_path(tmp)
    model_state, optimizer_state = get_state_dict(module, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    if extra:
        state["extra"] = dict(extra)
    dcp.save(state, checkpoint_id=str(tmp / "sharded"))
    dist.barrier()
    if main:
        write_main(tmp)
        replace_dir(tmp, directory)
    dist.barrier()


def load_sharded(module: torch.nn.Module, optimizer: torch.optim.Optimizer, directory: Path,
                 extra: dict[str, torch.Tensor] | None = None) -> None:
    """Read what `save_sharded` wrote back into the sharded module, optimizer and `extra` tensors
    (in place; every process).

    The fresh optimizer's state dict has AdamW moments for every parameter; the saved one lacks
    those of parameters that never had a gradient (FLUX's last text branch), hence a partial load:
    they keep their zero moments and, without gradients, are never stepped."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optimizer_state = get_state_dict(module, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    if extra:
        state["extra"] = dict(extra)
    dcp.load(state, checkpoint_id=str(directory / "sharded"), planner=DefaultLoadPlanner(allow_partial_load=True))
    set_state_dict(module, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
