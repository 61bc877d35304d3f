"""How the tiny worlds' models are trained from scratch (`egrpo pretrain`, egrpo/stages/pretrain.py
runs them in order and checks the result): the VAE on the renderings, the flow transformer by
rectified flow on (scene latent, caption) pairs, and tinyclip by symmetric InfoNCE on augmented
renderings. Data and random draws on the CPU, each batch on the device the modules are on."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm import tqdm

from egrpo import tinyworld


def optimizer(module, lr: float, weight_decay: float, steps: int):
    """AdamW with diffusers' warmup + cosine schedule; returns step(loss) -> float, which clips the
    gradient norm at 1, steps optimizer and schedule, and returns the loss value."""
    from diffusers.optimization import get_cosine_schedule_with_warmup

    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=min(100, steps // 10), num_training_steps=steps)

    def step(loss: torch.Tensor) -> float:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        return float(loss.detach())

    return step


def augment(images: torch.Tensor, generator: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """Renderings made to look like samples: shifts of up to 2 px, blur, colour jitter, noise."""
    b = images.shape[0]
    shifts = torch.randint(-2, 3, (b, 2), generator=generator, device="cpu")  # on the CPU: augmentation runs on the CPU batch
    out = torch.stack([torch.roll(img, (int(dy), int(dx)), dims=(1, 2)) for img, (dy, dx) in zip(images, shifts)])
    blur = torch.rand(b, 1, 1, 1, generator=generator, device="cpu") < 0.5 * strength  # on the CPU: augmentation
    blurred = F.avg_pool2d(F.pad(out, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    out = torch.where(blur, blurred, out)
    out = out + strength * 0.08 * (torch.rand(b, 3, 1, 1, generator=generator, device="cpu") - 0.5)  # on the CPU: augmentation
    out = out + strength * 0.06 * torch.rand(b, 1, 1, 1, generator=generator, device="cpu") * torch.randn(out.shape, generator=generator, device="cpu")  # on the CPU: augmentation
    return out.clamp(0, 1)


# ---- VAE ------------------------------------------------------------------------------------------

def train_vae(vae, images: torch.Tensor, pcfg: dict, generator: torch.Generator,
              device: torch.device = torch.device("cpu")) -> list[float]:
    """Reconstruction + beta * KL on random batches of the renderings (in [0, 1]); returns losses.
    The data and every random draw stay on the CPU (one generator: the same draws on any device);
    each batch moves to `device`."""
    steps, batch = pcfg["vae_steps"], pcfg["batch_size"]
    vae.train().requires_grad_(True)
    step_on = optimizer(vae, pcfg["vae_lr"], 0.0, steps)
    losses = []
    for step in tqdm(range(steps), desc="pretrain vae", unit="step"):
        idx = torch.randint(len(images), (batch,), generator=generator, device="cpu")  # on the CPU: indexes the CPU data
        x = (augment(images[idx], generator, strength=0.5) * 2 - 1).to(device)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator).to(device)
        recon = vae.decode(z).sample
        loss = F.mse_loss(recon, x) + pcfg["vae_kl_weight"] * posterior.kl().mean()
        losses.append(step_on(loss))
    vae.eval().requires_grad_(False)
    return losses


@torch.no_grad()
def standardize_latents(vae, images: torch.Tensor, device: torch.device = torch.device("cpu")) -> dict:
    """Set shift_factor / scaling_factor so that model latents have mean 0 and std 1."""
    z = torch.cat([vae.encode(chunk.to(device) * 2 - 1).latent_dist.mean for chunk in images.split(256)])
    shift, scale = float(z.mean()), 1.0 / float(z.std())
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    return {"shift_factor": shift, "scaling_factor": scale}


# ---- flow transformer -----------------------------------------------------------------------------

@torch.no_grad()
def encode_captions(pipe, captions: list[str], max_length: int, batch: int = 256,
                    device: torch.device = torch.device("cpu")):
    """T5 and CLIP-pooled encodings of every caption, kept on the CPU."""
    embeds, pooled = [], []
    for start in range(0, len(captions), batch):
        e, p, _ = pipe.encode_prompt(prompt=captions[start:start + batch], prompt_2=None, device=device,
                                     num_images_per_prompt=1, max_sequence_length=max_length)
        embeds.append(e.cpu())
        pooled.append(p.cpu())
    return torch.cat(embeds), torch.cat(pooled)


@torch.no_grad()
def packed_latents(pipe, images: torch.Tensor, device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """Renderings [B, 3, H, W] in [0, 1] -> standardized packed latents [B, L, 4C] (posterior means, on the CPU)."""
    vae = pipe.vae
    out = []
    for chunk in images.split(256):
        z = vae.encode(chunk.to(device) * 2 - 1).latent_dist.mean
        z = (z - vae.config.shift_factor) * vae.config.scaling_factor
        b, c, h, w = z.shape
        out.append(pipe._pack_latents(z, b, c, h, w).cpu())
    return torch.cat(out)


def train_transformer(pipe, latents: torch.Tensor, embeds: torch.Tensor, pooled: torch.Tensor,
                      caption_scene: torch.Tensor, text_ids: torch.Tensor, img_ids: torch.Tensor,
                      cfg: dict, generator: torch.Generator, device: torch.device = torch.device("cpu"),
                      captions: list[str] | None = None, undersized: torch.Tensor | None = None) -> list[float]:
    """Rectified flow on (scene latent, caption) pairs; returns the losses. Data and random draws
    on the CPU, each batch on `device` (text_ids and img_ids are on `device`). With
    pretrain.train_text_encoders, each batch's captions are encoded anew by the text encoders, which
    are trained with the transformer (`captions` then names them; `embeds`/`pooled` are unused).
    `undersized` (the scenes' latents with shrunk objects) replaces each batch row's latent with
    probability pretrain.undersized.fraction."""
    pcfg, shift, guidance = cfg["pretrain"], cfg["sampling"]["shift"], cfg["sampling"]["guidance"]
    steps, batch = pcfg["transformer_steps"], pcfg["batch_size"]
    transformer = pipe.transformer
    encoders = [pipe.text_encoder, pipe.text_encoder_2] if pcfg["train_text_encoders"] else []
    trained = torch.nn.ModuleList([transformer, *encoders])
    trained.train().requires_grad_(True)
    step_on = optimizer(trained, pcfg["transformer_lr"], 0.01, steps)
    losses = []
    bar = tqdm(range(steps), desc="pretrain transformer", unit="step")
    for step in bar:
        caption_idx = torch.randint(len(embeds), (batch,), generator=generator, device="cpu")  # on the CPU: indexes the CPU data
        x0 = latents[caption_scene[caption_idx]]
        if undersized is not None:
            shrunk = torch.rand(batch, generator=generator, device="cpu") < pcfg["undersized"]["fraction"]
            x0 = torch.where(shrunk.view(-1, 1, 1), undersized[caption_scene[caption_idx]], x0)
        eps = torch.randn(x0.shape, generator=generator, device="cpu")  # on the CPU: the batch moves as a whole below
        u = torch.rand(batch, generator=generator, device="cpu")  # on the CPU: the batch moves as a whole below
        sigma = shift * u / (1 + (shift - 1) * u)
        x = ((1 - sigma.view(-1, 1, 1)) * x0 + sigma.view(-1, 1, 1) * eps).to(device)
        if encoders:
            text, text_pooled, _ = pipe.encode_prompt(prompt=[captions[i] for i in caption_idx.tolist()], prompt_2=None,
                                                      device=device, num_images_per_prompt=1,
                                                      max_sequence_length=cfg["model"]["max_sequence_length"])
        else:
            text, text_pooled = embeds[caption_idx].to(device), pooled[caption_idx].to(device)
        v = transformer(hidden_states=x, timestep=sigma.to(device), guidance=torch.full((batch,), guidance, device=device),
                        pooled_projections=text_pooled,
                        encoder_hidden_states=text,
                        txt_ids=text_ids, img_ids=img_ids, return_dict=False)[0]
        loss = F.mse_loss(v, (eps - x0).to(device))
        losses.append(step_on(loss))
        if step % 100 == 0:
            bar.set_postfix(loss=f"{sum(losses[-100:]) / len(losses[-100:]):.4f}", refresh=False)
    trained.eval().requires_grad_(False)
    return losses


# ---- tinyclip -------------------------------------------------------------------------------------

def build_tinyclip(cfg: dict, clip_tokenizer):
    """A tiny CLIPModel and its CLIPProcessor (no resize/crop surprises: the image size is the
    sampling resolution; pixels are rescaled to [0, 1] and normalized with mean = std = 0.5)."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTextConfig,
        CLIPVisionConfig,
    )

    t = cfg["pretrain"]["tinyclip"]
    res = cfg["sampling"]["resolution"]
    msl = clip_tokenizer.model_max_length
    text = CLIPTextConfig(vocab_size=len(clip_tokenizer), hidden_size=t["hidden"], intermediate_size=2 * t["hidden"],
                          num_hidden_layers=t["layers"], num_attention_heads=t["heads"], max_position_embeddings=msl,
                          bos_token_id=clip_tokenizer.bos_token_id, eos_token_id=clip_tokenizer.eos_token_id,
                          pad_token_id=clip_tokenizer.eos_token_id)
    vision = CLIPVisionConfig(hidden_size=t["hidden"], intermediate_size=2 * t["hidden"], num_hidden_layers=t["layers"],
                              num_attention_heads=t["heads"], image_size=res, patch_size=t["patch_size"])
    model = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                 projection_dim=t["hidden"]))
    image_processor = CLIPImageProcessor(size={"shortest_edge": res}, crop_size={"height": res, "width": res},
                                         image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return model, CLIPProcessor(image_processor=image_processor, tokenizer=clip_tokenizer)


def train_tinyclip(model, tokenizer, images: torch.Tensor, scenes: list, pcfg: dict,
                   generator: torch.Generator, device: torch.device = torch.device("cpu"), world=tinyworld) -> list[float]:
    """Symmetric InfoNCE over batches of distinct scenes, each with a random caption template."""
    steps, batch = pcfg["tinyclip_steps"], min(pcfg["batch_size"] * 2, len(scenes))
    model.train().requires_grad_(True)
    step_on = optimizer(model, pcfg["tinyclip_lr"], 0.01, steps)
    captions = [world.captions(s) for s in scenes]
    per_scene = len(captions[0])
    losses = []
    bar = tqdm(range(steps), desc="pretrain tinyclip", unit="step")
    for step in bar:
        idx = torch.randperm(len(scenes), generator=generator, device="cpu")[:batch]  # on the CPU: scene choice
        templates = torch.randint(per_scene, (batch,), generator=generator, device="cpu")  # on the CPU: caption choice
        texts = [captions[i][t] for i, t in zip(idx.tolist(), templates.tolist())]
        tokens = tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt")
        pixels = ((augment(images[idx], generator) - 0.5) / 0.5).to(device)
        out = model(input_ids=tokens["input_ids"].to(device), attention_mask=tokens["attention_mask"].to(device),
                    pixel_values=pixels)
        target = torch.arange(batch, device=device)
        loss = (F.cross_entropy(out.logits_per_image, target) + F.cross_entropy(out.logits_per_text, target)) / 2
        value = step_on(loss)
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(value)
        if step % 100 == 0:
            bar.set_postfix(loss=f"{sum(losses[-100:]) / len(losses[-100:]):.3f}", refresh=False)
    model.eval().requires_grad_(False)
    return losses
