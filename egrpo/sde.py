"""The paper's math: sigma schedule, SDE/ODE transitions, log-probabilities, analytic entropy.

Pure tensor math in float32; imports nothing of the project. Notation (docs/design.md §2, 0-based):

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
    x0_hat       = x_i - sigma_i * v                                   (x0-prediction)
    A            = (r - mean_G r) / (std_G r + eps)                    (group advantage)
    KL(p || ref) = mean over latent dims of |mean - mean_ref|^2 / (2 d^2)
                   d = std_t (flow_grpo's form) or std_t*sqrt(-dt) (the exact Gaussian KL)

The mean is the Euler step of the reverse-time SDE whose marginals match the flow ODE
(Flow-GRPO's form); E-GRPO uses the same transition with a larger dt for merged steps.
The SDE of DanceGRPO (std = eta*sqrt(-dt), score-based drift) is `dance_mean_std`.
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
    s = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64, device="cpu")  # on the CPU: the schedule (float64), read as Python floats
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


def kl_to_reference(mean: torch.Tensor, mean_ref: torch.Tensor, transition_std: float, sigmas: torch.Tensor,
                    i: int, j: int, divisor: str = "sde_std") -> torch.Tensor:
    """KL term of transition i -> j: |mean - mean_ref|^2 / (2 d^2), mean over latent dims, per sample.

    divisor "transition_std": d = std_t*sqrt(-dt), the exact KL of the two Gaussian transitions;
    divisor "sde_std": d = std_t = transition_std / sqrt(-dt), flow_grpo's form (its KL is the exact
    one times (sigma_i - sigma_j), i.e. 6-46x weaker at N = 16, shift 3).
    """
    if divisor == "transition_std":
        d = transition_std
    elif divisor == "sde_std":
        d = transition_std / math.sqrt(float(sigmas[i] - sigmas[j]))
    else:
        raise ValueError(f"unknown KL divisor {divisor!r}")
    return gaussian_kl_same_std(mean, mean_ref, d)


def x0_prediction(x: torch.Tensor, v: torch.Tensor, sigma: float) -> torch.Tensor:
    """x0_hat = x - sigma*v: where the flow ODE lands from x in one step (DanceGRPO rewards this)."""
    return x - sigma * v


def model_timestep(sigma: float | torch.Tensor, rounding: bool):
    """The timestep fed to the transformer: sigma, or int(1000*sigma)/1000 as the official codes do."""
    if not rounding:
        return sigma
    if torch.is_tensor(sigma):
        return torch.floor(sigma.double() * 1000) / 1000
    return int(float(sigma) * 1000) / 1000


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


def group_advantages(rewards: torch.Tensor, eps: float = 1e-8, unbiased: bool = False,
                     std: torch.Tensor | float | None = None) -> torch.Tensor:
    """A = (r - mean_G r) / (std_G r + eps) along the last dim.

    unbiased: the sample (Bessel-corrected, torch.std) std instead of the population std (np.std);
    std: a given std instead of the group's (flow_grpo's global_std: the std of the whole batch).
    Non-finite rewards get advantage 0 and are left out of the statistics; a group whose finite
    rewards all tie gives zeros, never NaN.
    """
    finite = torch.isfinite(rewards)
    count = finite.sum(-1, keepdim=True)
    r = torch.where(finite, rewards, torch.zeros_like(rewards))
    mean = r.sum(-1, keepdim=True) / count.clamp(min=1)
    if std is None:
        dof = (count - 1 if unbiased else count).clamp(min=1)
        var = (torch.where(finite, r - mean, torch.zeros_like(r)) ** 2).sum(-1, keepdim=True) / dof
        std = var.sqrt()
    adv = (r - mean) / (std + eps)
    return torch.where(finite, adv, torch.zeros_like(adv))


def batch_std(rewards: torch.Tensor, unbiased: bool = False) -> float:
    """The std of all finite rewards of a batch (flow_grpo's global_std); 0 for fewer than 2."""
    finite = rewards[torch.isfinite(rewards)]
    if finite.numel() < 2:
        return 0.0
    return float(finite.double().std(unbiased=unbiased))


def ppo_clip_loss(logp_new: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor,
                  clip_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """loss = mean(max(-A*ratio, -A*clip(ratio, 1-eps, 1+eps))), ratio = exp(logp_new - logp_old).

    Returns (loss, ratio).
    """
    ratio = torch.exp(logp_new - logp_old)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return torch.maximum(unclipped, clipped).mean(), ratio
