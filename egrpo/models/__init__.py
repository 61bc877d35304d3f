"""Model families: one adapter per family behind one interface (egrpo/models/base.py).

    FAMILIES          name -> "module:class"; adding a family is a file and a line here
    family_class      the adapter class of a family name
    family_of         the adapter class of a loaded pipeline (by its diffusers class)
    detect_family     the family of a pipeline directory, from its model_index.json
    load_pipeline     load a pipeline (local directory or Hub cache), checking model.family
    build_tiny_pipeline / run_build_model   the tiny random instance of a family (stage build-model)

`model.family` (flux, sd3, qwenimage) defaults to what the pipeline's own model_index.json says;
a config that names another family than the pipeline's is one clear error.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
from pathlib import Path

from egrpo.errors import UserError
from egrpo.models.base import Conditioning, Family, FlowModel  # noqa: F401 (the interface)
from egrpo.models.policy import add_lora, load_policy, save_policy, trainable_state_dict  # noqa: F401

log = logging.getLogger(__name__)

FAMILIES = {
    "flux": "egrpo.models.flux:Flux",
    "sd3": "egrpo.models.sd3:SD3",
    "qwenimage": "egrpo.models.qwenimage:QwenImage",
}


def family_class(name: str) -> type[Family]:
    if name not in FAMILIES:
        raise UserError(f"model.family: unknown family {name!r}; expected one of {sorted(FAMILIES)}")
    module, cls = FAMILIES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def family_by_pipeline(class_name: str) -> str | None:
    for name in FAMILIES:
        if family_class(name).pipeline_class == class_name:
            return name
    return None


def family_of(pipe) -> type[Family]:
    name = family_by_pipeline(type(pipe).__name__)
    if name is None:
        raise UserError(f"model: {type(pipe).__name__} is not a supported pipeline; egrpo runs "
                        f"{', '.join(family_class(n).pipeline_class for n in FAMILIES)}")
    return family_class(name)


def _model_index(source: str) -> dict | None:
    """model_index.json of a local pipeline directory or of a Hub id in the local cache."""
    path = Path(source) / "model_index.json"
    if not path.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache
            cached = try_to_load_from_cache(str(source), "model_index.json")
        except Exception:   # not a valid repo id
            cached = None
        if not isinstance(cached, str):
            return None
        path = Path(cached)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def detect_family(source: str) -> str | None:
    index = _model_index(source)
    return family_by_pipeline(index.get("_class_name", "")) if index else None


def configured_family(cfg: dict, source: str | None = None) -> str:
    """model.family, checked against the pipeline at `source` when it has a model_index.json."""
    wanted = cfg["model"].get("family")
    found = detect_family(source) if source else None
    if source and found is None and _model_index(source) is not None:
        raise UserError(f"model.path: {source} holds a {_model_index(source).get('_class_name')}, which egrpo does not "
                        f"run; supported: {', '.join(family_class(n).pipeline_class for n in FAMILIES)}")
    if wanted and found and wanted != found:
        raise UserError(f"model.family: the config says {wanted!r} but {source} is a "
                        f"{family_class(found).pipeline_class} ({found!r}); set model.family: {found} or leave it unset")
    return wanted or found or "flux"


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
    if cfg["sampling"].get("schedule", "static") == "static":
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(
            pipe.scheduler.config, shift=cfg["sampling"]["shift"], use_dynamic_shifting=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_pipeline(cfg: dict, texts: list[str]):
    """A pipeline of tiny, randomly initialised instances of model.family's real classes."""
    return family_class(cfg["model"].get("family") or "flux").build_tiny(cfg, texts)
