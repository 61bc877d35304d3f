"""The flow model: build the tiny offline FLUX, load any FluxPipeline, and call it the FLUX way.

`FlowModel` wraps a diffusers FluxPipeline (real classes at both scales) and exposes what the
rollout needs: prompt conditioning, packed initial noise, a velocity call that counts forward
evaluations (NFE), and decoding to images. The tiny model and FLUX.1-dev go through the same code.
"""
from __future__ import annotations

import json
import logging
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from egrpo import sde
from egrpo.errors import UserError

log = logging.getLogger(__name__)

# A base vocabulary for the tiny tokenizers, on top of the words of the prompt files.
BASE_WORDS = ("a an the of on in with and at to two three four one small large big tiny "
              "left right top bottom center middle background circle square triangle star "
              "red green blue yellow orange purple pink white black gray grey brown cyan").split()
_WORD = re.compile(r"[a-z]+")


def _words(texts: list[str]) -> list[str]:
    words = list(dict.fromkeys(BASE_WORDS))
    for text in texts:
        for w in _WORD.findall(text.lower()):
            if w not in words:
                words.append(w)
    return words


def bpe_vocabulary(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A deterministic CLIP-style BPE vocabulary: characters, then each word merged left to right.

    (The `tokenizers` BpeTrainer breaks ties between equally frequent pairs differently from run to
    run, which would make two builds of the same tiny model differ.) Unknown words fall back to
    characters, so every prompt can be encoded.
    """
    alphabet = "abcdefghijklmnopqrstuvwxyz"
    tokens = ["<|startoftext|>", "<|endoftext|>"] + list(alphabet) + [c + "</w>" for c in alphabet]
    merges: list[tuple[str, str]] = []
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        current = pieces[0]
        for piece in pieces[1:]:
            if (current, piece) not in merges:
                merges.append((current, piece))
            current += piece
            if current not in tokens:
                tokens.append(current)
    return {token: i for i, token in enumerate(tokens)}, merges


def build_tokenizers(texts: list[str], max_length: int):
    """A CLIP BPE tokenizer and a T5 Unigram tokenizer built offline from the words of `texts`."""
    from transformers import CLIPTokenizer, T5TokenizerFast

    words = _words(texts)
    vocab, merges = bpe_vocabulary(words)
    clip_tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("▁" + w, -1.0) for w in words] + [("▁", -4.0)] + [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    t5_tok = T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=max_length)
    return clip_tok, t5_tok


def build_tiny_pipeline(cfg: dict, texts: list[str]):
    """A FluxPipeline of tiny, randomly initialised instances of FLUX's real classes."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    t = cfg["model"]["tiny"]
    msl = cfg["model"]["max_sequence_length"]
    torch.manual_seed(t["seed"])
    clip_tok, t5_tok = build_tokenizers(texts, msl)
    hidden = t["text_hidden"]
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(clip_tok), hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=t["text_layers"], num_attention_heads=2, max_position_embeddings=msl,
        bos_token_id=clip_tok.bos_token_id, eos_token_id=clip_tok.eos_token_id,
        pad_token_id=clip_tok.eos_token_id))
    t5 = T5EncoderModel(T5Config(
        vocab_size=len(t5_tok), d_model=hidden, d_ff=2 * hidden, d_kv=hidden // 2,
        num_layers=t["text_layers"], num_heads=2, pad_token_id=0, eos_token_id=1))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=t["latent_channels"],
        down_block_types=["DownEncoderBlock2D"] * t["vae_blocks"],
        up_block_types=["UpDecoderBlock2D"] * t["vae_blocks"],
        block_out_channels=[t["vae_channels"]] * t["vae_blocks"], layers_per_block=1,
        norm_num_groups=min(4, t["vae_channels"]), scaling_factor=1.0, shift_factor=0.0)
    head_dim = t["head_dim"]
    # rotary axes (FLUX: 16, 56, 56 of 128): every part even, summing to the head dim
    a = 2 * max(1, head_dim // 8)
    b = 2 * ((head_dim - a) // 4)
    axes = [a, b, head_dim - a - b]
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * t["latent_channels"], num_layers=t["num_layers"],
        num_single_layers=t["num_single_layers"], attention_head_dim=head_dim,
        num_attention_heads=t["attention_heads"], joint_attention_dim=hidden,
        pooled_projection_dim=hidden, axes_dims_rope=axes, guidance_embeds=True)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=cfg["sampling"]["shift"], use_dynamic_shifting=False)
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=clip_tok,
                        text_encoder_2=t5, tokenizer_2=t5_tok, transformer=transformer)


def load_pipeline(cfg: dict, model_dir: str | os.PathLike | None = None):
    """Load a FluxPipeline from a local directory or a Hub id already in the local cache.

    The scheduler is pinned to the static shift of the config (FLUX.1-dev's own config turns on
    dynamic shifting, which would change the sigma schedule).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    source = model_dir or cfg["model"]["path"]
    if source is None:
        raise UserError("model.path: no model directory given")
    is_local = Path(source).exists()
    if not is_local and (str(source).startswith((".", "/", "~")) or str(source).count("/") != 1):
        raise UserError(f"model.path: {source} does not exist")
    dtype = getattr(torch, cfg["model"]["dtype"])
    try:
        pipe = FluxPipeline.from_pretrained(source, torch_dtype=dtype, local_files_only=True)
    except (OSError, ValueError) as e:
        where = "local directory" if is_local else "Hub id (not found in the local Hub cache)"
        raise UserError(f"model.path: cannot load a FluxPipeline from {where} {source}: "
                        f"{str(e).splitlines()[0]}") from None
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(
        pipe.scheduler.config, shift=cfg["sampling"]["shift"], use_dynamic_shifting=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@dataclass
class Conditioning:
    """Text conditioning of a batch: T5 embeddings [B, T, D], CLIP pooled [B, P], text ids [T, 3]."""
    prompt_embeds: torch.Tensor
    pooled: torch.Tensor
    text_ids: torch.Tensor

    def expand(self, n: int) -> "Conditioning":
        """Repeat a single-prompt conditioning n times along the batch."""
        assert self.prompt_embeds.shape[0] == 1
        return Conditioning(self.prompt_embeds.expand(n, -1, -1), self.pooled.expand(n, -1), self.text_ids)

    def select(self, index: int) -> "Conditioning":
        return Conditioning(self.prompt_embeds[index:index + 1], self.pooled[index:index + 1], self.text_ids)


class FlowModel:
    """FLUX transformer + VAE + text encoders with the calling conventions of FluxPipeline.

    Latents are FLUX's packed latents [B, L, 4*C] (2x2 patches of the VAE latent). `velocity`
    counts forward evaluations per sample in `nfe` (the rollout and the trainer read it).
    """

    def __init__(self, pipe, cfg: dict, device: torch.device | str | None = None, resolution: int | None = None,
                 guidance: float | None = None):
        from egrpo.device import select_device

        mcfg = cfg["model"]
        self.pipe = pipe
        self.device = torch.device(device) if device is not None else select_device(cfg)
        self.transformer = pipe.transformer
        self.resolution = resolution or cfg["sampling"]["resolution"]
        self.guidance = cfg["sampling"]["guidance"] if guidance is None else guidance
        self.max_sequence_length = min(mcfg["max_sequence_length"], pipe.tokenizer_2.model_max_length)
        factor = pipe.vae_scale_factor * 2
        if self.resolution % factor:
            raise UserError(f"sampling.resolution: {self.resolution} must be a multiple of {factor} for this model")
        self.latent_hw = self.resolution // pipe.vae_scale_factor  # unpacked latent height/width
        self.channels = pipe.transformer.config.in_channels  # packed channels = 4 * VAE latent channels
        self.num_tokens = (self.latent_hw // 2) ** 2
        self.img_ids = pipe._prepare_latent_image_ids(1, self.latent_hw // 2, self.latent_hw // 2,
                                                      self.device, self.transformer.dtype)
        self.compute_dtype = getattr(torch, mcfg["dtype"])  # bf16 compute over fp32 master weights
        self.decode_batch_size = mcfg.get("decode_batch_size", 64)
        self.offload_text_encoders = mcfg.get("offload_text_encoders", False)
        self.prompt_cache_size = mcfg.get("prompt_cache_size", 4096)
        self._prompt_cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = OrderedDict()
        self.round_timesteps = False     # feed int(1000*sigma)/1000 (set by the trainer from the recipe)
        self.compiled = None             # torch.compile'd transformer for calls without gradients (model.compile)
        self.reference = None            # frozen copy for KL under full fine-tuning (else: adapter off)
        self.nfe = 0                     # forward evaluations of the policy, per sample
        self.nfe_reference = 0           # forward evaluations of the reference policy (KL), per sample
        text_device = torch.device("cpu") if self.offload_text_encoders else self.device
        for module, where in ((pipe.vae, self.device), (pipe.text_encoder, text_device),
                              (pipe.text_encoder_2, text_device), (pipe.transformer, self.device)):
            module.to(where)
            module.requires_grad_(False)
        pipe.vae.eval(); pipe.text_encoder.eval(); pipe.text_encoder_2.eval()
        if mcfg.get("compile", False):
            self.compile()

    def compile(self) -> None:
        """torch.compile the transformer for the calls without gradients (rollouts, sampling); the
        compiled module shares the transformer's parameters, so it follows every optimizer step."""
        self.compiled = torch.compile(self.transformer)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> Conditioning:
        """Text conditioning of a batch of prompts, on the device. Each prompt is encoded once and
        kept on the CPU (the model.prompt_cache_size most recent); with model.offload_text_encoders
        the encoders visit the device only while new prompts are encoded."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self._prompt_cache))
        if missing:
            encoders = (self.pipe.text_encoder, self.pipe.text_encoder_2)
            if self.offload_text_encoders:
                for e in encoders:
                    e.to(self.device)
            try:
                embeds, pooled, text_ids = self.pipe.encode_prompt(
                    prompt=missing, prompt_2=None, device=self.device, num_images_per_prompt=1,
                    max_sequence_length=self.max_sequence_length)
            finally:
                if self.offload_text_encoders:
                    for e in encoders:
                        e.to("cpu")
            if self.prompt_cache_size == 0:  # no cache: the batch as encoded
                order = torch.tensor([missing.index(p) for p in prompts], device=embeds.device)
                return Conditioning(embeds[order], pooled[order], text_ids)
            for i, p in enumerate(missing):
                self._prompt_cache[p] = (embeds[i].cpu(), pooled[i].cpu(), text_ids.cpu())
        rows = []
        for p in prompts:
            self._prompt_cache.move_to_end(p)
            rows.append(self._prompt_cache[p])
        while len(self._prompt_cache) > max(self.prompt_cache_size, len(set(prompts))):
            self._prompt_cache.popitem(last=False)
        return Conditioning(torch.stack([r[0] for r in rows]).to(self.device),
                            torch.stack([r[1] for r in rows]).to(self.device), rows[0][2].to(self.device))

    def initial_noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Standard normal packed latents [n, L, C], drawn on the CPU for reproducibility."""
        noise = torch.randn(n, self.num_tokens, self.channels, generator=generator)  # cpu: drawn on the CPU for reproducibility, moved below
        return noise.to(self.device)

    def velocity(self, x: torch.Tensor, sigma: float | torch.Tensor, cond: Conditioning,
                 reference: bool = False) -> torch.Tensor:
        """v = transformer(x, timestep=sigma, guidance) for a batch; adds the batch size to `nfe`.

        reference=True evaluates the reference policy (the base model: LoRA adapter switched off,
        or the frozen copy under full fine-tuning) without gradients, counted in `nfe_reference`.
        """
        if reference:
            self.nfe_reference += x.shape[0]
            with torch.no_grad():
                if self.reference is not None:
                    return self._forward(self.reference, x, sigma, cond)
                self.transformer.disable_adapters()
                try:
                    return self._forward(self.transformer, x, sigma, cond)
                finally:
                    self.transformer.enable_adapters()
        self.nfe += x.shape[0]
        net = self.compiled if self.compiled is not None and not torch.is_grad_enabled() else self.transformer
        return self._forward(net, x, sigma, cond)

    def _forward(self, net, x: torch.Tensor, sigma: float | torch.Tensor, cond: Conditioning) -> torch.Tensor:
        batch = x.shape[0]
        if cond.prompt_embeds.shape[0] != batch:
            cond = cond.expand(batch)
        dtype = self.transformer.dtype
        sigma = sde.model_timestep(sigma, self.round_timesteps)
        if torch.is_tensor(sigma) and sigma.ndim == 1:  # one sigma per sample
            timestep = sigma.to(self.device, dtype)
        else:
            timestep = torch.full((batch,), float(sigma), device=self.device, dtype=dtype)
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((batch,), self.guidance, device=self.device, dtype=dtype)
        # trainable fp32 master weights (full or LoRA) compute in the model's dtype (bf16 at paper scale)
        with torch.autocast(self.device.type, dtype=self.compute_dtype, enabled=self.compute_dtype != torch.float32):
            v = net(hidden_states=x.to(dtype), timestep=timestep, guidance=guidance,
                    pooled_projections=cond.pooled.to(dtype), encoder_hidden_states=cond.prompt_embeds.to(dtype),
                    txt_ids=cond.text_ids, img_ids=self.img_ids, return_dict=False)[0]
        return v.float()

    @torch.no_grad()
    def decode(self, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """Packed latents [B, L, C] -> images [B, 3, H, W] in [0, 1] (float32, CPU), model.decode_batch_size
        images per VAE call."""
        vae = self.pipe.vae
        images = []
        for chunk in x.to(self.device).split(batch_size or self.decode_batch_size):
            lat = self.pipe._unpack_latents(chunk, self.resolution, self.resolution, self.pipe.vae_scale_factor)
            lat = lat / vae.config.scaling_factor + vae.config.shift_factor
            img = vae.decode(lat.to(vae.dtype), return_dict=False)[0]
            images.append((img.float() / 2 + 0.5).clamp(0, 1).cpu())
        return torch.cat(images)


# ---- fine-tuning state: LoRA adapters or full weights -------------------------------------------

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]


def add_lora(transformer, rank: int, alpha: float) -> None:
    """Attach a peft LoRA adapter to the attention projections of the FLUX transformer."""
    from peft import LoraConfig

    present = {name.split(".")[-1] if not name.endswith("to_out.0") else "to_out.0"
               for name, _ in transformer.named_modules()}
    targets = [t for t in LORA_TARGETS if t in present]
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets,
                                       init_lora_weights=True))


def trainable_state_dict(transformer, finetune: str) -> dict[str, torch.Tensor]:
    if finetune == "lora":
        from peft import get_peft_model_state_dict
        return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(transformer).items()}
    return {k: v.detach().cpu().contiguous() for k, v in transformer.state_dict().items()}


def save_policy(transformer, finetune: str, directory: Path, meta: dict, state: dict | None = None) -> None:
    """Write the policy's weights (safetensors) and meta.json into `directory`; `state`: weights
    already gathered (a sharded transformer's full state dict), else read from `transformer`."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    if state is None:
        state = trainable_state_dict(transformer, finetune)
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(directory / f"{finetune}.safetensors"))
    (directory / "meta.json").write_text(json.dumps({"finetune": finetune, **meta}, indent=2))


def load_policy(transformer, directory: str | os.PathLike) -> dict:
    """Apply a checkpoint written by `save_policy` to a freshly loaded base transformer."""
    from safetensors.torch import load_file

    directory = Path(directory)
    meta_path = directory / "meta.json"
    if not meta_path.is_file():
        raise UserError(f"checkpoint: {directory} has no meta.json (not a checkpoint written by egrpo train)")
    meta = json.loads(meta_path.read_text())
    state = load_file(str(directory / f"{meta['finetune']}.safetensors"))
    if meta["finetune"] == "lora":
        from peft import set_peft_model_state_dict
        add_lora(transformer, meta["lora_rank"], meta["lora_alpha"])
        result = set_peft_model_state_dict(transformer, state)
        if result.unexpected_keys:
            raise UserError(f"checkpoint: unexpected LoRA keys in {directory}: {result.unexpected_keys[:3]}")
    else:
        transformer.load_state_dict(state, strict=True)
    return meta


def run_build_model(cfg: dict, out_dir) -> Path:
    """Stage `build-model`: save the tiny FLUX (tokenizers built from the prompt files) to out_dir."""
    from egrpo.io import atomic_dir, load_prompts

    if cfg["model"]["source"] != "tiny":
        raise UserError("model.source: build-model only builds the tiny model; a pretrained model is used in place "
                        f"from model.path ({cfg['model']['path']})")
    texts = [p.text for key in ("train", "eval") for p in load_prompts(cfg["prompts"][key], f"prompts.{key}")]
    pipe = build_tiny_pipeline(cfg, texts)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
    n_params = sum(p.numel() for p in pipe.transformer.parameters())
    log.info("tiny FLUX saved to %s (transformer: %d parameters)", out_dir, n_params)
    return out_dir
