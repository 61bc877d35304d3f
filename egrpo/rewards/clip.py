"""CLIP-family rewards built on transformers' CLIPModel, loaded from a local path or the Hub cache.

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
    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        from PIL import Image

        pil = [Image.fromarray((img.float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8"))
               for img in images]
        inputs = self.processor(images=pil, text=list(prompts), padding=True, truncation=True, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        dtype = self.model.dtype
        image_emb = self.model.get_image_features(pixel_values=inputs["pixel_values"].to(dtype))
        text_emb = self.model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"))
        image_emb = getattr(image_emb, "pooler_output", image_emb)
        text_emb = getattr(text_emb, "pooler_output", text_emb)
        cos = torch.nn.functional.cosine_similarity(image_emb.float(), text_emb.float(), dim=-1)
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
