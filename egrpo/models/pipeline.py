"""Pipeline assembly, once for every caller (the stages, the tests, the benchmarks): load a family's
diffusers pipeline from a local directory or the Hub cache, or build the tiny random instance of a
family's real classes (stage build-model)."""
from __future__ import annotations

import os
from pathlib import Path

from egrpo.errors import UserError
from egrpo.models.presets import build_paper
from egrpo.models.registry import configured_family, family_class


def load_pipeline(cfg: dict, model_dir: str | os.PathLike | None = None):
    """Load a family's pipeline from a local directory or a Hub id already in the local cache.

    With `sampling.schedule: static` the scheduler is pinned to the config's static shift, so that
    the pipeline itself samples the schedule egrpo trains on (FLUX.1-dev's own config turns on
    dynamic shifting)."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler

    source = model_dir or cfg["model"]["path"]
    if source is None:
        raise UserError("model.path: no model directory given")
    source = str(source)
    is_local = Path(source).exists()
    if not is_local and (source.startswith((".", "/", "~")) or source.count("/") != 1):
        raise UserError(f"model.path: {source} does not exist")
    family = family_class(configured_family(cfg, source))
    dtype = getattr(torch, cfg["model"]["dtype"])
    try:
        pipe = family.pipeline_type().from_pretrained(source, torch_dtype=dtype, local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        where = "local directory" if is_local else "Hub id (not found in the local Hub cache)"
        raise UserError(f"model.path: cannot load a {family.pipeline_class} from {where} {source}: "
                        f"{str(e).splitlines()[0]}") from None
    if schedule_of_family(cfg, family.name) == "static":
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(
            pipe.scheduler.config, shift=cfg["sampling"]["shift"], use_dynamic_shifting=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def schedule_of_family(cfg: dict, family: str) -> str:
    """sampling.schedule, or where it is null the family's own: static for FLUX (the official GRPO
    recipes' closed form), pipeline for SD3 and Qwen-Image (what their diffusers pipelines sample)."""
    return cfg["sampling"].get("schedule") or ("static" if family == "flux" else "pipeline")


def build_pipeline(cfg: dict, texts: list[str], preset: str = "tiny", device=None, dtype=None):
    """A pipeline of model.family's real classes with random weights, tokenizers built from `texts`:
    preset `tiny` (sized by model.tiny; what `egrpo build-model` saves and the tests run) or `paper`
    (the published shapes, egrpo/models/presets.py; built on `device` in `dtype`, bf16 by default)."""
    import torch

    family = cfg["model"].get("family") or "flux"
    if preset == "tiny":
        pipe = family_class(family).build_tiny(cfg, texts)
        return pipe if device is None else pipe.to(device)
    if preset == "paper":

        pipe = build_paper(family, texts, torch.device(device or "cpu"), dtype or torch.bfloat16, cfg)
        pipe.set_progress_bar_config(disable=True)
        return pipe
    raise ValueError(f"preset: {preset!r} (tiny or paper)")


def build_tiny_pipeline(cfg: dict, texts: list[str]):
    """A pipeline of tiny, randomly initialised instances of model.family's real classes."""
    return build_pipeline(cfg, texts, "tiny")
