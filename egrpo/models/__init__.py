"""Model families: one adapter per family behind one interface.

    base.py        the interface (Family, TrueCFG, Conditioning)
    flow.py        FlowModel: one family's pipeline as the rollout, the trainer and the stages use it
    registry.py    FAMILIES (name -> adapter), family_of a pipeline, detect_family of a directory
    pipeline.py    load_pipeline (local directory or Hub cache, model.family checked), build_pipeline
                   (random weights: the tiny preset, or the paper shapes of presets.py)
    policy.py      LoRA, and saving / loading a trained policy
    flux.py, sd3.py, qwenimage.py   the adapters
"""
from __future__ import annotations

from egrpo.models.base import Conditioning, Family  # noqa: F401 (the interface)
from egrpo.models.flow import FlowModel  # noqa: F401
from egrpo.models.pipeline import build_pipeline, build_tiny_pipeline, load_pipeline  # noqa: F401
from egrpo.models.policy import add_lora, load_policy, save_policy, trainable_state_dict  # noqa: F401
from egrpo.models.registry import (FAMILIES, configured_family, detect_family, family_by_pipeline,  # noqa: F401
                                   family_class, family_of)
