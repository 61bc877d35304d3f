"""The paper's math: sigma schedule, SDE/ODE transitions, log-probabilities, analytic entropy.

Pure tensor math in float32; imports nothing of the project. Notation (DESIGN.md §2, 0-based):

    N            number of sampling steps; step i goes from sigma_i to sigma_{i+1}
    shift        time shift of the schedule
    eta          noise level of the SDE
    s_i          = 1 - i/N                       (i = 0 … N)
    sigma_i      = shift*s_i / (1 + (shift-1)*s_i)
    v            = model(x_i, sigma_i)           velocity of the flow model
    k            merge length: a transition i -> j = i + k (k = 1 plain, k > 1 merged)
    dt           = sigma_j - sigma_i  (< 0)
    std_t        = eta * sqrt(sigma_i / (1 - sigma_i')),  sigma_i' = sigma_1 if sigma_i == 1 else sigma_i
    mean         = x*(1 + std_t^2/(2 sigma_i)*dt) + v*(1 + std_t^2*(1-sigma_i)/(2 sigma_i))*dt
    x_j          = mean + std_t*sqrt(-dt) * noise                      (SDE transition)
    x_j          = x + v*dt                                            (ODE transition, eta = 0)
    log p(x_j|x_i) = mean over latent dims of log N(x_j; mean, (std_t*sqrt(-dt))^2)
    H(i, k)      = 0.5 * log(2*pi*e * std_t^2 * (-dt))                 (nats per latent dim)

The mean is the Euler step of the reverse-time SDE whose marginals match the flow ODE
(Flow-GRPO's form); E-GRPO uses the same transition with a larger dt for merged steps.
The SDE of DanceGRPO (std = eta*sqrt(-dt), score-based drift) is `dance_step_mean_std`.
"""
from __future__ import annotations

import math

import torch

LOG_2PI = math.log(2 * math.pi)


def sigma_schedule(num_steps: int, shift: float) -> torch.Tensor:
    """sigma_i = shift*s_i / (1 + (shift-1)*s_i), s_i = linspace(1, 0, N+1); shape [N+1], float64.

    Equals diffusers' FlowMatchEulerDiscreteScheduler(shift=shift) after
    set_timesteps(sigmas=linspace(1, 1/N, N)) (which appends the final 0).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    s = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    return shift * s / (1 + (shift - 1) * s)


def sde_std(sigmas: torch.Tensor, i: int, eta: float) -> float:
    """std_t = eta * sqrt(sigma_i / (1 - sigma_i)); sigma_0 = 1 uses sigma_1 in the denominator only."""
    sigma = float(sigmas[i])
    denom_sigma = float(sigmas[1]) if sigma >= 1.0 else sigma
    return eta * math.sqrt(sigma / (1.0 - denom_sigma))


def sde_mean_std(x: torch.Tensor, v: torch.Tensor, sigmas: torch.Tensor, i: int, j: int,
                 eta: float) -> tuple[torch.Tensor, float]:
    """Mean and transition std (std_t*sqrt(-dt)) of the SDE transition i -> j (j > i)."""
    sigma, dt = float(sigmas[i]), float(sigmas[j] - sigmas[i])
    std_t = sde_std(sigmas, i, eta)
    mean = (x * (1 + std_t**2 / (2 * sigma) * dt)
            + v * (1 + std_t**2 * (1 - sigma) / (2 * sigma)) * dt)
    return mean, std_t * math.sqrt(-dt)


def dance_mean_std(x: torch.Tensor, v: torch.Tensor, sigmas: torch.Tensor, i: int, j: int,
                   eta: float) -> tuple[torch.Tensor, float]:
    """DanceGRPO's SDE: std = eta*sqrt(-dt), drift = Euler step + 0.5*eta^2*score*dt.

    x0_hat = x - sigma_i*v,  score = -(x - (1 - sigma_i)*x0_hat) / sigma_i^2,
    mean = x + v*dt - 0.5*eta^2*score*dt.
    """
    sigma, dt = float(sigmas[i]), float(sigmas[j] - sigmas[i])
    x0_hat = x - sigma * v
    score = -(x - (1 - sigma) * x0_hat) / sigma**2
    mean = x + v * dt - 0.5 * eta**2 * score * dt
    return mean, eta * math.sqrt(-dt)


def gaussian_log_prob(sample: torch.Tensor, mean: torch.Tensor, std: float) -> torch.Tensor:
    """Mean over all but the first dim of log N(sample; mean, std^2), computed in float32."""
    sample, mean = sample.float(), mean.float()
    logp = -((sample - mean) ** 2) / (2 * std**2) - math.log(std) - 0.5 * LOG_2PI
    return logp.flatten(1).mean(dim=1)


def gaussian_kl_same_std(mean_p: torch.Tensor, mean_q: torch.Tensor, std: float) -> torch.Tensor:
    """KL(N(mean_p, std^2) || N(mean_q, std^2)) = |mean_p - mean_q|^2 / (2 std^2), mean over latent dims."""
    return ((mean_p.float() - mean_q.float()) ** 2).flatten(1).mean(dim=1) / (2 * std**2)


def ode_step(x: torch.Tensor, v: torch.Tensor, sigmas: torch.Tensor, i: int, j: int) -> torch.Tensor:
    """Euler step of the flow ODE: x_j = x_i + v*(sigma_j - sigma_i)."""
    return x + v * float(sigmas[j] - sigmas[i])


def analytic_entropy(sigmas: torch.Tensor, i: int, k: int, eta: float) -> float:
    """H(i, k) = 0.5*log(2*pi*e*std_t^2*(sigma_i - sigma_{i+k})), nats per latent dimension."""
    std_t = sde_std(sigmas, i, eta)
    return 0.5 * math.log(2 * math.pi * math.e * std_t**2 * float(sigmas[i] - sigmas[i + k]))


def step_entropies(sigmas: torch.Tensor, eta: float) -> list[float]:
    """H(i, 1) for every step i = 0 … N-1."""
    return [analytic_entropy(sigmas, i, 1, eta) for i in range(len(sigmas) - 1)]


def group_advantages(rewards: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """A = (r - mean_G r) / (std_G r + eps) along the last dim (population std).

    Non-finite rewards get advantage 0 and are left out of the statistics; a group whose finite
    rewards all tie gives zeros, never NaN.
    """
    finite = torch.isfinite(rewards)
    count = finite.sum(-1, keepdim=True).clamp(min=1)
    r = torch.where(finite, rewards, torch.zeros_like(rewards))
    mean = r.sum(-1, keepdim=True) / count
    var = (torch.where(finite, r - mean, torch.zeros_like(r)) ** 2).sum(-1, keepdim=True) / count
    adv = (r - mean) / (var.sqrt() + eps)
    return torch.where(finite, adv, torch.zeros_like(adv))


def ppo_clip_loss(logp_new: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor,
                  clip_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """loss = mean(max(-A*ratio, -A*clip(ratio, 1-eps, 1+eps))), ratio = exp(logp_new - logp_old).

    Returns (loss, ratio).
    """
    ratio = torch.exp(logp_new - logp_old)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return torch.maximum(unclipped, clipped).mean(), ratio
