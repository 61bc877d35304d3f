"""One device choice for every stage that runs a model (config `model.device`).

`auto` is accelerate's choice for this process: the GPU of its local rank when there is one (under
`accelerate launch` / `egrpo train --gpus N` each process gets its own), else the CPU. `cpu`
forces the CPU on a GPU machine; `cuda` / `cuda:N` insist on a GPU and fail clearly without one.

Every tensor of a computation lives on this one device: models and their inputs are moved there
when built, factories in the compute path name it (tests/test_device.py checks the source), and
results come back to the CPU only at the edges (images for scoring and saving, logged numbers).
"""
from __future__ import annotations

import torch

from egrpo.errors import UserError


def select_device(cfg: dict) -> torch.device:
    """The device of this process's models: config model.device (auto, cpu, cuda, cuda:N)."""
    choice = cfg.get("model", {}).get("device", "auto")
    if choice == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        from accelerate import PartialState

        return PartialState().device
    device = torch.device(choice)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"model.device: {choice} asks for a GPU, but torch sees none "
                            f"(torch {torch.__version__}; use model.device: auto or cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"model.device: {choice}, but this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def peak_memory_gib(device: torch.device) -> float | None:
    """Peak allocated memory on a CUDA device since the last reset, in GiB (None elsewhere)."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
