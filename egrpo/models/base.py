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
same noise, prompts, steps and guidance (tests/test_families.py).
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from egrpo import sde
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
        reference that egrpo's sampler must reproduce (tests/test_families.py)."""
        raise NotImplementedError


class TrueCFG(Family):
    """A family guided by true classifier-free guidance (SD3.5, Qwen-Image): `sampling.guidance` is
    the CFG scale w, 1 turns it off; on, every velocity costs two evaluations per sample."""

    @property
    def cfg_on(self) -> bool:
        return self.guidance > 1

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


class FlowModel:
    """A family's pipeline with the calling conventions the rollout and the trainer use.

    `velocity` counts transformer evaluations per sample in `nfe` (2 per sample under true CFG).
    Latents and timesteps are fed in fp32 and the forward computes in model.dtype under autocast
    when that is lower: the official trainers' call (fp32 inputs under torch.autocast(bf16)). Inside,
    FLUX and Qwen-Image cast the timestep to their first layer's output dtype, as they do there.
    """

    def __init__(self, pipe, cfg: dict, device: torch.device | str | None = None, resolution: int | None = None,
                 guidance: float | None = None):
        from egrpo.runtime.device import select_device
        from egrpo.models import family_of

        mcfg = cfg["model"]
        self.pipe, self.cfg = pipe, cfg
        self.device = torch.device(device) if device is not None else select_device(cfg)
        self.transformer = pipe.transformer
        self.resolution = resolution or cfg["sampling"]["resolution"]
        self.guidance = cfg["sampling"]["guidance"] if guidance is None else guidance
        self.family: Family = family_of(pipe)(pipe, cfg, self.resolution, self.guidance, self.device)
        self.schedule = cfg["sampling"].get("schedule", "static")
        self.compute_dtype = getattr(torch, mcfg["dtype"])  # bf16 compute over fp32 master weights
        self.decode_batch_size = mcfg.get("decode_batch_size", 64)
        self.offload_text_encoders = mcfg.get("offload_text_encoders", False)
        self.prompt_cache_size = mcfg.get("prompt_cache_size", 4096)
        self._prompt_cache: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
        self._shared: dict[str, torch.Tensor] | None = None
        self.round_timesteps = False     # feed int(1000*sigma)/1000 (set by the trainer from the recipe)
        self.compiled = None             # torch.compile'd transformer for calls without gradients (model.compile)
        self.reference = None            # frozen copy for KL under full fine-tuning (else: adapter off)
        self.nfe = 0                     # transformer evaluations of the policy, per sample
        self.nfe_reference = 0           # evaluations of the reference policy (KL), per sample
        text_device = torch.device("cpu") if self.offload_text_encoders else self.device
        pipe.vae.to(self.device).requires_grad_(False).eval()
        for encoder in self.family.text_encoders():
            encoder.to(text_device).requires_grad_(False).eval()
        self.transformer.to(self.device).requires_grad_(False)
        if mcfg.get("compile", False):
            self.compile()

    @property
    def evaluations_per_call(self) -> int:
        return self.family.evaluations_per_call

    def compile(self) -> None:
        """torch.compile the transformer for the calls without gradients (rollouts, sampling); the
        compiled module shares the transformer's parameters, so it follows every optimizer step."""
        self.compiled = torch.compile(self.transformer)

    def sigmas(self, num_steps: int) -> torch.Tensor:
        """The sigma schedule [N+1] (float64): `static` = E-GRPO's closed form with sampling.shift
        (egrpo.sde.sigma_schedule), `pipeline` = what the family's diffusers pipeline uses."""
        if self.schedule == "pipeline":
            return self.family.pipeline_sigmas(num_steps)
        return sde.sigma_schedule(num_steps, self.cfg["sampling"]["shift"])

    # ---- text ------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, prompts: list[str]) -> Conditioning:
        """Text conditioning of a batch of prompts, on the device. Each prompt is encoded once and
        kept on the CPU (the model.prompt_cache_size most recent); with model.offload_text_encoders
        the encoders visit the device only while new prompts are encoded."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self._prompt_cache))
        rows_of = {}
        if missing:
            encoders = self.family.text_encoders()
            if self.offload_text_encoders:
                for e in encoders:
                    e.to(self.device)
            try:
                rows, shared = self.family.encode(missing)
            finally:
                if self.offload_text_encoders:
                    for e in encoders:
                        e.to("cpu")
            self._shared = {k: v.cpu() for k, v in shared.items()}
            rows_of = {p: {k: v.cpu() for k, v in r.items()} for p, r in zip(missing, rows)}
            if self.prompt_cache_size:
                self._prompt_cache.update(rows_of)
        batch = []
        for p in prompts:
            if p in self._prompt_cache:
                self._prompt_cache.move_to_end(p)
                batch.append(self._prompt_cache[p])
            else:
                batch.append(rows_of[p])
        while len(self._prompt_cache) > max(self.prompt_cache_size, len(set(prompts))):
            self._prompt_cache.popitem(last=False)
        return Conditioning(self.family.collate(batch), dict(self._shared)).to(self.device)

    # ---- latents ------------------------------------------------------------------------------------
    def initial_noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Standard normal latents [n, *latent_shape], drawn on the CPU for reproducibility."""
        noise = torch.randn(n, *self.family.latent_shape, generator=generator)  # cpu: drawn on the CPU for reproducibility, moved below
        return noise.to(self.device)

    def velocity(self, x: torch.Tensor, sigma: float | torch.Tensor, cond: Conditioning,
                 reference: bool = False) -> torch.Tensor:
        """The (guided) velocity of the batch x at sigma (a number, or one per sample); adds the
        transformer evaluations (batch x evaluations_per_call) to `nfe`.

        reference=True evaluates the reference policy (the base model: LoRA adapter switched off,
        or the frozen copy under full fine-tuning) without gradients, counted in `nfe_reference`.
        """
        calls = x.shape[0] * self.evaluations_per_call
        if reference:
            self.nfe_reference += calls
            with torch.no_grad():
                if self.reference is not None:
                    return self._forward(self.reference, x, sigma, cond)
                self.transformer.disable_adapters()
                try:
                    return self._forward(self.transformer, x, sigma, cond)
                finally:
                    self.transformer.enable_adapters()
        self.nfe += calls
        net = self.compiled if self.compiled is not None and not torch.is_grad_enabled() else self.transformer
        return self._forward(net, x, sigma, cond)

    def timesteps(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """Per-sample sigmas [B] in float64, rounded to int(1000*sigma)/1000 when the recipe rounds:
        one sigma, one value, whichever path (scalar or per-sample) asks."""
        batch = x.shape[0]
        if torch.is_tensor(sigma) and sigma.ndim == 1:
            sigma = sigma.to(device=self.device, dtype=torch.float64)
        else:
            sigma = torch.full((batch,), float(sigma), device=self.device, dtype=torch.float64)
        return sde.model_timestep(sigma, self.round_timesteps)

    def _forward(self, net, x: torch.Tensor, sigma: float | torch.Tensor, cond: Conditioning) -> torch.Tensor:
        if cond.batch != x.shape[0]:
            cond = cond.expand(x.shape[0])
        # trainable fp32 master weights (full or LoRA) compute in the model's dtype (bf16 at paper scale)
        with torch.autocast(self.device.type, dtype=self.compute_dtype, enabled=self.compute_dtype != torch.float32):
            v = self.family.predict(net, x.float(), self.timesteps(x, sigma), cond)
        return v.float()

    @torch.no_grad()
    def decode(self, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """Latents [B, ...] -> images [B, 3, H, W] in [0, 1] (float32, CPU), model.decode_batch_size
        images per VAE call."""
        from egrpo.runtime.device import memory_phase

        images = []
        with memory_phase("decode", self.device):
            for chunk in x.to(self.device).split(batch_size or self.decode_batch_size):
                images.append((self.family.decode(chunk).float() / 2 + 0.5).clamp(0, 1).cpu())
        return torch.cat(images)


def check_resolution(resolution: int, multiple: int) -> None:
    if resolution % multiple:
        raise UserError(f"sampling.resolution: {resolution} must be a multiple of {multiple} for this model")
