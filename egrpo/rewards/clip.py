"""CLIP-family rewards built on transformers' CLIPModel, loaded from a local path or the Hub cache.

    tinyclip   the tiny world's learned reward: cosine of a tiny CLIPModel trained by `egrpo pretrain`
    clip       cosine similarity of image and prompt embeddings (CLIP score, e.g. ViT-H-14)
    pickscore  PickScore: logit_scale * cosine, with the PickScore_v1 CLIPModel and the
               CLIP-ViT-H-14 processor (the original model's preprocessing constants)

Paths come from `reward_models.<name>.path` (and `.processor`, default: the same path). Nothing
is downloaded: loading uses local_files_only.
"""
from __future__ import annotations

import torch

from egrpo.errors import UserError


def _settings(cfg: dict, name: str) -> dict:
    settings = (cfg.get("reward_models") or {}).get(name) or {}
    if not settings.get("path"):
        raise UserError(f"reward_models.{name}.path: reward {name!r} needs its model weights (a local path or a Hub id in the cache)")
    return settings


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class CLIPScorer:
    def __init__(self, path: str, processor_path: str | None, scale_by_logit: bool, dtype: str = "float32"):
        from transformers import CLIPModel, CLIPProcessor

        try:
            self.model = CLIPModel.from_pretrained(path, local_files_only=True, dtype=getattr(torch, dtype))
            self.processor = CLIPProcessor.from_pretrained(processor_path or path, local_files_only=True)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load a CLIP model from {path}: {str(e).splitlines()[0]}") from None
        self.device = _device()
        self.model.to(self.device).eval().requires_grad_(False)
        self.scale_by_logit = scale_by_logit

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1] -> image embeddings [B, D] (through the processor, as uint8)."""
        from PIL import Image

        pil = [Image.fromarray((img.float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8"))
               for img in images]
        pixels = self.processor(images=pil, return_tensors="pt")["pixel_values"]
        emb = self.model.get_image_features(pixel_values=pixels.to(self.device, self.model.dtype))
        return getattr(emb, "pooler_output", emb).float()

    @torch.no_grad()
    def embed_texts(self, prompts: list[str]) -> torch.Tensor:
        inputs = self.processor(text=list(prompts), padding=True, truncation=True, return_tensors="pt")
        emb = self.model.get_text_features(input_ids=inputs["input_ids"].to(self.device),
                                           attention_mask=inputs["attention_mask"].to(self.device))
        return getattr(emb, "pooler_output", emb).float()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        cos = torch.nn.functional.cosine_similarity(self.embed_images(images), self.embed_texts(prompts), dim=-1)
        if self.scale_by_logit:
            cos = self.model.logit_scale.exp().float() * cos
        return cos.cpu()


def clip_score(cfg: dict):
    """A transformers CLIPModel directory / Hub id, or an original OpenCLIP checkpoint file."""
    from pathlib import Path

    s = _settings(cfg, "clip")
    if Path(s["path"]).is_file():
        from egrpo.rewards.openclip import OpenCLIPScorer
        return OpenCLIPScorer(s["path"], s.get("processor"), s.get("arch") or "ViT-H-14", s.get("dtype", "float32"))
    return CLIPScorer(s["path"], s.get("processor"), scale_by_logit=False, dtype=s.get("dtype", "float32"))


def pickscore(cfg: dict):
    s = _settings(cfg, "pickscore")
    return CLIPScorer(s["path"], s.get("processor"), scale_by_logit=True, dtype=s.get("dtype", "float32"))


def tinyclip(cfg: dict):
    """The tiny world's learned reward (shipped in models/tinyclip; `egrpo pretrain` rebuilds it)."""
    s = _settings(cfg, "tinyclip")
    return CLIPScorer(s["path"], s.get("processor"), scale_by_logit=False)
