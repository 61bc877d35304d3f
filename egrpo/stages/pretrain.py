"""Stage `pretrain`: the tiny world's base model and its learned reward, trained from scratch.

Every part is trained on procedurally rendered scenes of the world `pretrain.world` names: `single`
(egrpo/tinyworld.py: shape x colour x background x position x size = 1680 scenes under every caption
template) or `compositional` (egrpo/compworld.py: every scene of its six tasks outside the held-out
compositions, each under its task's caption).

  vae          diffusers AutoencoderKL, images in [-1, 1]:
                   loss = mean (D(z) - x)^2 + beta * KL(q(z|x) || N(0, I)),  z ~ q(z|x)
               then the latents are standardized the way FLUX's VAE config does it:
                   z_model = (z - shift_factor) * scaling_factor
  transformer  diffusers FluxTransformer2DModel, trained by rectified flow on the packed latents:
                   x_sigma = (1 - sigma) x0 + sigma eps,   target v = eps - x0
                   loss = mean (v_theta(x_sigma, sigma, text) - v)^2
               sigma drawn from the sampler's shifted schedule, sigma = s u / (1 + (s - 1) u),
               u ~ U(0, 1), so training sees the noise levels sampling visits. The text encoders
               (CLIP + T5, random init) stay frozen by default: their outputs tell the captions
               apart and every caption is encoded once; but then each caption is its own random
               code, and what RL teaches one prompt does not move its neighbours (docs/claims).
               pretrain.train_text_encoders trains them with the transformer instead.
  tinyclip     transformers CLIPModel (ViT + text transformer) trained contrastively (symmetric
               InfoNCE) on (augmented rendering, caption) pairs; its cosine is reward `tinyclip`.

Afterwards the base model is sampled on the evaluation captions and scored by the rule-based
alignment, against chance (the same images scored against a shuffled caption) and against the
rendering of the scene itself (the ceiling).

Deterministic for a seed on one machine: all randomness comes from generators seeded by
`pretrain.seed`, so two runs with the same thread count give identical weights (tested). Across machines / torch builds, float rounding differs, so weights
differ slightly and the alignment score moves by a few hundredths.
"""
from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from egrpo import compworld, tinyworld
from egrpo.models import FlowModel, build_tiny_pipeline, load_pipeline
from egrpo.pretraining import (
    augment,
    build_tinyclip,
    encode_captions,
    packed_latents,
    standardize_latents,
    train_tinyclip,
    train_transformer,
    train_vae,
)
from egrpo.rewards.clip import CLIPScorer
from egrpo.runtime.device import select_device
from egrpo.runtime.io import Prompt, atomic_dir, atomic_write_json, load_prompts
from egrpo.runtime.tracking import stage_run
from egrpo.sampling import sample_images

NAME = "pretrain"
HELP = "Train the tiny world's base model (VAE + flow transformer) and its tinyclip reward."
PHASE = "pretraining"


def add_arguments(p) -> None:
    p.add_argument("--out", required=True, help="output directory: writes tinyworld/, tinyclip/ and pretrain.json")


def run(args, cfg) -> None:
    r = run_pretrain(cfg, args.out)
    b = {k: "n/a" if v is None else f"{v:.3f}" for k, v in r["base_model"].items()}
    print(f"base model alignment {b['alignment']} (chance {b['chance']}, ceiling {b['ceiling']}, "
          f"through the VAE {b['vae_ceiling']}); "
          f"tinyclip top-1 {r['tinyclip']['top1']:.2f} (chance {r['tinyclip']['chance']:.3f}); {args.out}")

log = logging.getLogger("egrpo.stages.pretrain")


# pretrain.world -> the module of that world: all_scenes, captions, render, parse, score
WORLDS = {"single": tinyworld, "compositional": compworld}


# ---- evaluation of the base model -----------------------------------------------------------------

@torch.no_grad()
def alignment_vs_chance(model, prompts: list[str], per_prompt: int, num_steps: int, seed: int, world=tinyworld) -> dict:
    """Rule-based alignment of the base model's ODE samples, beside chance and the ceiling.

    chance:  the same images scored against the scene of a shuffled caption (a model that ignores
             the prompt, but draws tiny-world-like images, scores this)
    ceiling: the rendering of each caption's own scene
    vae_ceiling: that rendering through the model's VAE (encoded, decoded): what the decoder lets any
             sample reach; a low one means the VAE, not the flow model, caps the world
    """

    prompts = [p for p in prompts if world.parse(p) is not None]  # only the world's captions can be scored
    if not prompts:
        return {"alignment": None, "chance": None, "ceiling": None, "vae_ceiling": None, "num_prompts": 0,
                "images_per_prompt": per_prompt}
    scenes = [world.parse(p) for p in prompts]
    images = {(p, m): img for p, m, _, img in sample_images(model, [Prompt(t) for t in prompts], num_steps, per_prompt,
                                                          seed)}
    rng = random.Random(seed)
    shuffled = list(range(len(prompts)))
    while len(prompts) > 1 and any(i == j for i, j in enumerate(shuffled)):
        rng.shuffle(shuffled)
    own = [world.score(img, scenes[p]) for (p, m), img in images.items()]
    other = [world.score(img, scenes[shuffled[p]]) for (p, m), img in images.items()]
    renderings = torch.stack([world.render(s, model.resolution) for s in scenes])
    ceiling = [world.score(r, s) for r, s in zip(renderings, scenes)]
    vae = model.pipe.vae
    decoded = vae.decode(vae.encode(renderings.to(model.device) * 2 - 1).latent_dist.mean).sample
    vae_ceiling = [world.score(r, s) for r, s in zip((decoded.cpu() / 2 + 0.5).clamp(0, 1), scenes)]
    mean = lambda xs: float(sum(xs) / len(xs))
    return {"alignment": mean(own), "chance": mean(other), "ceiling": mean(ceiling), "vae_ceiling": mean(vae_ceiling),
            "num_prompts": len(prompts), "images_per_prompt": per_prompt}


# ---- the stage ------------------------------------------------------------------------------------

def run_pretrain(cfg: dict, out_dir) -> dict:
    """Train the tiny world's VAE + flow transformer (-> out/tinyworld) and tinyclip (-> out/tinyclip)."""

    pcfg, res = cfg["pretrain"], cfg["sampling"]["resolution"]
    out_dir = Path(out_dir)
    torch.manual_seed(pcfg["seed"])
    generator = torch.Generator().manual_seed(pcfg["seed"])
    world = WORLDS[pcfg["world"]]
    scenes = world.all_scenes()
    per_scene = [world.captions(s) for s in scenes]
    captions = [c for cs in per_scene for c in cs]
    caption_scene = torch.arange(len(scenes), device="cpu").repeat_interleave(len(per_scene[0]))  # on the CPU: indexes the CPU data
    images = torch.stack([world.render(s, res) for s in scenes])
    started = time.perf_counter()
    with stage_run(cfg, "pretrain", {"seed": pcfg["seed"]}, out=out_dir) as (mlflow, run):
        pipe = build_tiny_pipeline(cfg, captions)  # vocabulary: every tiny-world word
        device = select_device(cfg)
        for module in (pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.transformer):
            module.to(device)
        log.info("tiny world: %d scenes, %d captions, %d px, on %s", len(scenes), len(captions), res, device)
        vae_losses = train_vae(pipe.vae, images, pcfg, generator, device)
        latent_stats = standardize_latents(pipe.vae, images, device)
        with torch.no_grad():
            recon = pipe.vae.decode(pipe.vae.encode(images[:256].to(device) * 2 - 1).latent_dist.mean).sample
            vae_mse = float(F.mse_loss((recon.cpu() / 2 + 0.5).clamp(0, 1), images[:256]))
        latents = packed_latents(pipe, images, device)
        embeds, pooled = encode_captions(pipe, captions, cfg["model"]["max_sequence_length"], device=device)
        text_ids = torch.zeros(embeds.shape[1], 3, device=device)
        hw = res // pipe.vae_scale_factor // 2
        img_ids = pipe._prepare_latent_image_ids(1, hw, hw, device, torch.float32)
        shrunk = pcfg["undersized"]
        undersized = (packed_latents(pipe, torch.stack([world.render(s, res, shrunk["scale"]) for s in scenes]), device)
                      if shrunk["fraction"] > 0 else None)
        flow_losses = train_transformer(pipe, latents, embeds, pooled, caption_scene, text_ids, img_ids, cfg, generator,
                                        device, captions, undersized)

        clip_model, processor = build_tinyclip(cfg, pipe.tokenizer)
        clip_model.to(device)
        clip_losses = train_tinyclip(clip_model, pipe.tokenizer, images, scenes, pcfg, generator, device, world)
        train_s = time.perf_counter() - started
        pipe.to("cpu"); clip_model.to("cpu")  # saved from the CPU; the checks below load them afresh

        with atomic_dir(out_dir / "tinyworld") as tmp:
            pipe.save_pretrained(tmp, safe_serialization=True)
        with atomic_dir(out_dir / "tinyclip") as tmp:
            clip_model.save_pretrained(tmp, safe_serialization=True)
            processor.save_pretrained(tmp)

        # held-out check: the evaluation captions, sampled the way `egrpo evaluate` samples
        eval_prompts = [p.text for p in load_prompts(cfg["prompts"]["eval"], "prompts.eval")]
        base = FlowModel(load_pipeline(cfg, out_dir / "tinyworld"), cfg)
        score = alignment_vs_chance(base, eval_prompts, pcfg["eval_images_per_prompt"],
                                    cfg["sampling"]["num_steps"], pcfg["seed"], world)
        clip_check = tinyclip_retrieval(out_dir / "tinyclip", scenes, res, pcfg["seed"], world)
        sizes = {name: sum(f.stat().st_size for f in (out_dir / name).rglob("*") if f.is_file())
                 for name in ("tinyworld", "tinyclip")}
        report = {
            "world": pcfg["world"], "seed": pcfg["seed"], "resolution": res, "scenes": len(scenes),
            "captions": len(captions), "undersized": dict(pcfg["undersized"]),
            "base_model": score, "tinyclip": clip_check,
            "vae": {"final_loss": _tail(vae_losses), "reconstruction_mse": vae_mse, **latent_stats},
            "transformer": {"final_loss": _tail(flow_losses),
                            "parameters": sum(p.numel() for p in pipe.transformer.parameters())},
            "tinyclip_final_loss": _tail(clip_losses),
            "bytes": sizes, "train_s": train_s, "mlflow_run_id": run.info.run_id,
        }
        atomic_write_json(out_dir / "pretrain.json", report)
        mlflow.log_metrics({**{name: score[key] for name, key in (("alignment", "alignment"), ("alignment_chance", "chance"),
                                                                  ("alignment_ceiling", "ceiling"),
                                                                  ("alignment_vae_ceiling", "vae_ceiling"))
                               if score[key] is not None},
                            "vae_mse": vae_mse,
                            "flow_loss": report["transformer"]["final_loss"],
                            "tinyclip_top1": clip_check["top1"], "train_s": train_s})
        for i in range(0, len(flow_losses), 50):
            mlflow.log_metric("flow_loss_curve", flow_losses[i], step=i)
        mlflow.log_artifact(str(out_dir / "pretrain.json"))
    log.info("base model alignment %s (chance %s, ceiling %s, through the VAE %s); tinyclip top-1 %.2f",
             *(f"{score[k]:.3f}" if score[k] is not None else "n/a" for k in ("alignment", "chance", "ceiling", "vae_ceiling")),
             clip_check["top1"])
    return report


def _tail(losses: list[float], n: int = 100) -> float:
    tail = losses[-n:]
    return float(sum(tail) / len(tail)) if tail else math.nan


@torch.no_grad()
def tinyclip_retrieval(path, scenes: list, resolution: int, seed: int, world=tinyworld, n: int = 256) -> dict:
    """Top-1 caption retrieval of augmented renderings among n scenes (chance: 1/n), through the
    same scorer the reward uses."""

    scorer = CLIPScorer(str(path), None, scale_by_logit=False)
    generator = torch.Generator().manual_seed(seed + 1)
    idx = torch.randperm(len(scenes), generator=generator, device="cpu")[:n].tolist()  # on the CPU: scene choice
    images = augment(torch.stack([world.render(scenes[i], resolution) for i in idx]), generator)
    image_emb = F.normalize(scorer.embed_images(images), dim=-1).cpu()  # the scorer's device -> the CPU
    text_emb = F.normalize(scorer.embed_texts([world.captions(scenes[i])[0] for i in idx]), dim=-1).cpu()
    top1 = float(((image_emb @ text_emb.T).argmax(1) == torch.arange(len(idx), device="cpu")).float().mean())  # on the CPU: embeddings moved above
    return {"top1": top1, "chance": 1 / len(idx), "candidates": len(idx)}
