"""The published shapes of the paper-scale pipelines (FLUX.1-dev, SD3.5-Medium, Qwen-Image) with
random weights: what egrpo/models/pipeline.py builds for the `paper` preset (benchmarks/gpu_e2e.py
measures memory and speed on them without downloading a weight). The `tiny` preset is each family's
`build_tiny`, sized by the config's model.tiny.

Every builder runs under the caller's default dtype and builds the large parts directly on `device`
(bf16 on a GPU: no fp32 copy of a 12 B transformer ever exists)."""
from __future__ import annotations

import torch

from egrpo.models.qwenimage import PROMPT_TEMPLATE, PROMPT_TEMPLATE_START
from egrpo.models.tokenizers import build_qwen_tokenizer, build_tokenizers

# FLUX.1-dev's components other than the transformer (their published configs)
T5_XXL = dict(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24, feed_forward_proj="gated-gelu",
              is_gated_act=True, dense_act_fn="gelu_new")
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu")
FLUX_VAE = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=[128, 256, 512, 512],
                down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                layers_per_block=2, norm_num_groups=32, scaling_factor=0.3611, shift_factor=0.1159,
                use_quant_conv=False, use_post_quant_conv=False)
FLUX_DEV_TRANSFORMER = dict(attention_head_dim=128, axes_dims_rope=(16, 56, 56), guidance_embeds=True, in_channels=64,
                            joint_attention_dim=4096, num_attention_heads=24, num_layers=19, num_single_layers=38,
                            patch_size=1, pooled_projection_dim=768)   # 19 double + 38 single blocks, 11.9 B

# SD3.5-Medium (stabilityai/stable-diffusion-3.5-medium) and Qwen-Image (Qwen/Qwen-Image): their published configs
SD35_TRANSFORMER = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                        num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                        pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384,
                        dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")
CLIP_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
              max_position_embeddings=77, projection_dim=1280, hidden_act="gelu")
SD3_VAE = dict(FLUX_VAE, scaling_factor=1.5305, shift_factor=0.0609)
QWEN_TRANSFORMER = dict(patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128,
                        num_attention_heads=24, joint_attention_dim=3584, guidance_embeds=False,
                        axes_dims_rope=(16, 56, 56))
QWEN25_VL_7B = dict(text=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                              num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000,
                              rope_theta=1000000.0, rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}),
                    vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                                patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                                fullatt_block_indexes=[7, 15, 23, 31]))
QWEN_VAE = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                temperal_downsample=[False, True, True])


def _tokenizers(words: list[str], t5_length: int):
    """The tiny world's offline tokenizers with FLUX's lengths: CLIP 77 tokens, T5 `t5_length`."""
    clip_tok, t5_tok = build_tokenizers(words, t5_length)
    clip_tok.model_max_length = 77
    return clip_tok, t5_tok


def flux_dev(words: list[str], device: torch.device, cfg: dict):
    """FLUX.1-dev's FluxPipeline: the transformer (11.9 B) and T5-XXL (4.7 B) on `device`, CLIP-L and
    the VAE on the CPU until the pipeline moves."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    clip_tok, t5_tok = _tokenizers(words, 512)
    with torch.device(device):
        transformer = FluxTransformer2DModel(**FLUX_DEV_TRANSFORMER)
        t5 = T5EncoderModel(T5Config(vocab_size=32128, pad_token_id=0, eos_token_id=1, **T5_XXL))
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=49408, bos_token_id=clip_tok.bos_token_id,
                                        eos_token_id=clip_tok.eos_token_id, pad_token_id=clip_tok.eos_token_id, **CLIP_L))
    vae = AutoencoderKL(**FLUX_VAE)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=False)
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=clip_tok, text_encoder_2=t5,
                        tokenizer_2=t5_tok, transformer=transformer)


def sd35_medium(words: list[str], device: torch.device, cfg: dict):
    """SD3.5-Medium's StableDiffusion3Pipeline (2.24 B transformer, CLIP-L, CLIP-G, T5-XXL)."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    clip_tok, t5_tok = _tokenizers(words, 256)
    ids = dict(bos_token_id=clip_tok.bos_token_id, eos_token_id=clip_tok.eos_token_id, pad_token_id=clip_tok.eos_token_id)
    clip_l = CLIPTextModelWithProjection(CLIPTextConfig(vocab_size=49408, **ids, **CLIP_L))
    clip_g = CLIPTextModelWithProjection(CLIPTextConfig(vocab_size=49408, **ids, **CLIP_G))
    t5 = T5EncoderModel(T5Config(vocab_size=32128, pad_token_id=0, eos_token_id=1, **T5_XXL))
    return StableDiffusion3Pipeline(
        transformer=SD3Transformer2DModel(**SD35_TRANSFORMER), scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=AutoencoderKL(**SD3_VAE), text_encoder=clip_l, tokenizer=clip_tok, text_encoder_2=clip_g,
        tokenizer_2=clip_tok, text_encoder_3=t5, tokenizer_3=t5_tok)


def qwen_image(words: list[str], device: torch.device, cfg: dict):
    """Qwen-Image's QwenImagePipeline (20.4 B transformer, Qwen2.5-VL 7B)."""
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer = build_qwen_tokenizer(words, PROMPT_TEMPLATE_START + cfg["model"]["max_sequence_length"], PROMPT_TEMPLATE)
    ids = dict(bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.pad_token_id,
               pad_token_id=tokenizer.pad_token_id)
    text_encoder = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
        text_config=dict(QWEN25_VL_7B["text"], **ids), vision_config=QWEN25_VL_7B["vision"]))
    scheduler = FlowMatchEulerDiscreteScheduler(  # Qwen-Image's scheduler config
        base_image_seq_len=256, base_shift=0.5, max_image_seq_len=8192, max_shift=0.9, shift=1.0,
        shift_terminal=0.02, time_shift_type="exponential", use_dynamic_shifting=True)
    return QwenImagePipeline(transformer=QwenImageTransformer2DModel(**QWEN_TRANSFORMER), scheduler=scheduler,
                             vae=AutoencoderKLQwenImage(**QWEN_VAE), text_encoder=text_encoder, tokenizer=tokenizer)


PAPER = {"flux": flux_dev, "sd3": sd35_medium, "qwenimage": qwen_image}
WHOLE_ON_DEVICE = {"sd3", "qwenimage"}   # built whole under the device; FLUX places its parts itself


def build_paper(family: str, words: list[str], device: torch.device, dtype: torch.dtype, cfg: dict):
    """The paper-scale pipeline of `family` with random weights in `dtype`."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        if family in WHOLE_ON_DEVICE:
            with torch.device(device):
                return PAPER[family](words, device, cfg)
        return PAPER[family](words, device, cfg)
    finally:
        torch.set_default_dtype(previous)
