"""FLUX (FLUX.1-dev, and the tiny world): `FluxPipeline`.

Guidance is FLUX.1-dev's distilled guidance embedding (`sampling.guidance`, one transformer call
per step); latents are packed 2x2 patches [B, (H/16)(W/16), 4C]; the transformer takes the
timestep as sigma in fp32 (the official trainers feed int(1000 sigma)/1000; it multiplies by 1000
itself after casting to its first layer's output dtype); the pipeline's own schedule is
sigmas = linspace(1, 1/N, N) with the dynamic shift of its scheduler config (FLUX.1-dev's turns it
on; the official GRPO trainers use the static shift instead: `sampling.schedule: static`).
"""
from __future__ import annotations

import torch

from egrpo.models.base import Conditioning, Family, check_resolution, shifted_pipeline_sigmas
from egrpo.models.tokenizers import build_tokenizers


class Flux(Family):
    name = "flux"
    pipeline_class = "FluxPipeline"
    # the attention projections of both kinds of block (VisualGRPO / DanceGRPO LoRA targets)
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
    block_lists = ("transformer_blocks", "single_transformer_blocks")

    def __init__(self, pipe, cfg, resolution, guidance, device):
        super().__init__(pipe, cfg, resolution, guidance, device)
        check_resolution(resolution, pipe.vae_scale_factor * 2)
        self.latent_hw = resolution // pipe.vae_scale_factor          # unpacked latent height/width
        self.channels = pipe.transformer.config.in_channels          # packed: 4 x the VAE's latent channels
        self.num_tokens = (self.latent_hw // 2) ** 2
        self.max_sequence_length = min(cfg["model"]["max_sequence_length"], pipe.tokenizer_2.model_max_length)
        self.img_ids = pipe._prepare_latent_image_ids(1, self.latent_hw // 2, self.latent_hw // 2, device,
                                                      torch.float32)

    @classmethod
    def build_tiny(cls, cfg: dict, texts: list[str]):
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
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=4 * t["latent_channels"], num_layers=t["num_layers"],
            num_single_layers=t["num_single_layers"], attention_head_dim=t["head_dim"],
            num_attention_heads=t["attention_heads"], joint_attention_dim=hidden,
            pooled_projection_dim=hidden, axes_dims_rope=rope_axes(t["head_dim"]), guidance_embeds=True)
        scheduler = FlowMatchEulerDiscreteScheduler(shift=cfg["sampling"]["shift"], use_dynamic_shifting=False)
        return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=clip_tok,
                            text_encoder_2=t5, tokenizer_2=t5_tok, transformer=transformer)

    def text_encoders(self):
        return [self.pipe.text_encoder, self.pipe.text_encoder_2]

    def encode(self, prompts):
        embeds, pooled, text_ids = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, device=self.device, num_images_per_prompt=1,
            max_sequence_length=self.max_sequence_length)
        return [{"prompt_embeds": e, "pooled": p} for e, p in zip(embeds, pooled)], {"text_ids": text_ids}

    @property
    def latent_shape(self):
        return (self.num_tokens, self.channels)

    def pipeline_sigmas(self, num_steps):
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        return shifted_pipeline_sigmas(self, num_steps, calculate_shift)

    def predict(self, net, x, sigma, cond: Conditioning):
        batch = x.shape[0]
        guidance = None
        if self.pipe.transformer.config.guidance_embeds:
            guidance = torch.full((batch,), self.guidance, device=x.device, dtype=torch.float32)
        return net(hidden_states=x, timestep=sigma.float(), guidance=guidance,
                   pooled_projections=cond.rows["pooled"], encoder_hidden_states=cond.rows["prompt_embeds"],
                   txt_ids=cond.shared["text_ids"], img_ids=self.img_ids, return_dict=False)[0]

    def pipeline_images(self, prompts, latents, num_steps):
        return self.pipe(prompts, height=self.resolution, width=self.resolution, num_inference_steps=num_steps,
                         guidance_scale=self.guidance, latents=latents, max_sequence_length=self.max_sequence_length,
                         output_type="pt").images

    def decode(self, latents):
        vae = self.pipe.vae
        lat = self.pipe._unpack_latents(latents, self.resolution, self.resolution, self.pipe.vae_scale_factor)
        lat = lat / vae.config.scaling_factor + vae.config.shift_factor
        return vae.decode(lat.to(vae.dtype), return_dict=False)[0]


def rope_axes(head_dim: int) -> list[int]:
    """Rotary axes (FLUX: 16, 56, 56 of 128): every part even, summing to the head dim."""
    a = 2 * max(1, head_dim // 8)
    b = 2 * ((head_dim - a) // 4)
    return [a, b, head_dim - a - b]
