"""OpenCLIP checkpoints (HPS v2.1, OpenCLIP CLIP score) loaded into transformers' CLIPModel.

open_clip cannot run beside the CPU torch build (its torchvision import fails), so the original
OpenCLIP state dict is mapped key by key onto `CLIPModel`, strictly: every key of the checkpoint
is consumed and every parameter of the model is filled. Layout of an OpenCLIP ViT (text tower
and `visual.` tower share the residual block layout):

    token_embedding.weight, positional_embedding, ln_final.*, text_projection [width, embed]
    transformer.resblocks.<i>.{ln_1, attn.in_proj_{weight,bias}, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}
    visual.{class_embedding, positional_embedding, conv1.weight, ln_pre, ln_post, proj [width, embed]}
    visual.transformer.resblocks.<i>.*, logit_scale

Images and prompts are preprocessed as the original packages do (egrpo/rewards/preprocess.py):
HPS letterboxes (hpsv2), the OpenCLIP CLIP score resizes the short side and centre-crops
(open_clip); both clean and tokenize prompts as open_clip does.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from egrpo.errors import UserError
from egrpo.rewards import preprocess
from egrpo.rewards.common import WEIGHTS_DTYPE, compute_context, model_settings, reward_precision, scorer_device
from egrpo.rewards.preprocess import openclip_tokenize
from egrpo.runtime.device import select_device

# attention heads are the one thing the weights do not tell; ViT-H-14: 16 and 16
ARCHS = {"ViT-H-14": {"vision_heads": 16, "text_heads": 16}}
_BLOCK = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
          "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
_IGNORED = {"attn_mask", "visual.attn_mask"}  # buffers some OpenCLIP versions save; not weights


def load_openclip_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an OpenCLIP checkpoint safely (safetensors, or torch.load with weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"OpenCLIP checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - a pickle that is not plain tensors
            raise UserError(f"{path}: not a plain tensor checkpoint ({str(e).splitlines()[0]})") from None
    state = state.get("state_dict", state)
    return {k.removeprefix("module."): v for k, v in state.items()}


def _layers(state: dict, prefix: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.", k))}
    return max(found) + 1 if found else 0


def config_from_state(state: dict, arch: str | dict = "ViT-H-14", activation: str = "gelu"):
    """A CLIPConfig whose sizes are read off the checkpoint's shapes (heads from `arch`; activation
    quick_gelu for OpenCLIP models trained with it, e.g. DFN5B)."""
    from transformers import CLIPConfig

    heads = ARCHS[arch] if isinstance(arch, str) else arch
    if isinstance(arch, str) and arch not in ARCHS:
        raise UserError(f"unknown OpenCLIP architecture {arch!r}; known: {sorted(ARCHS)}")
    width_v, _, patch, _ = state["visual.conv1.weight"].shape
    grid = int(round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5))
    vocab, width_t = state["token_embedding.weight"].shape
    text = dict(vocab_size=vocab, hidden_size=width_t, num_hidden_layers=_layers(state, ""),
                intermediate_size=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                num_attention_heads=heads["text_heads"], max_position_embeddings=state["positional_embedding"].shape[0],
                # eos_token_id 2 makes CLIPModel pool at the argmax token id, as OpenCLIP does
                hidden_act=activation, layer_norm_eps=1e-5, eos_token_id=2, bos_token_id=vocab - 2)
    vision = dict(hidden_size=width_v, num_hidden_layers=_layers(state, "visual."), patch_size=patch,
                  image_size=grid * patch, num_attention_heads=heads["vision_heads"], hidden_act=activation,
                  intermediate_size=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0], layer_norm_eps=1e-5)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=state["text_projection"].shape[1])


_SIMPLE = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "logit_scale": "logit_scale",
}
_TRANSPOSED = {"text_projection": "text_projection.weight", "visual.proj": "visual_projection.weight"}


def openclip_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map every OpenCLIP key to CLIPModel's; raise on a key it does not know (strict)."""
    out, unknown = {}, []
    for key, value in state.items():
        if key in _IGNORED:
            continue
        if key in _SIMPLE:
            out[_SIMPLE[key]] = value
            continue
        if key in _TRANSPOSED:  # OpenCLIP multiplies x @ proj; nn.Linear stores proj transposed
            out[_TRANSPOSED[key]] = value.t().contiguous()
            continue
        tower, rest = ("vision_model", key[len("visual."):]) if key.startswith("visual.") else ("text_model", key)
        m = re.match(r"transformer\.resblocks\.(\d+)\.(.+)$", rest)
        if not m:
            unknown.append(key)
            continue
        layer, tail = m.groups()
        base = f"{tower}.encoder.layers.{layer}"
        if tail in ("attn.in_proj_weight", "attn.in_proj_bias"):  # fused q, k, v
            kind = tail.rsplit("_", 1)[1]
            for name, part in zip("qkv", value.chunk(3, dim=0)):
                out[f"{base}.self_attn.{name}_proj.{kind}"] = part
            continue
        module, _, kind = tail.rpartition(".")
        if module in _BLOCK and kind in ("weight", "bias"):
            out[f"{base}.{_BLOCK[module]}.{kind}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise UserError(f"OpenCLIP checkpoint has keys the mapping does not know: {unknown[:5]}")
    return out


def load_openclip_as_clipmodel(path: str | Path, arch: str | dict = "ViT-H-14", dtype: torch.dtype = torch.float32,
                               activation: str = "gelu"):
    """CLIPModel with the OpenCLIP checkpoint's weights; every key consumed, none missing."""
    from transformers import CLIPModel

    state = load_openclip_state(path)
    config = config_from_state(state, arch, activation)
    with torch.device("meta"):
        model = CLIPModel(config)
    mapped = openclip_to_hf(state)
    expected = dict(model.state_dict())
    missing = sorted(k for k in expected if k not in mapped and not k.endswith("position_ids"))
    extra = sorted(k for k in mapped if k not in expected)
    wrong = [k for k in mapped if k in expected and tuple(mapped[k].shape) != tuple(expected[k].shape)]
    if missing or extra or wrong:
        raise UserError(f"{path}: does not match the OpenCLIP layout: missing {missing[:3]}, unexpected {extra[:3]}, "
                        f"wrong shapes {wrong[:3]}")
    model.load_state_dict(mapped, strict=False, assign=True)
    for name, buffer in model.named_buffers():  # position ids are not in the checkpoint
        if buffer.is_meta:
            module = model.get_submodule(name.rsplit(".", 1)[0])
            setattr(module, name.rsplit(".", 1)[1], torch.arange(buffer.shape[-1], device="cpu").expand(buffer.shape).clone())  # on the CPU: before the model moves
    return model.to(dtype).eval().requires_grad_(False)


class OpenCLIPScorer:
    """cosine(image, text) of an OpenCLIP model loaded into CLIPModel, with open_clip's text rules.

    letterbox=True: HPS v2.1's image rule (hpsv2's ResizeMaxSize); False: open_clip's usual
    short-side resize and centre crop (the CLIP score); resize_mode "squash": both sides to the
    model's size (DFN5B). All in egrpo/rewards/preprocess.py.
    """

    def __init__(self, path: str, tokenizer_path: str | None, arch: str | dict = "ViT-H-14",
                 precision: str = "float32", letterbox: bool = True, device: torch.device | str | None = None,
                 activation: str = "gelu", resize_mode: str | None = None, mean=None, std=None):
        from transformers import CLIPTokenizer

        self.model = load_openclip_as_clipmodel(path, arch, WEIGHTS_DTYPE[precision], activation)
        self.resize_mode = resize_mode or ("longest" if letterbox else "shortest")
        self.mean, self.std = mean, std
        self.device = scorer_device(device)
        self.model.to(self.device)
        if not tokenizer_path:
            raise UserError(f"{path}: an OpenCLIP reward needs `processor`: a directory (or cached Hub id) with "
                            "the CLIP BPE tokenizer, e.g. laion/CLIP-ViT-H-14-laion2B-s32B-b79K")
        try:
            self.tokenizer = CLIPTokenizer.from_pretrained(tokenizer_path, local_files_only=True)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load the CLIP tokenizer from {tokenizer_path}: {str(e).splitlines()[0]}") from None
        self.size = self.model.config.vision_config.image_size
        self.context = self.model.config.text_config.max_position_embeddings
        self.precision, self.letterbox = precision, letterbox

    def pixel_values(self, images: torch.Tensor) -> torch.Tensor:

        pixels = preprocess.to_uint8(images)
        resize = {"longest": preprocess.letterbox, "shortest": preprocess.short_side_center_crop,
                  "squash": preprocess.squash}[self.resize_mode]
        return preprocess.normalize(resize(pixels, self.size), self.mean or preprocess.OPENAI_MEAN,
                                    self.std or preprocess.OPENAI_STD)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:

        pixels = self.pixel_values(images).to(self.device, self.model.dtype)
        tokens = openclip_tokenize(self.tokenizer, list(prompts), self.context).to(self.device)
        with compute_context(self.precision, self.device):
            image = self.model.get_image_features(pixel_values=pixels)
            text = self.model.get_text_features(input_ids=tokens)
        image = getattr(image, "pooler_output", image)
        text = getattr(text, "pooler_output", text)
        return torch.nn.functional.cosine_similarity(image.float(), text.float(), dim=-1).cpu()


def hps(cfg: dict):
    """HPS v2.1: the HPS checkpoint (HPS_v2.1_compressed.pt, OpenCLIP ViT-H-14) as a cosine score."""

    s = model_settings(cfg, "hps")
    return OpenCLIPScorer(s["path"], s.get("processor"), s.get("arch") or "ViT-H-14", reward_precision("hps", s),
                          letterbox=True, device=select_device(cfg))


def clip_dfn(cfg: dict):
    """The CLIP score of the papers' Table 1 (VisualGRPO scripts/evaluation/test_clip_score.py):
    open_clip `create_model_from_pretrained('local-dir:<path>')` on DFN5B CLIP ViT-H-14-378
    (apple/DFN5B-CLIP-ViT-H-14-378), its validation transform, open_clip's ViT-H-14 tokenizer, the
    cosine of the normalized embeddings. reward_models.clip_dfn.path is that local directory: its
    open_clip_config.json gives the architecture (quick_gelu, image size, heads = width /
    head_width) and the preprocessing (resize_mode, interpolation, mean, std); the weights are
    open_clip_model.safetensors or open_clip_pytorch_model.bin beside it."""
    import json

    s = model_settings(cfg, "clip_dfn")
    directory = Path(s["path"])
    config_file = directory / "open_clip_config.json"
    if not config_file.is_file():
        raise UserError(f"reward_models.clip_dfn.path: {directory} has no open_clip_config.json (the local copy of "
                        "apple/DFN5B-CLIP-ViT-H-14-378, docs/paper-data.md)")
    config = json.loads(config_file.read_text())
    model_cfg, pre = config.get("model_cfg", {}), config.get("preprocess_cfg", {})
    vision, text = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
    heads = {"vision_heads": vision.get("width", 1280) // vision.get("head_width", 64),
             "text_heads": text.get("heads", 16)}
    weights = next((directory / n for n in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
                    if (directory / n).is_file()), None)
    if weights is None:
        raise UserError(f"reward_models.clip_dfn.path: {directory} has neither open_clip_model.safetensors nor "
                        "open_clip_pytorch_model.bin")
    if pre.get("interpolation", "bicubic") != "bicubic":
        raise UserError(f"{config_file}: interpolation {pre['interpolation']!r}; egrpo reproduces bicubic only")
    return OpenCLIPScorer(str(weights), s.get("processor"), heads, reward_precision("clip_dfn", s),
                          device=select_device(cfg), activation="quick_gelu" if model_cfg.get("quick_gelu") else "gelu",
                          resize_mode=pre.get("resize_mode", "shortest"), mean=pre.get("mean"), std=pre.get("std"))
