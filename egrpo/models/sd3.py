"""Stable Diffusion 3 / 3.5 (SD3.5-Medium): `StableDiffusion3Pipeline`.

Guidance is true classifier-free guidance (`sampling.guidance` = the CFG scale w; 1 turns it off):
every velocity is v_uncond + w (v_text - v_uncond), the negative prompt (`sampling.negative_prompt`,
"" in Flow-GRPO) and the prompt evaluated as one batch of 2B, counted as two evaluations per
sample, in the rollout and in training alike (Flow-GRPO trains with the guided velocity,
`train.cfg`; the gradient through the unconditional half: `train.cfg_uncond_gradient`). Latents are the VAE's [B, C, H/8, W/8] (the transformer patchifies them itself);
the timestep is sigma x 1000, not cast by the transformer; the VAE decodes latents / scaling_factor
+ shift_factor. The pipeline's schedule is the scheduler's own spacing, `set_timesteps(N)` with
its static shift (3.0 for SD3.5), which Flow-GRPO samples with: `sampling.schedule: pipeline`.
"""
from __future__ import annotations

import torch

from egrpo.models.base import Conditioning, TrueCFG, check_resolution
from egrpo.models.tokenizers import build_tokenizers


class SD3(TrueCFG):
    name = "sd3"
    pipeline_class = "StableDiffusion3Pipeline"
    # flow_grpo scripts/train_sd3.py: the joint attention's projections
    lora_targets = ("attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
                    "attn.to_k", "attn.to_out.0", "attn.to_q", "attn.to_v")
    block_lists = ("transformer_blocks",)

    def __init__(self, pipe, cfg, resolution, guidance, device):
        super().__init__(pipe, cfg, resolution, guidance, device)
        patch = pipe.transformer.config.patch_size
        check_resolution(resolution, pipe.vae_scale_factor * patch)
        self.latent_hw = resolution // pipe.vae_scale_factor
        self.channels = pipe.transformer.config.in_channels
        self.max_sequence_length = min(cfg["model"]["max_sequence_length"], pipe.tokenizer_3.model_max_length)

    @classmethod
    def build_tiny(cls, cfg: dict, texts: list[str]):
        from diffusers import (
            AutoencoderKL,
            FlowMatchEulerDiscreteScheduler,
            SD3Transformer2DModel,
            StableDiffusion3Pipeline,
        )
        from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

        t = cfg["model"]["tiny"]
        msl = cfg["model"]["max_sequence_length"]
        torch.manual_seed(t["seed"])
        clip_tok, t5_tok = build_tokenizers(texts, msl)
        hidden = t["text_hidden"]

        def clip():  # CLIP-L and CLIP-G: two text encoders with projection, pooled outputs concatenated
            return CLIPTextModelWithProjection(CLIPTextConfig(
                vocab_size=len(clip_tok), hidden_size=hidden, intermediate_size=2 * hidden, projection_dim=hidden,
                num_hidden_layers=t["text_layers"], num_attention_heads=2, max_position_embeddings=msl,
                bos_token_id=clip_tok.bos_token_id, eos_token_id=clip_tok.eos_token_id,
                pad_token_id=clip_tok.eos_token_id))

        clip_l, clip_g = clip(), clip()
        t5 = T5EncoderModel(T5Config(
            vocab_size=len(t5_tok), d_model=hidden, d_ff=2 * hidden, d_kv=hidden // 2,
            num_layers=t["text_layers"], num_heads=2, pad_token_id=0, eos_token_id=1))
        vae = AutoencoderKL(  # SD3's VAE has a shift: the pipeline decodes latents / scale + shift
            in_channels=3, out_channels=3, latent_channels=t["latent_channels"],
            down_block_types=["DownEncoderBlock2D"] * t["vae_blocks"],
            up_block_types=["UpDecoderBlock2D"] * t["vae_blocks"],
            block_out_channels=[t["vae_channels"]] * t["vae_blocks"], layers_per_block=1,
            norm_num_groups=min(4, t["vae_channels"]), scaling_factor=1.5, shift_factor=0.1)
        latent_hw = cfg["sampling"]["resolution"] // 2 ** (t["vae_blocks"] - 1)
        transformer = SD3Transformer2DModel(
            sample_size=latent_hw, patch_size=2, in_channels=t["latent_channels"],
            num_layers=t["num_layers"] + t["num_single_layers"], attention_head_dim=t["head_dim"],
            num_attention_heads=t["attention_heads"], joint_attention_dim=hidden,
            caption_projection_dim=t["attention_heads"] * t["head_dim"], pooled_projection_dim=2 * hidden,
            out_channels=t["latent_channels"], pos_embed_max_size=64, qk_norm="rms_norm",
            dual_attention_layers=(0,))  # SD3.5's: an extra self-attention in the first block(s)
        scheduler = FlowMatchEulerDiscreteScheduler(shift=cfg["sampling"]["shift"])
        return StableDiffusion3Pipeline(transformer=transformer, scheduler=scheduler, vae=vae,
                                        text_encoder=clip_l, tokenizer=clip_tok, text_encoder_2=clip_g,
                                        tokenizer_2=clip_tok, text_encoder_3=t5, tokenizer_3=t5_tok)

    def text_encoders(self):
        return [self.pipe.text_encoder, self.pipe.text_encoder_2, self.pipe.text_encoder_3]

    def encode(self, prompts):
        embeds, negative, pooled, negative_pooled = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, device=self.device, num_images_per_prompt=1,
            do_classifier_free_guidance=self.cfg_on, negative_prompt=[self.negative_prompt] * len(prompts),
            max_sequence_length=self.max_sequence_length)
        rows = [{"prompt_embeds": embeds[i], "pooled": pooled[i]} for i in range(len(prompts))]
        if self.cfg_on:
            for i, row in enumerate(rows):
                row.update(negative_embeds=negative[i], negative_pooled=negative_pooled[i])
        return rows, {}

    @property
    def latent_shape(self):
        return (self.channels, self.latent_hw, self.latent_hw)

    def pipeline_sigmas(self, num_steps):
        scheduler = type(self.pipe.scheduler).from_config(self.pipe.scheduler.config)
        scheduler.set_timesteps(num_steps)
        return scheduler.sigmas.to(torch.float64)

    def predict(self, net, x, sigma, cond: Conditioning):
        rows = cond.rows
        timestep = (sigma * 1000).float()
        if not self.cfg_on:
            return net(hidden_states=x, timestep=timestep, encoder_hidden_states=rows["prompt_embeds"],
                       pooled_projections=rows["pooled"], return_dict=False)[0]
        out = net(hidden_states=torch.cat([x, x]), timestep=torch.cat([timestep, timestep]),
                  encoder_hidden_states=torch.cat([rows["negative_embeds"], rows["prompt_embeds"]]),
                  pooled_projections=torch.cat([rows["negative_pooled"], rows["pooled"]]), return_dict=False)[0]
        uncond, text = out.chunk(2)
        if not self.uncond_gradient:   # train.cfg_uncond_gradient false: flow_grpo ac4c86e's detach
            uncond = uncond.detach()
        return uncond + self.guidance * (text - uncond)

    def pipeline_images(self, prompts, latents, num_steps):
        return self.pipe(prompts, negative_prompt=[self.negative_prompt] * len(prompts), height=self.resolution,
                         width=self.resolution, num_inference_steps=num_steps, guidance_scale=self.guidance,
                         latents=latents, max_sequence_length=self.max_sequence_length, output_type="pt").images

    def decode(self, latents):
        vae = self.pipe.vae
        lat = latents / vae.config.scaling_factor + vae.config.shift_factor
        return vae.decode(lat.to(vae.dtype), return_dict=False)[0]
