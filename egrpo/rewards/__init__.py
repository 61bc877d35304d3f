"""Reward registry: name -> how to build it. One signature for every reward:

    reward = build_reward(name, cfg)
    scores = reward(images, prompts)   # images: float [B, 3, H, W] in [0, 1]; scores: float [B]

This module holds names and metadata only (no torch), so config validation and `snakemake -n`
stay fast; the implementation is imported when a reward is built. Paper-scale rewards (HPS v2.1,
PickScore, ImageReward, CLIP score) join this table with their loaders.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from egrpo.errors import ConfigError


@dataclass(frozen=True)
class RewardSpec:
    target: str          # "module:factory"; factory(cfg) -> callable(images, prompts) -> scores
    description: str
    needs: str = "nothing (offline, no weights)"
    original: str = ""   # the package whose scores this reproduces, and its preprocessing (docs/rewards.md)
    precision: str = "float32"  # the original's precision: float32, or amp (fp32 weights, fp16 autocast on CUDA)
    label: str = ""      # its column name in the report's tables (default: the registry name)
    exact: bool = False  # a rule-based ground truth that scores exactly what the prompt asks: no error to exploit


def is_exact(name: str) -> bool:
    """Whether a reward is a tiny world's exact ground truth (alignment, judge): a run that trains on
    such rewards only cannot hack them (egrpo/health.py)."""
    spec = REWARDS.get(name)
    return bool(spec and spec.exact)


def metric_label(name: str) -> str:
    """How the report names a metric: Table 1's CLIP score and the training reward `clip` apart."""
    spec = REWARDS.get(name)
    return spec.label if spec and spec.label else name


# reward_models.<name>.precision: how a model-based reward runs (default: its original's, RewardSpec.precision)
PRECISIONS = {
    "float32": "fp32 weights and compute",
    "amp": "fp32 weights, float16 autocast on CUDA (hpsv2's `precision='amp'` + `torch.cuda.amp.autocast`; fp32 on CPU, as there)",
    "bfloat16": "bf16 weights and compute (a deviation from every original: faster, scores move)",
    "float16": "fp16 weights and compute (a deviation from every original)",
}


REWARDS: dict[str, RewardSpec] = {
    "prompt_color": RewardSpec(
        "egrpo.rewards.offline:prompt_color",
        "share of pixels close to each colour the prompt names (rule-based, prompt-conditioned)"),
    "jpeg_compressibility": RewardSpec(
        "egrpo.rewards.offline:jpeg_compressibility",
        "minus the JPEG size in kB at quality 95 (DDPO's compressibility)"),
    "alignment": RewardSpec(
        "egrpo.tinyworld:alignment_reward",
        "tiny world ground truth: colour match of the named shape's region and of the background", exact=True),
    "judge": RewardSpec(
        "egrpo.compworld:judge_reward",
        "compositional tiny world ground truth: the share of what the prompt asks (objects, colours, counts, "
        "relations) that the image shows, read by a rule-based judge (GenEval's tasks in miniature)", exact=True),
    "tinyclip": RewardSpec(
        "egrpo.rewards.clip:tinyclip",
        "tiny world learned reward: cosine of a tiny CLIPModel trained contrastively by `egrpo pretrain`",
        "reward_models.tinyclip.path (the shipped models/tinyclip, or a pretrain output)",
        "egrpo pretrain's own model: transformers CLIPProcessor, as it was trained"),
    "hps": RewardSpec(
        "egrpo.rewards.openclip:hps",
        "HPS v2.1: cosine of image and prompt embeddings of the HPS OpenCLIP ViT-H-14 (mapped into CLIPModel)",
        "reward_models.hps.path (HPS_v2.1_compressed.pt) and .processor (a CLIP BPE tokenizer directory)",
        "hpsv2 1.2.0 (HPS v2.1): letterbox to 224 without clamp, open_clip text cleaning", "amp", "HPS v2.1"),
    "imagereward": RewardSpec(
        "egrpo.rewards.imagereward:imagereward",
        "ImageReward: BLIP image-text encoder + MLP head (original checkpoint mapped into transformers' BLIP)",
        "reward_models.imagereward.path (ImageReward.pt) and .processor (a bert-base-uncased tokenizer directory)",
        "image-reward 1.5: PIL bicubic short side to 224 on uint8, centre crop at round(), BERT tokens (max 35)",
        label="ImageReward"),
    "clip": RewardSpec(
        "egrpo.rewards.clip:clip_score",
        "CLIP score: cosine of image and prompt embeddings (transformers CLIPModel, e.g. ViT-H-14)",
        "reward_models.clip.path: a CLIPModel directory or cached Hub id, or an OpenCLIP checkpoint file",
        "open_clip (VisualGRPO's clip_score): PIL bicubic short side to 224, centre crop, open_clip text cleaning",
        label="CLIP reward (laion ViT-H-14, training)"),
    "clip_dfn": RewardSpec(
        "egrpo.rewards.openclip:clip_dfn",
        "Table 1's CLIP score (evaluation): cosine of DFN5B CLIP ViT-H-14-378 embeddings, not the training reward `clip`",
        "reward_models.clip_dfn.path (a local apple/DFN5B-CLIP-ViT-H-14-378: open_clip_config.json + weights) and "
        ".processor (a CLIP BPE tokenizer directory)",
        "VisualGRPO scripts/evaluation/test_clip_score.py: open_clip local-dir model, its preprocess (DFN5B: squash "
        "to 378, bicubic), ViT-H-14 tokenizer", label="CLIP (DFN5B, Table 1)"),
    "pickscore": RewardSpec(
        "egrpo.rewards.clip:pickscore",
        "PickScore: logit_scale * cosine of the PickScore_v1 CLIPModel",
        "reward_models.pickscore.path (PickScore_v1) and .processor (CLIP-ViT-H-14 processor)",
        "PickScore's published scoring code: transformers CLIPProcessor as is, fp32", label="PickScore"),
}


def build_reward(name: str, cfg: dict) -> Callable:
    if name not in REWARDS:
        raise ConfigError(f"unknown reward {name!r}; expected one of {sorted(REWARDS)}")
    module, factory = REWARDS[name].target.split(":")
    return getattr(importlib.import_module(module), factory)(cfg)


class RewardSetting:
    """A weighted set of rewards, e.g. {"prompt_color": 1.0, "jpeg_compressibility": 0.1}.

    `components(images, prompts)` returns {reward name: scores [B]}; `weights` maps name -> weight.
    The combined score is sum_r w_r * score_r; training normalizes either that sum within its group
    or each component before weighting, by the algorithm's reward_combination (docs/design.md §2).
    """

    def __init__(self, weights: dict[str, float], cfg: dict, cache: dict | None = None):
        cache = {} if cache is None else cache
        self.weights = dict(weights)
        for name in self.weights:
            if name not in cache:
                cache[name] = build_reward(name, cfg)
        self.rewards = {name: cache[name] for name in self.weights}

    def components(self, images, prompts):
        return {name: fn(images, prompts) for name, fn in self.rewards.items()}

    def combine(self, components):
        return sum(self.weights[name] * scores for name, scores in components.items())
