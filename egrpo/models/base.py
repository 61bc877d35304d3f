"""The one model interface: `FlowModel` (what the rollout, the trainer and the stages call) over a
`Family` adapter (what differs between FLUX, SD3.5, Qwen-Image, ...).

The math, the rollouts and the algorithms see latents, a sigma schedule and a velocity function;
they never ask which family runs. A family owns exactly what its diffusers pipeline does around the
transformer:
    prompt encoding (and the negative prompt of true classifier-free guidance)
    latent shape and packing, initial noise
    the transformer's call signature and timestep convention, guidance:
        a distilled guidance embedding (FLUX: one call per step) or true CFG
        (SD3.5, Qwen-Image: two predictions combined per step, counted as two evaluations)
    the sigma schedule of the pipeline (`sampling.schedule: pipeline`)
    VAE scaling / shift and decoding
    LoRA target modules, the block lists that FSDP shards and gradient checkpointing walks
Each family's proof is diffusers' own pipeline: egrpo's ODE sampler gives the same image from the
same noise, prompts, steps and guidance (checked for every registered family).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from egrpo.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class Conditioning:
    """Text conditioning of a batch. `rows`: per-sample tensors [B, ...] (prompt embeddings, pooled
    projections, masks; under true CFG also the negative prompt's); `shared`: tensors of the whole
    batch (FLUX's text position ids)."""
    rows: dict[str, torch.Tensor]
    shared: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return next(iter(self.rows.values())).shape[0]

    def expand(self, n: int) -> "Conditioning":
        """Repeat a single-prompt conditioning n times along the batch."""
        assert self.batch == 1, "expand() repeats a one-prompt conditioning"
        return Conditioning({k: v.expand(n, *v.shape[1:]) for k, v in self.rows.items()}, self.shared)

    def repeat_each(self, n: int) -> "Conditioning":
        """Every sample's rows n times in a row (B prompts -> B*n rows: each prompt's images together)."""
        return Conditioning({k: v.repeat_interleave(n, dim=0) for k, v in self.rows.items()}, self.shared)

    def select(self, index: int) -> "Conditioning":
        return Conditioning({k: v[index:index + 1] for k, v in self.rows.items()}, self.shared)

    def to(self, device) -> "Conditioning":
        return Conditioning({k: v.to(device) for k, v in self.rows.items()},
                            {k: v.to(device) for k, v in self.shared.items()})


class Family:
    """What one model family does around its transformer. Subclasses set the class attributes and
    implement the methods; `egrpo/models/__init__.py` registers them by name."""

    name = "base"
    pipeline_class = ""                 # the diffusers pipeline class (model_index.json's _class_name)
    lora_targets: tuple[str, ...] = ()  # module names LoRA attaches to (the official trainer's list)
    block_lists: tuple[str, ...] = ("transformer_blocks",)  # transformer attributes holding its blocks

    def __init__(self, pipe, cfg: dict, resolution: int, guidance: float, device: torch.device):
        self.pipe, self.cfg, self.resolution, self.guidance, self.device = pipe, cfg, resolution, guidance, device
        self.negative_prompt = cfg["sampling"].get("negative_prompt", "")

    # ---- building and loading (classmethods: no pipeline yet) -----------------------------------
    @classmethod
    def build_tiny(cls, cfg: dict, texts: list[str]):
        """A pipeline of tiny, randomly initialised instances of the family's real classes."""
        raise NotImplementedError

    @classmethod
    def pipeline_type(cls):
        import diffusers
        return getattr(diffusers, cls.pipeline_class)

    # ---- text -----------------------------------------------------------------------------------
    def text_encoders(self) -> list[torch.nn.Module]:
        raise NotImplementedError

    def encode(self, prompts: list[str]) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        """Encode prompts on the device: one dict of tensors per prompt (no batch dimension; cached
        per prompt on the CPU), and the batch's shared tensors."""
        raise NotImplementedError

    def collate(self, rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Stack per-prompt rows into a batch (a family with variable-length text pads here)."""
        return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}

    # ---- latents, schedule, transformer -------------------------------------------------------------
    @property
    def latent_shape(self) -> tuple[int, ...]:
        """The shape of one sample's latents as the transformer takes them (packed for FLUX/Qwen)."""
        raise NotImplementedError

    @property
    def evaluations_per_call(self) -> int:
        """Transformer evaluations per sample of one velocity: 2 under true CFG, else 1."""
        return 1

    def pipeline_sigmas(self, num_steps: int) -> torch.Tensor:
        """The sigma schedule the family's diffusers pipeline uses for num_steps steps ([N+1], float64)."""
        raise NotImplementedError

    def predict(self, net, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The (guided) velocity of the batch x at per-sample sigmas [B] (float64; already rounded
        when the recipe rounds), calling `net` (the transformer, or a copy of it)."""
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images [B, 3, H, W] in [-1, 1] (the VAE's output)."""
        raise NotImplementedError

    def pipeline_images(self, prompts: list[str], latents: torch.Tensor, num_steps: int) -> torch.Tensor:
        """The family's own diffusers pipeline sampling `prompts` from `latents` with its default
        schedule, this family's guidance and negative prompt: images [B, 3, H, W] in [0, 1]. The
        reference that egrpo's sampler must reproduce (checked for every registered family)."""
        raise NotImplementedError


class TrueCFG(Family):
    """A family guided by true classifier-free guidance (SD3.5, Qwen-Image): `sampling.guidance` is
    the CFG scale w, 1 turns it off; on, every velocity costs two evaluations per sample."""

    @property
    def cfg_on(self) -> bool:
        return self.guidance > 1

    @property
    def uncond_gradient(self) -> bool:
        """Whether training backpropagates through the unconditional (negative) half (train.cfg_uncond_gradient)."""
        return self.cfg.get("train", {}).get("cfg_uncond_gradient", True)

    @property
    def evaluations_per_call(self) -> int:
        return 2 if self.cfg_on else 1


def shifted_pipeline_sigmas(family: Family, num_steps: int, calculate_shift) -> torch.Tensor:
    """The schedule of a pipeline with resolution-dependent shifting (FLUX, Qwen-Image): sigmas
    linspace(1, 1/N, N) through a fresh copy of its scheduler with mu = calculate_shift(image
    tokens, the scheduler config's base/max sequence lengths and shifts), as the pipeline calls it;
    `calculate_shift` is the family's pipeline module's own. [N+1] float64."""
    import numpy as np

    scheduler = type(family.pipe.scheduler).from_config(family.pipe.scheduler.config)
    c = scheduler.config
    mu = calculate_shift(family.num_tokens, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                         c.get("base_shift", 0.5), c.get("max_shift", 1.15))
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps), mu=mu)
    return scheduler.sigmas.to(torch.float64)


def check_resolution(resolution: int, multiple: int) -> None:
    if resolution % multiple:
        raise UserError(f"sampling.resolution: {resolution} must be a multiple of {multiple} for this model")
