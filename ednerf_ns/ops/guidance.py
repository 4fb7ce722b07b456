"""Score-distillation guidance as pure tensor functions: Delta Denoising Score (DDS) and its SDS baseline.

Nothing here knows about NeRFs, nerfstudio or a particular diffusion model: the noise predictor is any callable
`eps(x_t [B,C,h,w], t [B], text [B,L,D]) -> [B,C,h,w]`, so the maths is testable with hand-made predictors.

DDS (Hertz et al. 2023) compares two denoising scores that share one timestep and one noise sample: the target
branch (the image being edited, with the target prompt) and the source branch (the original image, with the
source prompt). Their difference cancels the noisy, prompt-independent part of the score that makes plain SDS
blur and over-saturate, and it is exactly zero when nothing needs to change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

NoisePredictor = Callable[[Tensor, Tensor, Tensor], Tensor]
GuidanceKind = Literal["dds", "sds"]


@dataclass
class GuidanceOutput:
    """What one guidance evaluation produced."""

    grad: Tensor
    """The score difference, the gradient to apply to the target latents [B, C, h, w] (no autograd graph)."""
    finite: Tensor
    """0-dim bool tensor: whether `grad` was finite everywhere before it was sanitised (kept on device: no sync)."""


def sample_timestep_and_noise(
    latents: Tensor, t_min: float, t_max: float | Tensor, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """One integer timestep per batch element, uniform in [t_min, t_max], and one Gaussian noise like `latents`.

    The same pair must be used for both DDS branches; sampling them in one place makes that hard to get wrong.
    Bounds may be fractional (they are floored); `t_max` may be a 0-dim tensor that changes between steps (an
    annealed schedule read on the device, e.g. by a step replayed from a CUDA graph).
    """
    batch = latents.shape[0]
    if isinstance(t_max, Tensor):
        low = float(t_min) // 1
        high = torch.maximum(t_max.to(latents.device).floor(), torch.full_like(t_max, low, device=latents.device))
        u = torch.rand((batch,), device=latents.device, generator=generator)
        t = torch.minimum((low + u * (high - low + 1)).floor(), high).long()
    else:
        t = torch.randint(int(t_min), int(t_max) + 1, (batch,), device=latents.device, generator=generator)
    eps = torch.randn(latents.shape, device=latents.device, dtype=latents.dtype, generator=generator)
    return t, eps


def add_noise(latents: Tensor, eps: Tensor, t: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """Forward diffusion q(x_t | x_0): sqrt(a_t) x_0 + sqrt(1 - a_t) eps."""
    a = alphas_cumprod.to(latents.device)[t].view(-1, *([1] * (latents.dim() - 1))).to(latents.dtype)
    return a.sqrt() * latents + (1 - a).sqrt() * eps


def classifier_free_guidance(eps_uncond: Tensor, eps_cond: Tensor, scale: float | Tensor) -> Tensor:
    """eps_uncond + s (eps_cond - eps_uncond); s may be a 0-dim tensor (read on the device, e.g. by a CUDA graph)."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def dds_gradient(
    z_tgt: Tensor,
    z_src: Tensor,
    text_tgt: Tensor,
    text_src: Tensor,
    text_uncond: Tensor,
    predict: NoisePredictor,
    alphas_cumprod: Tensor,
    t: Tensor,
    eps: Tensor,
    guidance_scale: float | Tensor,
) -> Tensor:
    """DDS gradient: guided score of (z_tgt, target prompt) minus guided score of (z_src, source prompt).

    One UNet call on the batch [z_tgt_t, z_tgt_t, z_src_t, z_src_t] with [uncond, target, uncond, source] text:
    a single launch of the expensive network per step instead of four.
    """
    b = z_tgt.shape[0]
    with torch.no_grad():
        x_tgt = add_noise(z_tgt.detach(), eps, t, alphas_cumprod)
        x_src = add_noise(z_src.detach(), eps, t, alphas_cumprod)
        x = torch.cat([x_tgt, x_tgt, x_src, x_src])
        text = torch.cat([_expand(text_uncond, b), _expand(text_tgt, b), _expand(text_uncond, b), _expand(text_src, b)])
        out = predict(x, t.repeat(4), text).float()
        u_tgt, c_tgt, u_src, c_src = out.chunk(4)
        return classifier_free_guidance(u_tgt, c_tgt, guidance_scale) - classifier_free_guidance(
            u_src, c_src, guidance_scale
        )


def sds_gradient(
    z_tgt: Tensor,
    text_tgt: Tensor,
    text_uncond: Tensor,
    predict: NoisePredictor,
    alphas_cumprod: Tensor,
    t: Tensor,
    eps: Tensor,
    guidance_scale: float | Tensor,
) -> Tensor:
    """SDS gradient (DreamFusion): guided score of (z_tgt, target prompt) minus the injected noise."""
    b = z_tgt.shape[0]
    with torch.no_grad():
        x_tgt = add_noise(z_tgt.detach(), eps, t, alphas_cumprod)
        out = predict(
            torch.cat([x_tgt, x_tgt]), t.repeat(2), torch.cat([_expand(text_uncond, b), _expand(text_tgt, b)])
        )
        u, c = out.float().chunk(2)
        return classifier_free_guidance(u, c, guidance_scale) - eps.float()


def timestep_weight(t: Tensor, alphas_cumprod: Tensor, kind: Literal["uniform", "sds"]) -> Tensor:
    """w(t): 1 (DDS's choice) or 1 - a_t (DreamFusion's), shaped [B, 1, 1, 1]."""
    if kind == "uniform":
        return torch.ones(t.shape[0], 1, 1, 1, device=t.device)
    return (1 - alphas_cumprod.to(t.device)[t]).view(-1, 1, 1, 1)


def sanitize(grad: Tensor, clip: float | None) -> GuidanceOutput:
    """Zero a non-finite gradient and clip elementwise, without a host synchronisation.

    A NaN from an fp16 UNet must never reach the NeRF's weights; `torch.where` on a device-side flag replaces the
    whole step's gradient by zeros instead of branching in Python (which would stall the GPU pipeline).
    """
    finite = torch.isfinite(grad).all()
    grad = torch.where(finite, torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0), torch.zeros_like(grad))
    if clip is not None and clip > 0:
        grad = grad.clamp(-clip, clip)
    return GuidanceOutput(grad=grad, finite=finite)


def guidance_loss(z: Tensor, grad: Tensor, mask: Tensor | None = None) -> Tensor:
    """Surrogate loss whose gradient w.r.t. z is grad * mask / z.numel().

    This equals the gradient of the MSE form 0.5 * mean((z - sg(z - grad))^2): regressing z towards the detached
    target z - grad. Normalising per element (where 2D DDS divides by h * w and scales the loss by a constant)
    makes the weight comparable to the reconstruction losses, which are per-element means too; with Adam only
    such relative weights matter.
    """
    g = grad.detach()
    if mask is not None:
        g = g * mask
    return (z * g).sum() / z.numel()


def masked_reconstruction_loss(z_tgt: Tensor, z_src: Tensor, mask: Tensor | None) -> Tensor:
    """mean((1 - M) * (z_tgt - z_src)^2): keep what lies outside the edit region. Zero when there is no mask."""
    if mask is None:
        return z_tgt.new_zeros(())
    return ((z_tgt - z_src.detach()) ** 2 * (1.0 - mask)).mean()


def _expand(text: Tensor, batch: int) -> Tensor:
    """Text embeddings given once ([L, D] or [1, L, D]) broadcast to the batch."""
    if text.dim() == 2:
        text = text[None]
    return text.expand(batch, *text.shape[1:]) if text.shape[0] == 1 else text
