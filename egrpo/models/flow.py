"""FlowModel: one family's pipeline as the rollout, the trainer and the stages use it (encode,
counted velocity, decode, schedule), whatever the family (egrpo/models/<family>.py adapts it)."""
from __future__ import annotations

import logging
from collections import OrderedDict

import torch

from egrpo import sde
from egrpo.models.base import Conditioning, Family
from egrpo.models.pipeline import schedule_of_family
from egrpo.models.registry import family_of
from egrpo.runtime.device import memory_phase, select_device

log = logging.getLogger("egrpo.models")


class FlowModel:
    """A family's pipeline with the calling conventions the rollout and the trainer use.

    `velocity` counts transformer evaluations per sample in `nfe` (2 per sample under true CFG).
    Latents and timesteps are fed in fp32 and the forward computes in model.dtype under autocast
    when that is lower: the official trainers' call (fp32 inputs under torch.autocast(bf16)). Inside,
    FLUX and Qwen-Image cast the timestep to their first layer's output dtype, as they do there.
    """

    def __init__(self, pipe, cfg: dict, device: torch.device | str | None = None, resolution: int | None = None,
                 guidance: float | None = None):
        mcfg = cfg["model"]
        self.pipe, self.cfg = pipe, cfg
        self.device = torch.device(device) if device is not None else select_device(cfg)
        self.transformer = pipe.transformer
        self.resolution = resolution or cfg["sampling"]["resolution"]
        self.guidance = cfg["sampling"]["guidance"] if guidance is None else guidance
        self.family: Family = family_of(pipe)(pipe, cfg, self.resolution, self.guidance, self.device)
        self.schedule = schedule_of_family(cfg, self.family.name)
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
        noise = torch.randn(n, *self.family.latent_shape, generator=generator, device="cpu")  # on the CPU: drawn on the CPU for reproducibility, moved below
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

        images = []
        with memory_phase("decode", self.device):
            for chunk in x.to(self.device).split(batch_size or self.decode_batch_size):
                images.append((self.family.decode(chunk).float() / 2 + 0.5).clamp(0, 1).cpu())
        return torch.cat(images)
