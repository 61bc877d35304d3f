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

DiffusionNFT (no SDE, no log-probabilities; NVlabs/DiffusionNFT scripts/train_nft_sd3.py), per
clean sample x0 of a rollout, trained sigma t and fresh noise e:

    x_t          = (1 - t) x0 + t e
    r            = clip((clip(A, -c, c) / c) / 2 + 1/2, 0, 1)           (optimality probability, c = adv_clip_max)
    v+           = beta v_theta + (1 - beta) v_old                      (implicit positive policy)
    v-           = (1 + beta) v_old - beta v_theta                      (implicit negative policy)
    x0+-         = x_t - t v+-,   w+- = max(mean |x0+- - x0|, 1e-5)     (no gradient through w)
    loss         = c * [ r |x0+ - x0|^2 / w+ + (1 - r) |x0- - x0|^2 / w- ] / beta   (means over latent dims)
    old policy   <- d old + (1 - d) theta after each iteration,  d = min(u (step - f), h) for step >= f, else 0
                   (decay_type 0: u = h = 0; 1: f 0, u 1e-3, h 0.5; 2: f 75, u 7.5e-3, h 0.999)

Its rollouts are deterministic: DPM-Solver++(2M) in the flow parametrisation (`dpm_update`).

BranchGRPO (Fredreic1849/BranchGRPO fastvideo/train_branchgrpo_flux.py) rolls out a tree: at split
steps every node gets two children (noise scaled by `split_noise`, log-prob under the unscaled std),
the leaves are scored, every node's reward comes from its leaves (`tree_node_rewards`), and each edge
trains with its child's reward normalized over the tree's nodes of the same depth (`tree_advantages`).
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


# ---- DiffusionNFT ----------------------------------------------------------------------------------

def nft_optimality(advantages: torch.Tensor, clip_max: float) -> torch.Tensor:
    """r = clip((clip(A, -c, c)/c)/2 + 1/2, 0, 1): the advantage as the probability of being optimal."""
    a = torch.clamp(advantages, -clip_max, clip_max)
    return torch.clamp(a / clip_max / 2.0 + 0.5, 0, 1)


def _x0_regression(x0_pred: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """|x0_pred - x0|^2 / w per sample (mean over latent dims), w = max(mean|x0_pred - x0|, 1e-5) without gradient."""
    dims = tuple(range(1, x0.ndim))
    with torch.no_grad():
        w = (x0_pred.double() - x0.double()).abs().mean(dim=dims, keepdim=True).clip(min=1e-5)
    return ((x0_pred - x0) ** 2 / w).mean(dim=dims)


def nft_loss(v: torch.Tensor, v_old: torch.Tensor, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor,
             r: torch.Tensor, beta: float, clip_max: float) -> torch.Tensor:
    """The DiffusionNFT policy loss per sample [B]: c * (r * L+ + (1 - r) * L-) / beta, where L+- are the
    adaptively weighted x0 regressions of the implicit positive and negative policies (module doc).
    t: per-sample sigmas [B]; v_old carries no gradient."""
    t = t.view(-1, *([1] * (x0.ndim - 1))).to(x_t.dtype)
    v_old = v_old.detach()
    positive = beta * v + (1 - beta) * v_old
    negative = (1.0 + beta) * v_old - beta * v
    loss_pos = _x0_regression(x_t - t * positive, x0)
    loss_neg = _x0_regression(x_t - t * negative, x0)
    return clip_max * (r * loss_pos / beta + (1.0 - r) * loss_neg / beta)


NFT_DECAY = {0: (0, 0.0, 0.0), 1: (0, 0.001, 0.5), 2: (75, 0.0075, 0.999)}   # decay_type: (flat, uprate, uphold)


def nft_decay(step: int, decay_type: int) -> float:
    """d after `step` optimizer steps: 0 before `flat` steps, then min(uprate * (step - flat), uphold)."""
    flat, uprate, uphold = NFT_DECAY[decay_type]
    return 0.0 if step < flat else min((step - flat) * uprate, uphold)


def dpm_update(x: torch.Tensor, x0_preds: list[torch.Tensor], sigmas: torch.Tensor, i: int, order: int) -> torch.Tensor:
    """One step sigma_i -> sigma_{i+1} of DPM-Solver++ in the flow parametrisation (alpha = 1 - sigma,
    lambda = log(alpha/sigma), h = lambda_{i+1} - lambda_i, D_i = x_i - sigma_i v_i the x0-predictions
    so far, newest last):

        first step and last step (DDIM, eta 0): x_{i+1} = (1 - s') D_i + s' (x_i - (1 - s) D_i) / s
        first order:                            x_{i+1} = (s'/s) x_i - a' (e^-h - 1) D_i
        second order (2M):                      ... - a' (e^-h - 1) D_i - (a'/2) (e^-h - 1) (D_i - D_{i-1}) h / h_{i-1}

    with s = sigma_i, s' = sigma_{i+1}, a' = 1 - s'. The first and last steps are first order (the last
    lands on the x0-prediction); order 2 uses two predictions from the second step on. float64 math."""
    n = len(sigmas) - 1
    sig = sigmas.double()
    xd, d0 = x.double(), x0_preds[-1].double()
    s, t = sig[i], sig[i + 1]
    if i == 0 or i == n - 1:
        noise_pred = (xd - (1 - s) * d0) / s
        return ((1 - t) * d0 + t * noise_pred).to(x.dtype)
    lam = lambda u: torch.log(1 - u) - torch.log(u)
    h = lam(t) - lam(s)
    out = (t / s) * xd - (1 - t) * (torch.exp(-h) - 1.0) * d0
    if order == 2 and len(x0_preds) > 1:
        r0 = (lam(s) - lam(sig[i - 1])) / h
        out = out - 0.5 * (1 - t) * (torch.exp(-h) - 1.0) * (1.0 / r0) * (d0 - x0_preds[-2].double())
    return out.to(x.dtype)


# ---- BranchGRPO: rewards and advantages on a rollout tree --------------------------------------------
# Nodes are numbered in creation order (root 0); parents[c] is c's parent (-1 for the root). A node
# made by step i has depth i + 1.

def tree_node_rewards(parents: list[int], leaves: list[int], leaf_rewards: torch.Tensor,
                      edge_logps: torch.Tensor | None = None) -> torch.Tensor:
    """Every node's reward from its leaves' [num_nodes]:

        uniform (edge_logps None):  R(n) = mean of R over n's leaf descendants
        probability-weighted:       R(n) = sum_c softmax_c(log p(c | n)) R(c) over n's children
                                    (R(c) itself for an only child)
    """
    m = len(parents)
    children: list[list[int]] = [[] for _ in range(m)]
    for c, p in enumerate(parents):
        if p >= 0:
            children[p].append(c)
    rewards = torch.zeros(m, dtype=torch.float32, device="cpu")  # on the CPU: rewards, like every score
    total, count = torch.zeros(m, dtype=torch.float64, device="cpu"), torch.zeros(m, dtype=torch.float64, device="cpu")  # on the CPU: sums of rewards
    for leaf, r in zip(leaves, leaf_rewards.float().cpu()):
        rewards[leaf], total[leaf], count[leaf] = r, float(r), 1.0
    for n in reversed(range(m)):   # children are created after their parents
        if not children[n]:
            continue
        if edge_logps is None:
            total[n] = sum(total[c] for c in children[n])
            count[n] = sum(count[c] for c in children[n])
            rewards[n] = float(total[n] / count[n])
        elif len(children[n]) == 1:
            rewards[n] = rewards[children[n][0]]
        else:
            w = torch.softmax(edge_logps.float().cpu()[children[n]], dim=0)
            rewards[n] = (w * rewards[children[n]]).sum()
    return rewards


def tree_advantages(parents: list[int], node_rewards: torch.Tensor) -> torch.Tensor:
    """A(n) = (R(n) - mean_d R) / (std_d R + 1e-8) over the nodes of n's depth d (sample std); 0 for a
    depth with one node or with std < 1e-6; non-finite rewards give 0."""
    depth = [0] * len(parents)
    for c, p in enumerate(parents):
        depth[c] = 0 if p < 0 else depth[p] + 1
    depths = torch.tensor(depth, device="cpu")  # on the CPU: indexes the CPU rewards
    adv = torch.zeros_like(node_rewards)
    for d in depths.unique().tolist():
        idx = (depths == d).nonzero().flatten()
        if len(idx) <= 1:
            continue
        r = node_rewards[idx]
        std = r.std()
        if std < 1e-6:
            continue
        adv[idx] = (r - r.mean()) / (std + 1e-8)
    return torch.where(torch.isfinite(adv), adv, torch.zeros_like(adv))
