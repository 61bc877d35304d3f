"""One device choice for every stage that runs a model (config `model.device`).

`auto` is accelerate's choice for this process: the GPU of its local rank when there is one (under
`accelerate launch` / `egrpo train --gpus N` each process gets its own), else the CPU. `cpu`
forces the CPU on a GPU machine; `cuda` / `cuda:N` insist on a GPU and fail clearly without one.

Every tensor of a computation lives on this one device: models and their inputs are moved there
when built, factories in the compute path name it (the test suite checks the source), and
results come back to the CPU only at the edges (images for scoring and saving, logged numbers).

Out of memory: `memory_phase` turns a CUDA out-of-memory error into one line naming the stage, the
phase (rollout, decode, scoring, training, heldout; sampling or loading outside the trainer's
phases), the peak and the config knobs that lower it; the CLI then refuses to run the same command
with the same config again (egrpo/cli.py), so that a scheduler's retry does not repeat it.
"""
from __future__ import annotations

import contextlib

import torch

from egrpo.errors import OutOfMemory, UserError
from egrpo.runtime import faults


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


# ---- out of memory: one line that says what to change -------------------------------------------
# the knobs that lower each phase's peak (docs: README "What a failure message means")
MEMORY_KNOBS = {
    "rollout": "sampling.max_batch_size (lanes per model call), model.offload_text_encoders: true, fewer "
               "train.prompts_per_iteration per process (more GPUs)",
    "decode": "model.decode_batch_size",
    "scoring": "model.decode_batch_size (images scored per call), reward_models.<name>.precision: amp",
    "training": "train.gradient_checkpointing: true, train.finetune: lora, train.sharding: fsdp over more GPUs, "
                "a smaller samples_per_step",
    "heldout": "train.heldout.images_per_prompt, model.decode_batch_size",
    "sampling": "sampling.max_batch_size, model.decode_batch_size, model.offload_text_encoders: true",
    "loading": "model.offload_text_encoders: true, model.dtype: bfloat16",
    "pretraining": "pretrain.batch_size",
}
_stage = ["egrpo"]


def set_stage(name: str) -> None:
    """The stage this process runs (the CLI subcommand), named in out-of-memory messages."""
    _stage[0] = name


@contextlib.contextmanager
def memory_phase(phase: str, device: torch.device | None = None):
    """Run one phase; a CUDA out-of-memory error in it becomes one OutOfMemory line."""
    stage = _stage[0]
    try:
        faults.plan().at_phase(stage, phase)
        yield
    except torch.OutOfMemoryError as error:
        where = "the GPU"
        peak = ""
        if device is None and torch.cuda.is_available():
            device = torch.device("cuda", torch.cuda.current_device())
        if device is not None and device.type == "cuda":
            total = torch.cuda.get_device_properties(device).total_memory / 2**30
            peak = f"peak {peak_memory_gib(device):.1f} of {total:.1f} GiB allocated on {device}; "
            where = str(device)
        first = str(error).strip().splitlines()[0] if str(error).strip() else "out of memory"
        raise OutOfMemory(f"out of memory on {where} in stage {stage}, phase {phase}: {peak}{first.rstrip('.')}. "
                          f"Lower the peak with: {MEMORY_KNOBS.get(phase, MEMORY_KNOBS['sampling'])}") from None
