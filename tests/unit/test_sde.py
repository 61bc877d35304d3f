"""The math of egrpo.sde against closed forms, diffusers, and the values quoted in docs/design.md."""
import math

import numpy as np
import pytest
import torch

from egrpo import sde


def test_sigma_schedule_closed_form_and_diffusers():
    from diffusers import FlowMatchEulerDiscreteScheduler

    for n, shift in [(16, 3.0), (8, 1.0), (4, 5.0)]:
        sigmas = sde.sigma_schedule(n, shift)
        s = np.linspace(1, 0, n + 1)
        np.testing.assert_allclose(sigmas.numpy(), shift * s / (1 + (shift - 1) * s), atol=1e-12)
        scheduler = FlowMatchEulerDiscreteScheduler(shift=shift, use_dynamic_shifting=False)
        scheduler.set_timesteps(sigmas=np.linspace(1, 1 / n, n))
        np.testing.assert_allclose(scheduler.sigmas.numpy(), sigmas.numpy(), atol=1e-6)
    # a plain set_timesteps(N) gives another schedule: the pinned call is needed
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=False)
    scheduler.set_timesteps(16)
    assert abs(float(scheduler.sigmas[-2]) - float(sde.sigma_schedule(16, 3.0)[-2])) > 0.1


def test_entropy_values_quoted_in_design():
    sigmas = sde.sigma_schedule(16, 3.0)
    h = sde.step_entropies(sigmas, 0.7)
    assert h[0] == pytest.approx(1.062, abs=1e-3)
    assert h[1] == pytest.approx(1.095, abs=1e-3)
    assert h[15] == pytest.approx(-0.638, abs=1e-3)
    assert h[0] < h[1]
    assert all(a > b for a, b in zip(h[1:], h[2:])), "falls monotonically from step 1"
    merged = {k: sde.analytic_entropy(sigmas, 8, k, 0.7) for k in (1, 2, 4, 7)}
    assert merged == pytest.approx({1: 0.114, 2: 0.495, 4: 0.918, 7: 1.342}, abs=1e-3)


def test_entropy_closed_form():
    sigmas = sde.sigma_schedule(10, 2.0)
    i, k, eta = 3, 2, 0.5
    si, sj = float(sigmas[i]), float(sigmas[i + k])
    std_t = eta * math.sqrt(si / (1 - si))
    expected = 0.5 * math.log(2 * math.pi * math.e * std_t**2 * (si - sj))
    assert sde.analytic_entropy(sigmas, i, k, eta) == pytest.approx(expected, abs=1e-12)
    # step 0: sigma_0 = 1 is replaced by sigma_1 in the denominator only
    s1 = float(sigmas[1])
    assert sde.sde_std(sigmas, 0, eta) == pytest.approx(eta * math.sqrt(1.0 / (1 - s1)), abs=1e-12)


def test_sde_mean_std_closed_form():
    torch.manual_seed(0)
    sigmas = sde.sigma_schedule(16, 3.0)
    x, v = torch.randn(3, 5, 4), torch.randn(3, 5, 4)
    for i, j in [(0, 1), (4, 5), (8, 12), (15, 16)]:
        si, dt = float(sigmas[i]), float(sigmas[j] - sigmas[i])
        std_t = sde.sde_std(sigmas, i, 0.7)
        mean, std = sde.sde_mean_std(x, v, sigmas, i, j, 0.7)
        expected = x * (1 + std_t**2 / (2 * si) * dt) + v * (1 + std_t**2 * (1 - si) / (2 * si)) * dt
        torch.testing.assert_close(mean, expected, atol=1e-6, rtol=0)
        assert std == pytest.approx(std_t * math.sqrt(-dt), abs=1e-12)


def test_sde_with_tiny_eta_approaches_ode():
    sigmas = sde.sigma_schedule(8, 3.0)
    x, v = torch.randn(2, 4, 4), torch.randn(2, 4, 4)
    mean, std = sde.sde_mean_std(x, v, sigmas, 3, 4, 1e-6)
    torch.testing.assert_close(mean, sde.ode_step(x, v, sigmas, 3, 4), atol=1e-6, rtol=0)
    assert std < 1e-5
    torch.testing.assert_close(sde.ode_step(x, v, sigmas, 3, 5), x + v * float(sigmas[5] - sigmas[3]))


def test_dance_sde_closed_form():
    sigmas = sde.sigma_schedule(8, 3.0)
    x, v = torch.randn(2, 4, 4), torch.randn(2, 4, 4)
    i, j, eta = 2, 3, 0.3
    si, dt = float(sigmas[i]), float(sigmas[j] - sigmas[i])
    x0 = x - si * v
    score = -(x - (1 - si) * x0) / si**2
    mean, std = sde.dance_mean_std(x, v, sigmas, i, j, eta)
    torch.testing.assert_close(mean, x + v * dt - 0.5 * eta**2 * score * dt, atol=1e-6, rtol=0)
    assert std == pytest.approx(eta * math.sqrt(-dt))


def test_gaussian_log_prob_matches_torch_normal():
    torch.manual_seed(1)
    mean, sample = torch.randn(4, 6, 3), torch.randn(4, 6, 3)
    std = 0.37
    expected = torch.distributions.Normal(mean, std).log_prob(sample).flatten(1).mean(1)
    torch.testing.assert_close(sde.gaussian_log_prob(sample, mean, std), expected, atol=1e-6, rtol=0)


def test_group_advantages():
    r = torch.tensor([1.0, 2.0, 3.0, 4.0])
    a = sde.group_advantages(r)
    torch.testing.assert_close(a, (r - 2.5) / (r.std(unbiased=False) + 1e-8))
    assert float(a.mean()) == pytest.approx(0.0, abs=1e-6)
    assert torch.equal(sde.group_advantages(torch.full((5,), 0.3)), torch.zeros(5))
    a = sde.group_advantages(torch.tensor([1.0, float("nan"), 3.0, float("inf")]))
    assert torch.isfinite(a).all() and a[1] == 0 and a[3] == 0
    torch.testing.assert_close(a[[0, 2]], torch.tensor([-1.0, 1.0]), atol=1e-6, rtol=0)


def test_group_advantages_sample_std_eps_and_global_std():
    """[1, 2, 3, 4]: population std sqrt(5/4) (np.std, flow_grpo), sample std sqrt(5/3) (torch.std, the others)."""
    r = torch.tensor([1.0, 2.0, 3.0, 4.0])
    torch.testing.assert_close(sde.group_advantages(r, unbiased=True), (r - 2.5) / (math.sqrt(5 / 3) + 1e-8))
    torch.testing.assert_close(sde.group_advantages(r, eps=1e-4), (r - 2.5) / (math.sqrt(5 / 4) + 1e-4))
    torch.testing.assert_close(sde.group_advantages(r, std=2.0), (r - 2.5) / 2.0)
    # NaN members are left out of the Bessel count too: 1 and 3 -> mean 2, sample std sqrt(2)
    a = sde.group_advantages(torch.tensor([1.0, float("nan"), 3.0]), unbiased=True)
    torch.testing.assert_close(a, torch.tensor([-1.0, 0.0, 1.0]) / math.sqrt(2), atol=1e-6, rtol=0)
    assert torch.equal(sde.group_advantages(torch.tensor([0.5]), unbiased=True), torch.zeros(1))
    assert sde.batch_std(torch.tensor([1.0, 2.0, 3.0, 4.0, float("nan")])) == pytest.approx(math.sqrt(5 / 4))
    assert sde.batch_std(torch.tensor([1.0])) == 0.0


def test_kl_to_reference_flow_grpo_form_and_exact_form():
    """flow_grpo: |dm|^2 / (2 std_t^2) with std_t the SDE coefficient; the exact Gaussian KL divides by the
    transition variance std_t^2 (sigma_i - sigma_j), i.e. is 1/(sigma_i - sigma_j) times stronger."""
    sigmas = sde.sigma_schedule(16, 3.0)
    mean, mean_ref = torch.zeros(1, 2, 2), torch.full((1, 2, 2), 0.1)
    for i in (0, 5, 15):
        std_t = sde.sde_std(sigmas, i, 0.7)
        _, transition_std = sde.sde_mean_std(mean, mean, sigmas, i, i + 1, 0.7)
        flow = sde.kl_to_reference(mean, mean_ref, transition_std, sigmas, i, i + 1, "sde_std")
        exact = sde.kl_to_reference(mean, mean_ref, transition_std, sigmas, i, i + 1, "transition_std")
        assert float(flow) == pytest.approx(0.01 / (2 * std_t**2), rel=1e-5)
        assert float(exact) == pytest.approx(float(flow) / float(sigmas[i] - sigmas[i + 1]), rel=1e-5)
    # DanceGRPO's SDE: transition std eta*sqrt(-dt), so the SDE coefficient is eta
    _, dance_std = sde.dance_mean_std(mean, mean + 1.0, sigmas, 3, 4, 0.3)
    assert float(sde.kl_to_reference(mean, mean_ref, dance_std, sigmas, 3, 4)) == pytest.approx(0.01 / (2 * 0.09), rel=1e-5)


def test_x0_prediction_and_timestep_rounding():
    x, v = torch.tensor([[[2.0]]]), torch.tensor([[[3.0]]])
    torch.testing.assert_close(sde.x0_prediction(x, v, 0.25), torch.tensor([[[1.25]]]))
    sigmas = sde.sigma_schedule(16, 3.0)
    assert sde.model_timestep(float(sigmas[3]), False) == float(sigmas[3])
    assert sde.model_timestep(float(sigmas[3]), True) == int(float(sigmas[3]) * 1000) / 1000 == 0.928
    rounded = sde.model_timestep(sigmas.float(), True)
    assert rounded[0] == 1.0 and rounded[-1] == 0.0 and float(rounded[3]) == pytest.approx(0.928)


def test_ppo_clip_loss_closed_form():
    logp_old = torch.zeros(4)
    logp_new = torch.log(torch.tensor([0.5, 1.0, 1.5, 1.0001]))
    adv = torch.tensor([1.0, -1.0, 1.0, -2.0])
    loss, ratio = sde.ppo_clip_loss(logp_new, logp_old, adv, 0.2)
    r = torch.tensor([0.5, 1.0, 1.5, 1.0001])
    expected = torch.maximum(-adv * r, -adv * r.clamp(0.8, 1.2)).mean()
    torch.testing.assert_close(ratio, r)
    assert float(loss) == pytest.approx(float(expected), abs=1e-6)
    # at ratio 1 the loss is -mean(A) and its gradient is -A/G
    lp = torch.zeros(3, requires_grad=True)
    loss, _ = sde.ppo_clip_loss(lp, torch.zeros(3), torch.tensor([1.0, -2.0, 0.5]), 1e-4)
    loss.backward()
    torch.testing.assert_close(lp.grad, -torch.tensor([1.0, -2.0, 0.5]) / 3)
