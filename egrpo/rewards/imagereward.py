"""ImageReward: its original checkpoint loaded into transformers' BLIP modules plus its MLP head.

The `image-reward` package pins an old transformers that breaks diffusers, so the checkpoint
(ImageReward.pt: BLIP ViT-L/16 image encoder, BERT-base text encoder with cross-attention, MLP
head) is mapped onto `BlipVisionModel` + `BlipTextModel` strictly: every key consumed (the
contrastive projections `blip.vision_proj` / `blip.text_proj`, which the score does not use, are
consumed and dropped by name), every parameter filled.

    score = (MLP(text_encoder(prompt, cross-attending to visual_encoder(image))[CLS]) - mean) / std

Original layout:
    blip.visual_encoder.{patch_embed.proj, cls_token, pos_embed, norm}
    blip.visual_encoder.blocks.<i>.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}
    blip.text_encoder.{embeddings.*, encoder.layer.<i>.*}    (BERT names, as BlipTextModel's)
    mlp.layers.{0, 2, 4, 6, 7}                               (768 -> 1024 -> 128 -> 64 -> 16 -> 1)
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from egrpo.errors import UserError
from egrpo.rewards import preprocess
from egrpo.rewards.common import WEIGHTS_DTYPE, compute_context, model_settings, reward_precision, scorer_device
from egrpo.rewards.openclip import load_openclip_state  # the same safe reader
from egrpo.runtime.device import select_device

MEAN, STD = 0.16717362830052426, 1.0333394966054072   # ImageReward's normalization of the raw head output
UNUSED = ("blip.vision_proj.weight", "blip.vision_proj.bias", "blip.text_proj.weight", "blip.text_proj.bias")
_VISION_BLOCK = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn.qkv": "self_attn.qkv",
                 "attn.proj": "self_attn.projection", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
_VISION = {"patch_embed.proj.weight": "embeddings.patch_embedding.weight",
           "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
           "cls_token": "embeddings.class_embedding", "pos_embed": "embeddings.position_embedding",
           "norm.weight": "post_layernorm.weight", "norm.bias": "post_layernorm.bias"}
# heads are not visible in the weights: ImageReward = ViT-L/16 (16 heads) + BERT-base (12 heads)
ARCHS = {"ImageReward-v1.0": {"vision_heads": 16, "text_heads": 12}}


def head(state: dict[str, torch.Tensor]) -> nn.Sequential:
    """ImageReward's MLP head (768 -> 1024 -> 128 -> 64 -> 16 -> 1 in the release), sized from the
    checkpoint; indices 0, 2, 4, 6, 7 hold the weights, 1, 3, 5 are dropouts, as in the original."""
    def linear(i):
        out_features, in_features = state[f"{i}.weight"].shape
        return nn.Linear(in_features, out_features)
    return nn.Sequential(linear(0), nn.Dropout(0.2), linear(2), nn.Dropout(0.2), linear(4), nn.Dropout(0.1),
                         linear(6), linear(7))


def split_state(state: dict[str, torch.Tensor]):
    """Split the original keys into (vision, text, head) state dicts in transformers' names."""
    vision, text, mlp, unknown = {}, {}, {}, []
    for key, value in state.items():
        if key in UNUSED or key.endswith("position_ids"):
            continue
        if key.startswith("blip.visual_encoder."):
            rest = key[len("blip.visual_encoder."):]
            if rest in _VISION:
                vision[_VISION[rest]] = value
                continue
            m = re.match(r"blocks\.(\d+)\.(.+)\.(weight|bias)$", rest)
            if m and m.group(2) in _VISION_BLOCK:
                vision[f"encoder.layers.{m.group(1)}.{_VISION_BLOCK[m.group(2)]}.{m.group(3)}"] = value
                continue
        elif key.startswith("blip.text_encoder."):
            text[key[len("blip.text_encoder."):]] = value
            continue
        elif re.match(r"mlp\.layers\.[02467]\.(weight|bias)$", key):
            mlp[key[len("mlp.layers."):]] = value
            continue
        unknown.append(key)
    if unknown:
        raise UserError(f"ImageReward checkpoint has keys the mapping does not know: {unknown[:5]}")
    return vision, text, mlp


def configs_from_state(vision: dict, text: dict, arch: str | dict = "ImageReward-v1.0"):
    from transformers import BlipTextConfig, BlipVisionConfig

    heads = ARCHS.get(arch) if isinstance(arch, str) else arch
    if heads is None:
        raise UserError(f"unknown ImageReward architecture {arch!r}; known: {sorted(ARCHS)}")
    width_v, _, patch, _ = vision["embeddings.patch_embedding.weight"].shape
    grid = int(round((vision["embeddings.position_embedding"].shape[1] - 1) ** 0.5))
    layers_v = 1 + max(int(k.split(".")[2]) for k in vision if k.startswith("encoder.layers."))
    vocab, width_t = text["embeddings.word_embeddings.weight"].shape
    layers_t = 1 + max(int(k.split(".")[2]) for k in text if k.startswith("encoder.layer."))
    vision_config = BlipVisionConfig(
        hidden_size=width_v, intermediate_size=vision["encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=layers_v, num_attention_heads=heads["vision_heads"], image_size=grid * patch,
        patch_size=patch, layer_norm_eps=1e-6, hidden_act="gelu")
    text_config = BlipTextConfig(
        vocab_size=vocab, hidden_size=width_t, encoder_hidden_size=width_v, num_hidden_layers=layers_t,
        num_attention_heads=heads["text_heads"], intermediate_size=text["encoder.layer.0.intermediate.dense.weight"].shape[0],
        max_position_embeddings=text["embeddings.position_embeddings.weight"].shape[0], layer_norm_eps=1e-12,
        hidden_act="gelu", bos_token_id=None, sep_token_id=None, pad_token_id=0)
    return vision_config, text_config


def _load_strict(module: nn.Module, state: dict, what: str) -> None:
    expected = {k: v for k, v in module.state_dict().items() if not k.endswith("position_ids")}
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = [k for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or extra or wrong:
        raise UserError(f"ImageReward {what}: missing {missing[:3]}, unexpected {extra[:3]}, wrong shapes {wrong[:3]}")
    module.load_state_dict(state, strict=False, assign=True)


def load_imagereward(path: str | Path, arch: str | dict = "ImageReward-v1.0"):
    """(vision model, text model, head) with the checkpoint's weights, every key accounted for."""
    from transformers.models.blip.modeling_blip import BlipVisionModel
    from transformers.models.blip.modeling_blip_text import BlipTextModel

    vision_state, text_state, head_state = split_state(load_openclip_state(path))
    vision_config, text_config = configs_from_state(vision_state, text_state, arch)
    vision = BlipVisionModel(vision_config)
    text = BlipTextModel(text_config, add_pooling_layer=False)
    mlp = head(head_state)
    _load_strict(vision, vision_state, "image encoder")
    _load_strict(text, text_state, "text encoder")
    _load_strict(mlp, head_state, "head")
    return vision.eval().requires_grad_(False), text.eval().requires_grad_(False), mlp.eval().requires_grad_(False)


class ImageRewardScorer:
    def __init__(self, path: str, tokenizer_path: str | None, arch: str | dict = "ImageReward-v1.0",
                 precision: str = "float32", device: torch.device | str | None = None):
        from transformers import BertTokenizer

        self.vision, self.text, self.mlp = load_imagereward(path, arch)
        if not tokenizer_path:
            raise UserError(f"{path}: ImageReward needs `processor`: a BERT tokenizer directory (bert-base-uncased)")
        try:
            self.tokenizer = BertTokenizer.from_pretrained(tokenizer_path, local_files_only=True)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load the BERT tokenizer from {tokenizer_path}: {str(e).splitlines()[0]}") from None
        # BLIP's tokenizer: bert-base-uncased plus [DEC] and [ENC] (vocabulary 30524)
        self.tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})

        self.device = scorer_device(device)
        self.precision, self.dtype = precision, WEIGHTS_DTYPE[precision]
        for module in (self.vision, self.text, self.mlp):
            module.to(self.device, self.dtype)
        self.size = self.vision.config.image_size

    def pixel_values(self, images: torch.Tensor) -> torch.Tensor:
        """ImageReward's `_transform` on the uint8 image: PIL bicubic short side, centre crop, normalize."""

        return preprocess.normalize(preprocess.short_side_center_crop(preprocess.to_uint8(images), self.size))

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:

        with compute_context(self.precision, self.device):
            return self._score(images, prompts)

    def _score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        pixels = self.pixel_values(images).to(self.device, self.dtype)
        image_embeds = self.vision(pixel_values=pixels).last_hidden_state
        tokens = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=35,
                                return_tensors="pt").to(self.device)
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device)
        text = self.text(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                         encoder_hidden_states=image_embeds, encoder_attention_mask=image_mask).last_hidden_state
        raw = self.mlp(text[:, 0, :]).squeeze(-1).float()
        return ((raw - MEAN) / STD).cpu()


def imagereward(cfg: dict):

    s = model_settings(cfg, "imagereward")
    return ImageRewardScorer(s["path"], s.get("processor"), s.get("arch") or "ImageReward-v1.0",
                             reward_precision("imagereward", s), device=select_device(cfg))
