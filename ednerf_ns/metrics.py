"""Image and latent quality measures shared by the model, the demo and `ednerf-eval` (pure torch)."""

from __future__ import annotations

import torch
from torch import Tensor


def psnr(pred: Tensor, target: Tensor, data_range: float = 1.0, mask: Tensor | None = None) -> Tensor:
    """Peak signal-to-noise ratio; with `mask` (broadcastable, 1 = counted) only the masked elements count."""
    err = (pred.float() - target.float()) ** 2
    if mask is None:
        mse = err.mean()
    else:
        weights = mask.float().expand_as(err)
        mse = (err * weights).sum() / weights.sum().clamp_min(1e-8)
    return 10.0 * torch.log10(data_range**2 / mse.clamp_min(1e-12))


def latent_psnr(pred: Tensor, target: Tensor) -> Tensor:
    """PSNR of latents, with the target's own value range as the peak.

    Latents have no fixed range like [0, 1]; the target's max - min is the natural peak and makes the number
    comparable between runs on the same images (it is what `ns-eval` and the demo report).
    """
    data_range = (target.max() - target.min()).clamp_min(1e-6)
    return psnr(pred, target, data_range=float(data_range))


def ssim(pred: Tensor, target: Tensor) -> Tensor:
    """SSIM of [H, W, 3] images in [0, 1] (torchmetrics' functional form: no weights to download)."""
    from torchmetrics.functional import structural_similarity_index_measure

    return structural_similarity_index_measure(
        pred.permute(2, 0, 1)[None].float(), target.permute(2, 0, 1)[None].float(), data_range=1.0
    )
