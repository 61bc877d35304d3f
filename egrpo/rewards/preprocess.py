"""What each original reward package does to an image and a prompt before its model sees them.

A reward is its weights *and* its preprocessing: the same model scores a letterboxed image and a
centre-cropped one differently. Every rule here is the original's, reproduced from its code:

    images    the originals score PIL images, i.e. uint8 pixels: x_uint8 = round(255 * clamp(x, 0, 1))
              (diffusers' `numpy_to_pil`, which DanceGRPO / VisualGRPO call before scoring).

    letterbox (HPS v2.1: hpsv2 1.2.0 `ResizeMaxSize`, its `light_augmentation` validation transform)
              ToTensor (x_uint8 / 255), then a bicubic resize of BOTH sides by s = size / max(H, W) to
              (round(H s), round(W s)) on the float tensor (torchvision >= 0.17: antialias on, no
              clamp, values may leave [0, 1]), then black padding to size x size:
              left = (size - W')//2, top = (size - H')//2, the rest right / bottom.

    short-side crop (ImageReward 1.5 `_transform`; open_clip's validation transform for the `clip`
              reward: torchvision `Resize(size, BICUBIC)` + `CenterCrop(size)` on the PIL image)
              short side -> size, long side -> int(size * long / short) (truncated), PIL bicubic on
              uint8 (so the result is rounded to uint8 again), then a crop at
              top = round((H' - size) / 2), left = round((W' - size) / 2) (Python's round, half to even),
              then ToTensor.

    normalize (x - mean) / std with OpenAI CLIP's mean and std (all three originals).

    open_clip text (HPS and the OpenCLIP `clip` score: open_clip's `SimpleTokenizer`)
              ftfy.fix_text, html.unescape twice, strip, every whitespace run -> one space, lower case;
              then byte-level BPE; tokens = [sot] + bpe[: context - 2] + [eot], zero padded to `context`
              (a prompt longer than context - 2 tokens keeps its first context - 2).

PickScore's published scoring code uses transformers' CLIPProcessor, which `CLIPScorer` calls as is.
"""
from __future__ import annotations

import html
import re

import torch

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images [B, 3, H, W] in [0, 1] -> the uint8 pixels a PIL image of them holds."""
    return (images.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)


def letterbox_geometry(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """(resized height, resized width, top padding, left padding) of hpsv2's ResizeMaxSize."""
    scale = size / float(max(height, width))
    new_h, new_w = round(height * scale), round(width * scale)
    return new_h, new_w, (size - new_h) // 2, (size - new_w) // 2


def letterbox(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float [B, 3, size, size]: longest side to `size`, black padding (HPS).

    hpsv2 skips resize and padding when the longest side already equals `size`; a non-square image
    would then not fit the model at all, so padding is applied there too (square images: identical).
    """
    import torch.nn.functional as F

    x = pixels.float() / 255
    h, w = x.shape[-2:]
    new_h, new_w, top, left = letterbox_geometry(h, w, size)
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
    return F.pad(x, (left, size - new_w - left, top, size - new_h - top), value=0.0)


def short_side_geometry(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """(resized height, resized width, crop top, crop left) of torchvision's Resize(size) + CenterCrop(size)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    return new_h, new_w, int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))


def short_side_center_crop(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float [B, 3, size, size] in [0, 1]: PIL bicubic resize of the short side, centre crop."""
    import numpy as np
    from PIL import Image

    h, w = pixels.shape[-2:]
    new_h, new_w, top, left = short_side_geometry(h, w, size)
    out = []
    for image in pixels:
        pil = Image.fromarray(image.permute(1, 2, 0).numpy())
        if (new_h, new_w) != (h, w):
            pil = pil.resize((new_w, new_h), Image.BICUBIC)
        pil = pil.crop((left, top, left + size, top + size))
        out.append(torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1))
    return torch.stack(out).float() / 255


def squash(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float [B, 3, size, size] in [0, 1]: both sides to `size` with PIL
    bicubic on uint8 (open_clip's `resize_mode: squash`, torchvision Resize((size, size)) on a PIL
    image: the DFN5B CLIP models' validation transform), no crop."""
    import numpy as np
    from PIL import Image

    out = []
    for image in pixels:
        pil = Image.fromarray(image.permute(1, 2, 0).numpy())
        if pil.size != (size, size):
            pil = pil.resize((size, size), Image.BICUBIC)
        out.append(torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1))
    return torch.stack(out).float() / 255


def normalize(x: torch.Tensor, mean=OPENAI_MEAN, std=OPENAI_STD) -> torch.Tensor:
    return (x - torch.tensor(mean, device="cpu").view(1, 3, 1, 1)) / torch.tensor(std, device="cpu").view(1, 3, 1, 1)  # on the CPU: pixels are prepared on the CPU


def openclip_clean(text: str) -> str:
    """open_clip's text cleaning: ftfy, HTML entities (twice), whitespace runs, lower case."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip().lower()


# open_clip's SimpleTokenizer pattern (tokenizer.py): its two special-token strings, then the words
OPENCLIP_PIECES = r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def openclip_tokenize(tokenizer, prompts: list[str], context: int) -> torch.Tensor:
    """open_clip's `tokenize` with a transformers CLIP BPE tokenizer (same vocabulary and merges):
    [sot] + BPE(cleaned prompt) + [eot], truncated to `context` with eot last, zero padded.

    The cleaned prompt is split by open_clip's own pattern, as its SimpleTokenizer does: the typed
    strings "<start_of_text>" and "<end_of_text>" are its special tokens (open_clip's BPE cache maps
    them to sot and eot), every other piece is BPE-encoded on its own as text. So transformers'
    special-token strings are text whatever pre-tokenizer it picks: a typed "<|endoftext|>" is the
    pieces "<|", "endoftext", "|>", not the end of the prompt, and the laion ViT-H-14 tokenizer's
    pad "!" does not turn "amazing!!!" into pad ids."""
    import regex

    sot, eot = tokenizer.bos_token_id, tokenizer.eos_token_id
    pattern = regex.compile(OPENCLIP_PIECES, regex.IGNORECASE)
    out = torch.zeros(len(prompts), context, dtype=torch.long, device="cpu")  # on the CPU: token ids, moved by the scorer
    for i, prompt in enumerate(prompts):
        bpe = []
        for piece in pattern.findall(openclip_clean(prompt)):
            if piece in ("<start_of_text>", "<end_of_text>"):
                bpe.append(sot if piece == "<start_of_text>" else eot)
            else:
                bpe += tokenizer(piece, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        # open_clip truncates [sot] + bpe + [eot] to `context` and sets the last to eot
        ids = ([sot] + bpe + [eot])[:context]
        ids[-1] = eot
        out[i, :len(ids)] = torch.tensor(ids, device="cpu")  # on the CPU: token ids
    return out
