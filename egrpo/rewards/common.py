"""What the model-based reward scorers share: their reward_models.<name> settings, their device,
their precision (the original's unless set) and its weights dtype and autocast."""
from __future__ import annotations

from contextlib import nullcontext

import torch

from egrpo.errors import ConfigError, UserError
from egrpo.rewards import PRECISIONS, REWARDS
from egrpo.runtime.device import select_device


def model_settings(cfg: dict, name: str) -> dict:
    settings = (cfg.get("reward_models") or {}).get(name) or {}
    if not settings.get("path"):
        raise UserError(f"reward_models.{name}.path: reward {name!r} needs its model weights (a local path or a Hub id in the cache)")
    return settings


def scorer_device(device: torch.device | str | None) -> torch.device:
    """The scorer's device: the one given (the stage's model.device choice), else model.device's `auto`."""
    return torch.device(device) if device is not None else select_device({})


WEIGHTS_DTYPE = {"float32": torch.float32, "amp": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def compute_context(precision: str, device: torch.device):
    """The original's autocast: `amp` is float16 autocast on CUDA (a no-op on CPU, as in hpsv2)."""
    if precision == "amp" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return nullcontext()


def reward_precision(name: str, settings: dict) -> str:
    """reward_models.<name>.precision, or the original's when unset."""
    precision = settings.get("precision") or REWARDS[name].precision
    if precision not in PRECISIONS:
        raise ConfigError(f"reward_models.{name}.precision: {precision!r}; expected one of {sorted(PRECISIONS)}")
    return precision
