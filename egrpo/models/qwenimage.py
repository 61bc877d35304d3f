"""Qwen-Image: `QwenImagePipeline`.

Prompts are wrapped in the pipeline's chat template and encoded by Qwen2.5-VL; the template's first
tokens (the system prompt) are dropped, so prompts have different lengths: a batch is padded and
masked (`encoder_hidden_states_mask`), which leaves each sample's result unchanged. Guidance is true
CFG with the pipeline's norm rescale: v = c * |v_text| / |c|, c = v_neg + w (v_text - v_neg) (the
norm over channels, per token), `sampling.guidance` = w (1 turns it off), the negative prompt
`sampling.negative_prompt` (" " in Flow-GRPO); prompt and negative prompt run as one batch of 2B,
two evaluations per sample. Latents are packed 2x2 patches [B, (H/16)(W/16), 4C]; the timestep is
sigma, fed in fp32 (the transformer casts it to its first layer's output dtype); the VAE (a causal 3D
one) decodes latents * std + mean as one frame. The pipeline's schedule: sigmas = linspace(1, 1/N, N)
with the exponential dynamic shift mu of the image's token count and the terminal stretch of its
scheduler config (`sampling.schedule: pipeline`).
"""
from __future__ import annotations

import torch

from egrpo.models.base import Conditioning, TrueCFG, check_resolution, shifted_pipeline_sigmas
from egrpo.models.flux import rope_axes
from egrpo.models.tokenizers import build_qwen_tokenizer

# QwenImagePipeline's chat template and the number of its leading tokens it drops (its system
# prompt: 34 tokens with Qwen2.5-VL's tokenizer); the tiny tokenizer gives the prefix as many
# (both are checked against the pipeline)
PROMPT_TEMPLATE = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, "
                   "text, spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}"
                   "<|im_end|>\n<|im_start|>assistant\n")
PROMPT_TEMPLATE_START = 34


class QwenImage(TrueCFG):
    name = "qwenimage"
    pipeline_class = "QwenImagePipeline"
    # flow_grpo scripts/train_qwenimage.py: the joint attention's projections and both MLPs
    lora_targets = ("attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0", "attn.add_k_proj", "attn.add_q_proj",
                    "attn.add_v_proj", "attn.to_add_out", "img_mlp.net.0.proj", "img_mlp.net.2",
                    "txt_mlp.net.0.proj", "txt_mlp.net.2")
    block_lists = ("transformer_blocks",)

    def __init__(self, pipe, cfg, resolution, guidance, device):
        super().__init__(pipe, cfg, resolution, guidance, device)
        check_resolution(resolution, pipe.vae_scale_factor * 2)
        self.latent_hw = resolution // pipe.vae_scale_factor
        self.channels = pipe.transformer.config.in_channels
        self.num_tokens = (self.latent_hw // 2) ** 2
        self.max_sequence_length = min(cfg["model"]["max_sequence_length"], 1024)

    @classmethod
    def build_tiny(cls, cfg: dict, texts: list[str]):
        from diffusers import (
            AutoencoderKLQwenImage,
            FlowMatchEulerDiscreteScheduler,
            QwenImagePipeline,
            QwenImageTransformer2DModel,
        )
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        t = cfg["model"]["tiny"]
        torch.manual_seed(t["seed"])
        tokenizer = build_qwen_tokenizer(texts, PROMPT_TEMPLATE_START + cfg["model"]["max_sequence_length"],
                                         PROMPT_TEMPLATE)
        hidden = t["text_hidden"]
        head = hidden // 2
        text_encoder = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
            text_config=dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                             num_hidden_layers=t["text_layers"], num_attention_heads=2, num_key_value_heads=1,
                             max_position_embeddings=256, rope_theta=10000.0,
                             rope_scaling={"type": "mrope", "mrope_section": _mrope_sections(head)},
                             bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.pad_token_id,
                             pad_token_id=tokenizer.pad_token_id),
            vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=hidden,
                               patch_size=14, spatial_merge_size=2, temporal_patch_size=2, fullatt_block_indexes=[0])))
        vae = AutoencoderKLQwenImage(
            base_dim=t["vae_channels"], z_dim=t["latent_channels"], dim_mult=[1] * t["vae_blocks"], num_res_blocks=1,
            attn_scales=[], temperal_downsample=[False] * (t["vae_blocks"] - 1),
            latents_mean=[0.1 * i for i in range(t["latent_channels"])], latents_std=[1.0 + 0.1 * i for i in range(t["latent_channels"])])
        transformer = QwenImageTransformer2DModel(
            patch_size=2, in_channels=4 * t["latent_channels"], out_channels=t["latent_channels"],
            num_layers=t["num_layers"] + t["num_single_layers"], attention_head_dim=t["head_dim"],
            num_attention_heads=t["attention_heads"], joint_attention_dim=hidden,
            axes_dims_rope=tuple(rope_axes(t["head_dim"])))
        scheduler = FlowMatchEulerDiscreteScheduler(  # Qwen-Image's own scheduler config
            base_image_seq_len=256, base_shift=0.5, max_image_seq_len=8192, max_shift=0.9, shift=1.0,
            shift_terminal=0.02, time_shift_type="exponential", use_dynamic_shifting=True)
        return QwenImagePipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                 transformer=transformer)

    def text_encoders(self):
        return [self.pipe.text_encoder]

    def _encode(self, prompts):
        embeds, mask = self.pipe.encode_prompt(prompt=prompts, device=self.device, num_images_per_prompt=1,
                                               max_sequence_length=self.max_sequence_length)
        lengths = [embeds.shape[1]] * len(prompts) if mask is None else mask.sum(1).tolist()
        return [embeds[i, :int(n)] for i, n in enumerate(lengths)]   # each prompt without its padding

    def encode(self, prompts):
        rows = [{"prompt_embeds": e} for e in self._encode(prompts)]
        if self.cfg_on:
            negative = self._encode([self.negative_prompt])[0]
            for row in rows:
                row["negative_embeds"] = negative
        return rows, {}

    def collate(self, rows):
        """Pad every text (prompts and negative prompts alike) to the batch's longest, with masks."""
        keys = [k for k in ("prompt_embeds", "negative_embeds") if k in rows[0]]
        longest = max(r[k].shape[0] for r in rows for k in keys)
        out = {}
        for k in keys:
            out[k] = torch.stack([torch.cat([r[k], r[k].new_zeros(longest - r[k].shape[0], r[k].shape[1])])
                                  for r in rows])
            out[k + "_mask"] = torch.stack([torch.arange(longest, device="cpu") < r[k].shape[0] for r in rows]).long()  # on the CPU: moved with the batch
        return out

    @property
    def latent_shape(self):
        return (self.num_tokens, self.channels)

    def pipeline_sigmas(self, num_steps):
        from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift

        return shifted_pipeline_sigmas(self, num_steps, calculate_shift)

    def predict(self, net, x, sigma, cond: Conditioning):
        rows, batch = cond.rows, x.shape[0]
        half = self.latent_hw // 2
        timestep = sigma.float()
        if not self.cfg_on:
            return net(hidden_states=x, timestep=timestep, guidance=None,
                       encoder_hidden_states_mask=rows["prompt_embeds_mask"],
                       encoder_hidden_states=rows["prompt_embeds"], img_shapes=[[(1, half, half)]] * batch,
                       return_dict=False)[0]
        out = net(hidden_states=torch.cat([x, x]), timestep=torch.cat([timestep, timestep]), guidance=None,
                  encoder_hidden_states_mask=torch.cat([rows["prompt_embeds_mask"], rows["negative_embeds_mask"]]),
                  encoder_hidden_states=torch.cat([rows["prompt_embeds"], rows["negative_embeds"]]),
                  img_shapes=[[(1, half, half)]] * (2 * batch), return_dict=False)[0]
        text, negative = out.chunk(2)
        if not self.uncond_gradient:   # train.cfg_uncond_gradient false: the negative half detached
            negative = negative.detach()
        combined = negative + self.guidance * (text - negative)
        return combined * (torch.norm(text, dim=-1, keepdim=True) / torch.norm(combined, dim=-1, keepdim=True))

    def pipeline_images(self, prompts, latents, num_steps):
        cfg = {"negative_prompt": [self.negative_prompt] * len(prompts), "true_cfg_scale": self.guidance} \
            if self.cfg_on else {}
        return self.pipe(prompts, height=self.resolution, width=self.resolution, num_inference_steps=num_steps,
                         latents=latents, max_sequence_length=self.max_sequence_length, output_type="pt", **cfg).images

    def decode(self, latents):
        vae = self.pipe.vae
        lat = self.pipe._unpack_latents(latents, self.resolution, self.resolution, self.pipe.vae_scale_factor)
        z = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean, device=lat.device).view(1, z, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std, device=lat.device).view(1, z, 1, 1, 1)
        lat = lat.to(vae.dtype) * std.to(vae.dtype) + mean.to(vae.dtype)
        return vae.decode(lat, return_dict=False)[0][:, :, 0]


def _mrope_sections(head: int) -> list[int]:
    """Qwen2.5-VL's multimodal rotary sections (temporal, height, width), summing to head_dim / 2."""
    half = head // 2
    a = max(1, half // 4)
    b = (half - a) // 2
    return [a, b, half - a - b]
