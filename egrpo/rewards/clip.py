"""CLIP-family rewards built on transformers' CLIPModel, loaded from a local path or the Hub cache.

    tinyclip   the tiny world's learned reward: cosine of a tiny CLIPModel trained by `egrpo pretrain`
               (transformers' CLIPProcessor, as in its training)
    clip       CLIP score: cosine of image and prompt embeddings (e.g. ViT-H-14), with open_clip's
               preprocessing and text cleaning as VisualGRPO computes it (egrpo/rewards/preprocess.py)
    pickscore  PickScore: logit_scale * cosine, with the PickScore_v1 CLIPModel and the
               CLIP-ViT-H-14 CLIPProcessor, exactly as PickScore's published scoring code

Paths come from `reward_models.<name>.path` (and `.processor`, default: the same path). Nothing
is downloaded: loading uses local_files_only.
"""
from __future__ import annotations

import torch

from egrpo.errors import UserError
from egrpo.rewards import preprocess
from egrpo.rewards.common import WEIGHTS_DTYPE, compute_context, model_settings, reward_precision, scorer_device
from egrpo.rewards.openclip import OpenCLIPScorer
from egrpo.rewards.preprocess import openclip_tokenize
from egrpo.runtime.device import select_device


class CLIPScorer:
    """cosine (PickScore: logit_scale * cosine) of a transformers CLIPModel's image and text embeddings.

    rules="processor": transformers' CLIPProcessor on PIL images (PickScore's published code; tinyclip).
    rules="open_clip": open_clip's short-side resize + centre crop and its text cleaning (the CLIP score).
    """

    def __init__(self, path: str, processor_path: str | None, scale_by_logit: bool, precision: str = "float32",
                 rules: str = "processor", device: torch.device | str | None = None):
        from transformers import CLIPModel, CLIPProcessor

        try:
            self.model = CLIPModel.from_pretrained(path, local_files_only=True, dtype=WEIGHTS_DTYPE[precision])
            self.processor = CLIPProcessor.from_pretrained(processor_path or path, local_files_only=True)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load a CLIP model from {path}: {str(e).splitlines()[0]}") from None
        self.device = scorer_device(device)
        self.model.to(self.device).eval().requires_grad_(False)
        self.scale_by_logit, self.precision, self.rules = scale_by_logit, precision, rules

    def pixel_values(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1] -> the model's normalized input, from uint8 pixels as the originals see them."""

        pixels = preprocess.to_uint8(images)
        if self.rules == "open_clip":
            size = self.model.config.vision_config.image_size
            return preprocess.normalize(preprocess.short_side_center_crop(pixels, size))
        from PIL import Image
        pil = [Image.fromarray(p.permute(1, 2, 0).numpy()) for p in pixels]
        return self.processor(images=pil, return_tensors="pt")["pixel_values"]

    def text_inputs(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        if self.rules == "open_clip":
            context = self.model.config.text_config.max_position_embeddings
            return {"input_ids": openclip_tokenize(self.processor.tokenizer, list(prompts), context)}
        inputs = self.processor(text=list(prompts), padding=True, truncation=True, return_tensors="pt")
        return {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        emb = self.model.get_image_features(pixel_values=self.pixel_values(images).to(self.device, self.model.dtype))
        return getattr(emb, "pooler_output", emb).float()

    @torch.no_grad()
    def embed_texts(self, prompts: list[str]) -> torch.Tensor:
        emb = self.model.get_text_features(**{k: v.to(self.device) for k, v in self.text_inputs(prompts).items()})
        return getattr(emb, "pooler_output", emb).float()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        with compute_context(self.precision, self.device):
            image, text = self.embed_images(images), self.embed_texts(prompts)
        cos = torch.nn.functional.cosine_similarity(image, text, dim=-1)
        if self.scale_by_logit:
            cos = self.model.logit_scale.exp().float() * cos
        return cos.cpu()


def clip_score(cfg: dict):
    """A transformers CLIPModel directory / Hub id, or an original OpenCLIP checkpoint file; open_clip's rules."""
    from pathlib import Path

    s = model_settings(cfg, "clip")
    precision = reward_precision("clip", s)
    if Path(s["path"]).is_file():
        return OpenCLIPScorer(s["path"], s.get("processor"), s.get("arch") or "ViT-H-14", precision, letterbox=False,
                              device=select_device(cfg))
    return CLIPScorer(s["path"], s.get("processor"), scale_by_logit=False, precision=precision, rules="open_clip",
                      device=select_device(cfg))


def pickscore(cfg: dict):

    s = model_settings(cfg, "pickscore")
    return CLIPScorer(s["path"], s.get("processor"), scale_by_logit=True, precision=reward_precision("pickscore", s),
                      device=select_device(cfg))


def tinyclip(cfg: dict):
    """The tiny world's learned reward (shipped in models/tinyclip; `egrpo pretrain` rebuilds it)."""
    s = model_settings(cfg, "tinyclip")
    return CLIPScorer(s["path"], s.get("processor"), scale_by_logit=False, device=select_device(cfg))
