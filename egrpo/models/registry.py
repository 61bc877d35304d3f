"""The registry of model families: name -> adapter class (egrpo/models/<family>.py), found by name,
by a loaded pipeline's class, or from a pipeline directory's model_index.json.

`model.family` (flux, sd3, qwenimage) defaults to what the pipeline's own model_index.json says; a
config that names another family than the pipeline's is one clear error. Adding a family is a file
and a line in FAMILIES."""
from __future__ import annotations

import importlib
import json
from pathlib import Path

from egrpo.errors import UserError
from egrpo.models.base import Family

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
