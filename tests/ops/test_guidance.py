"""DDS / SDS maths with hand-made noise predictors: no nerfstudio, no weights."""

from __future__ import annotations

import torch

from ednerf_ns.ops import guidance

ALPHAS = torch.linspace(0.999, 0.01, 1000)


def text(value: float, length: int = 3, dim: int = 2) -> torch.Tensor:
    return torch.full((1, length, dim), float(value))


def linear_predictor(x: torch.Tensor, t: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """A predictor that depends on the input, the timestep and the text, so every argument matters."""
    return 0.3 * x + emb.mean(dim=(1, 2)).view(-1, 1, 1, 1) + 1e-3 * t.view(-1, 1, 1, 1).float()


def test_dds_is_exactly_zero_for_identical_inputs_and_prompts():
    z = torch.randn(1, 4, 8, 8)
    t, eps = guidance.sample_timestep_and_noise(z, 50, 950)
    grad = guidance.dds_gradient(z, z.clone(), text(0.5), text(0.5), text(0.0), linear_predictor, ALPHAS, t, eps, 7.5)
    assert torch.count_nonzero(grad) == 0


def test_dds_shares_timestep_and_noise_between_branches():
    calls = []

    def recording(x, t, emb):
        calls.append((x.clone(), t.clone()))
        return torch.zeros_like(x)

    z_tgt, z_src = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    t = torch.tensor([400])
    eps = torch.randn_like(z_tgt)
    guidance.dds_gradient(z_tgt, z_src, text(1), text(2), text(0), recording, ALPHAS, t, eps, 7.5)
    assert len(calls) == 1, "one batched UNet call per step"
    x, ts = calls[0]
    assert x.shape[0] == 4 and torch.equal(ts, torch.full((4,), 400))
    a = ALPHAS[400]
    # recover the noise from each noised latent: it must be the same eps for both branches
    eps_tgt = (x[0] - a.sqrt() * z_tgt[0]) / (1 - a).sqrt()
    eps_src = (x[2] - a.sqrt() * z_src[0]) / (1 - a).sqrt()
    assert torch.allclose(eps_tgt, eps[0], atol=1e-5) and torch.allclose(eps_src, eps[0], atol=1e-5)
    assert torch.equal(x[0], x[1]) and torch.equal(x[2], x[3])


def test_cfg_combination_matches_hand_computation():
    def by_text(x, t, emb):
        return emb[:, :1, :1].reshape(-1, 1, 1, 1).expand_as(x).clone()

    z = torch.zeros(1, 4, 2, 2)
    t, eps = torch.tensor([10]), torch.zeros_like(z)
    # predictions: uncond 1, target 3, source 2 -> (1 + s(3 - 1)) - (1 + s(2 - 1)) = s
    grad = guidance.dds_gradient(z, z, text(3.0), text(2.0), text(1.0), by_text, ALPHAS, t, eps, 5.0)
    assert torch.allclose(grad, torch.full_like(z, 5.0))
    assert torch.allclose(
        guidance.classifier_free_guidance(torch.tensor(1.0), torch.tensor(3.0), 2.0), torch.tensor(5.0)
    )


def test_sds_differs_from_dds():
    z_tgt, z_src = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    t, eps = guidance.sample_timestep_and_noise(z_tgt, 50, 950, torch.Generator().manual_seed(0))
    dds = guidance.dds_gradient(z_tgt, z_src, text(1), text(1), text(0), linear_predictor, ALPHAS, t, eps, 7.5)
    sds = guidance.sds_gradient(z_tgt, text(1), text(0), linear_predictor, ALPHAS, t, eps, 7.5)
    assert not torch.allclose(dds, sds)
    # SDS of the unchanged image is not zero: the noise residual stays (what DDS cancels)
    assert sds.abs().mean() > 1e-3


def test_mask_zeroes_gradient_outside():
    z = torch.randn(1, 4, 6, 6, requires_grad=True)
    grad = torch.randn(1, 4, 6, 6)
    mask = torch.zeros(1, 1, 6, 6)
    mask[..., 2:4, 2:4] = 1
    guidance.guidance_loss(z, grad, mask).backward()
    assert torch.count_nonzero(z.grad * (1 - mask)) == 0
    inside = z.grad * mask
    assert torch.allclose(inside, grad * mask / z.numel())


def test_masked_reconstruction_only_outside_the_mask():
    z_src = torch.zeros(1, 4, 4, 4)
    z_tgt = torch.ones(1, 4, 4, 4, requires_grad=True)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1  # top half is the edit region
    loss = guidance.masked_reconstruction_loss(z_tgt, z_src, mask)
    assert torch.isclose(loss, torch.tensor(0.5))  # half of the elements differ by 1
    loss.backward()
    assert torch.count_nonzero(z_tgt.grad[..., :2, :]) == 0 and torch.all(z_tgt.grad[..., 2:, :] > 0)
    assert guidance.masked_reconstruction_loss(z_tgt, z_src, None) == 0


def test_guidance_loss_gradient_is_the_mse_to_detached_target_form():
    z = torch.randn(1, 4, 5, 5, requires_grad=True)
    grad = torch.randn(1, 4, 5, 5)
    guidance.guidance_loss(z, grad).backward()
    z2 = z.detach().clone().requires_grad_(True)
    (0.5 * ((z2 - (z2 - grad).detach()) ** 2).mean()).backward()
    assert torch.allclose(z.grad, z2.grad)


def test_non_finite_guidance_is_zeroed_and_flagged_without_sync():
    grad = torch.randn(1, 4, 3, 3)
    grad[0, 0, 0, 0] = float("nan")
    out = guidance.sanitize(grad, clip=None)
    assert out.finite.dim() == 0 and not bool(out.finite)
    assert torch.count_nonzero(out.grad) == 0
    ok = guidance.sanitize(torch.full((1, 4, 3, 3), 5.0), clip=2.0)
    assert bool(ok.finite) and torch.all(ok.grad == 2.0)


def test_timesteps_stay_in_range_and_weights():
    z = torch.zeros(64, 4, 2, 2)
    t, eps = guidance.sample_timestep_and_noise(z, 100, 200)
    assert int(t.min()) >= 100 and int(t.max()) <= 200 and eps.shape == z.shape
    assert torch.all(guidance.timestep_weight(t, ALPHAS, "uniform") == 1)
    w = guidance.timestep_weight(t, ALPHAS, "sds")
    assert torch.allclose(w.flatten(), 1 - ALPHAS[t])


def test_annealed_timesteps_stay_in_the_moving_range():
    latents = torch.zeros(4096, 1, 1, 1)
    t, _ = guidance.sample_timestep_and_noise(latents, 50.0, torch.tensor(500.0))
    assert int(t.min()) == 50 and int(t.max()) == 500
    t, _ = guidance.sample_timestep_and_noise(latents, 50.0, torch.tensor(20.0))  # an upper bound below t_min
    assert torch.all(t == 50)
