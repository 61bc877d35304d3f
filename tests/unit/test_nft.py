"""DiffusionNFT against its official code: the loss, the old policy's decay and the DPM-Solver rollout
run on the same tensors as small reference functions transcribed from NVlabs/DiffusionNFT (commit
24af555; file and lines with each) and agree to 1e-6."""
import math

import pytest
import torch

from egrpo import sde
from egrpo.rollout import dpm_run


# ---- references, transcribed from the official code ------------------------------------------------

def official_loss(forward_prediction, old_prediction, xt, x0, t_expanded, advantages, beta, adv_clip_max):
    """scripts/train_nft_sd3.py lines 909-960 (adv_mode "all"): the policy loss before .mean()."""
    advantages_clip = torch.clamp(advantages, -adv_clip_max, adv_clip_max)
    normalized_advantages_clip = (advantages_clip / adv_clip_max) / 2.0 + 0.5
    r = torch.clamp(normalized_advantages_clip, 0, 1)
    positive_prediction = beta * forward_prediction + (1 - beta) * old_prediction.detach()
    implicit_negative_prediction = (1.0 + beta) * old_prediction.detach() - beta * forward_prediction
    x0_prediction = xt - t_expanded * positive_prediction
    with torch.no_grad():
        weight_factor = (torch.abs(x0_prediction.double() - x0.double())
                         .mean(dim=tuple(range(1, x0.ndim)), keepdim=True).clip(min=0.00001))
    positive_loss = ((x0_prediction - x0) ** 2 / weight_factor).mean(dim=tuple(range(1, x0.ndim)))
    negative_x0_prediction = xt - t_expanded * implicit_negative_prediction
    with torch.no_grad():
        negative_weight_factor = (torch.abs(negative_x0_prediction.double() - x0.double())
                                  .mean(dim=tuple(range(1, x0.ndim)), keepdim=True).clip(min=0.00001))
    negative_loss = ((negative_x0_prediction - x0) ** 2 / negative_weight_factor).mean(dim=tuple(range(1, x0.ndim)))
    ori_policy_loss = r * positive_loss / beta + (1.0 - r) * negative_loss / beta
    return ori_policy_loss * adv_clip_max


def official_return_decay(step, decay_type):
    """scripts/train_nft_sd3.py lines 169-189."""
    if decay_type == 0:
        flat, uprate, uphold = 0, 0.0, 0.0
    elif decay_type == 1:
        flat, uprate, uphold = 0, 0.001, 0.5
    elif decay_type == 2:
        flat, uprate, uphold = 75, 0.0075, 0.999
    if step < flat:
        return 0.0
    decay = (step - flat) * uprate
    return min(decay, uphold)


def official_dpm_sampling(v_pred_fn, z, sigma_schedule, order):
    """flow_grpo/diffusers_patch/solver.py: run_sampling with solver dpm1/dpm2 (lines 14-80) and
    dpm_step, ddim_update, dpm_solver_first_order_update, multistep_dpm_solver_second_order_update."""
    model_outputs, lower_order_nums = [None] * order, 0
    timesteps = sigma_schedule[:-1]
    sigmas = sigma_schedule.to(torch.float64)
    alpha_sigma = lambda s: (1 - s, s)
    for step_index in range(len(sigma_schedule) - 1):
        pred = v_pred_fn(z, sigma_schedule[step_index])
        lower_order_final = step_index == len(timesteps) - 1
        model_output = z - sigma_schedule[step_index] * pred.float()         # convert_model_output
        for i in range(order - 1):
            model_outputs[i] = model_outputs[i + 1]
        model_outputs[-1] = model_output
        sample = z.to(torch.float32)
        if order == 1 or lower_order_nums < 1 or lower_order_final:
            if step_index == 0 or lower_order_final:                          # ddim_update, eta 0
                t, s = sigmas[step_index + 1], sigmas[step_index]
                noise_pred = (sample - (1 - s) * model_output) / s
                prev = (1 - t) * model_output + torch.sqrt(t**2 - 0.0) * noise_pred
            else:                                                             # first order
                a_t, s_t = alpha_sigma(sigmas[step_index + 1])
                a_s, s_s = alpha_sigma(sigmas[step_index])
                h = (torch.log(a_t) - torch.log(s_t)) - (torch.log(a_s) - torch.log(s_s))
                prev = (s_t / s_s) * sample - (a_t * (torch.exp(-h) - 1.0)) * model_output
        else:                                                                 # second order (2M)
            a_t, s_t = alpha_sigma(sigmas[step_index + 1])
            a_s0, s_s0 = alpha_sigma(sigmas[step_index])
            a_s1, s_s1 = alpha_sigma(sigmas[step_index - 1])
            lam_t, lam_s0, lam_s1 = (torch.log(a) - torch.log(s) for a, s in ((a_t, s_t), (a_s0, s_s0), (a_s1, s_s1)))
            m0, m1 = model_outputs[-1], model_outputs[-2]
            h, h_0 = lam_t - lam_s0, lam_s0 - lam_s1
            r0 = h_0 / h
            d0, d1 = m0, (1.0 / r0) * (m0 - m1)
            prev = (s_t / s_s0) * sample - (a_t * (torch.exp(-h) - 1.0)) * d0 - 0.5 * (a_t * (torch.exp(-h) - 1.0)) * d1
        lower_order_nums = min(lower_order_nums + 1, order)
        z = prev.to(model_output.dtype)
    return z


# ---- agreement ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("beta", [1.0, 0.1])
def test_nft_loss_and_its_gradient_match_the_official_code(beta):
    torch.manual_seed(0)
    b = 6
    x0, noise = torch.randn(b, 16, 8), torch.randn(b, 16, 8)
    t = torch.rand(b) * 0.9 + 0.05
    te = t.view(-1, 1, 1)
    xt = (1 - te) * x0 + te * noise
    old = torch.randn(b, 16, 8)
    adv = torch.tensor([-7.0, -2.0, -0.1, 0.0, 1.5, 9.0])   # beyond the clip on both sides
    v1 = (old + 0.1 * torch.randn(b, 16, 8)).requires_grad_(True)
    v2 = v1.detach().clone().requires_grad_(True)
    ours = sde.nft_loss(v1, old, xt, x0, t, sde.nft_optimality(adv, 5.0), beta, 5.0)
    theirs = official_loss(v2, old, xt, x0, te, adv, beta, 5.0)
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=1e-6)
    ours.mean().backward()
    theirs.mean().backward()
    assert torch.allclose(v1.grad, v2.grad, atol=1e-6, rtol=1e-6)
    assert sde.nft_optimality(adv, 5.0).tolist() == pytest.approx([0.0, 0.3, 0.49, 0.5, 0.65, 1.0])


@pytest.mark.parametrize("decay_type", [0, 1, 2])
def test_old_policy_decay_matches_the_official_schedule(decay_type):
    for step in (0, 1, 10, 74, 75, 76, 200, 499, 500, 501, 10_000):
        assert sde.nft_decay(step, decay_type) == pytest.approx(official_return_decay(step, decay_type), abs=1e-12)


@pytest.mark.parametrize("order,n", [(2, 10), (2, 5), (1, 10), (2, 16)])
def test_dpm_rollout_matches_the_official_solver(order, n):
    """A nonlinear velocity field v(x, sigma) stands in for the model; the schedule starts at sigma 1
    (SD3's), so the second step's 2M update meets lambda = -inf as the official code does."""
    torch.manual_seed(1)
    sigmas = sde.sigma_schedule(n, 3.0)
    assert float(sigmas[0]) == 1.0 and float(sigmas[-1]) == 0.0
    a = torch.randn(8, 8) * 0.3

    def v(x, sigma, cond=None):
        return torch.tanh(x @ a) * (1 + float(sigma)) - 0.5 * x

    z = torch.randn(3, 4, 8)
    ours = dpm_run(v, z, None, sigmas, order)
    theirs = official_dpm_sampling(lambda x, s: v(x, s), z, sigmas, order)
    assert torch.isfinite(ours).all()
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=1e-6)


def test_dpm2_is_second_order_on_a_linear_flow():
    """On a flow whose exact ODE solution is known (x0-prediction constant: x_sigma = (1-sigma) x0 + sigma e),
    every solver lands on x0 exactly; on a harder field 2M is closer to a fine Euler solution than dpm1."""
    x0, e = torch.randn(2, 4, 8), torch.randn(2, 4, 8)
    sigmas = sde.sigma_schedule(6, 3.0)
    exact = lambda x, s, c=None: e - x0                    # the straight-line velocity
    for order in (1, 2):
        assert torch.allclose(dpm_run(exact, e.clone(), None, sigmas, order), x0, atol=1e-5)
    a = torch.randn(8, 8) * 0.5
    curved = lambda x, s, c=None: torch.tanh(x @ a) - x * math.cos(float(s))
    fine = sde.sigma_schedule(4000, 3.0)
    x = e.clone()
    for i in range(4000):
        x = sde.ode_step(x, curved(x, fine[i]), fine, i, i + 1)
    errors = [float((dpm_run(curved, e.clone(), None, sigmas, order) - x).abs().mean()) for order in (1, 2)]
    assert errors[1] < errors[0]
