"""Image and latent quality measures shared by the model, the demo and `ednerf-eval` (pure torch), and the rounding
of the numbers they report."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def psnr(pred: Tensor, target: Tensor, data_range: float | Tensor = 1.0, mask: Tensor | None = None) -> Tensor:
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
    data_range = (target.max() - target.min()).float().clamp_min(1e-6)  # stays a device tensor: no host sync
    return psnr(pred, target, data_range=data_range)


def ssim(pred: Tensor, target: Tensor) -> Tensor:
    """SSIM of [H, W, 3] images in [0, 1] (torchmetrics' functional form: no weights to download)."""
    from torchmetrics.functional import structural_similarity_index_measure

    return structural_similarity_index_measure(
        pred.permute(2, 0, 1)[None].float(), target.permute(2, 0, 1)[None].float(), data_range=1.0
    )


def masked_ssim(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """SSIM of [H, W, 3] images in [0, 1], averaged over the pixels where `mask` ([H, W], 1 = counted) is set.

    The SSIM map (torchmetrics' functional form with return_full_image=True: per pixel and channel, same size as
    the image thanks to its reflection padding) is averaged over channels, then over the masked pixels. Each map
    value still looks at an 11 x 11 window, so pixels next to the mask border see a little of the other side.
    An empty mask gives NaN (there is nothing to measure), not a perfect score.
    """
    from torchmetrics.functional import structural_similarity_index_measure

    _, full = structural_similarity_index_measure(
        pred.permute(2, 0, 1)[None].float(),
        target.permute(2, 0, 1)[None].float(),
        data_range=1.0,
        return_full_image=True,
    )
    per_pixel = full[0].mean(0)  # [H, W]
    if mask is None:
        return per_pixel.mean()
    weights = mask.reshape(per_pixel.shape).float().to(per_pixel.device)
    if weights.sum() == 0:
        return torch.tensor(float("nan"))
    return (per_pixel * weights).sum() / weights.sum()


def directional_similarity(
    source_image: Tensor, edited_image: Tensor, source_text: Tensor, target_text: Tensor, eps: float = 1e-6
) -> Tensor:
    """CLIP directional similarity: cos(E_img(edited) - E_img(source), E_txt(target) - E_txt(source)).

    Embeddings [N, D] (or [D] for the texts, broadcast) are L2-normalised first, as CLIP compares them. Rows where
    either direction is shorter than `eps` (identical images, identical prompts) have no direction: NaN.
    """
    import torch.nn.functional as F

    img = F.normalize(edited_image.float(), dim=-1) - F.normalize(source_image.float(), dim=-1)
    txt = F.normalize(target_text.float(), dim=-1) - F.normalize(source_text.float(), dim=-1)
    txt = txt.expand_as(img)
    cos = (img * txt).sum(-1) / (img.norm(dim=-1) * txt.norm(dim=-1)).clamp_min(1e-12)
    undefined = (img.norm(dim=-1) < eps) | (txt.norm(dim=-1) < eps)
    return torch.where(undefined, torch.full_like(cos, float("nan")), cos)


# ---------------------------------------------------------------------------------------------------- summaries
# Reported numbers (JSON of ednerf-eval, the ablations and the edit suite): 4 decimals, None where undefined.


def rounded(value: float | None) -> float | None:
    """`value` to 4 decimals; None when it is None or not finite (JSON has no NaN)."""
    return None if value is None or not math.isfinite(value) else round(float(value), 4)


def mean_finite(values: list) -> float | None:
    """Mean of the finite values (None and NaN skipped), to 4 decimals; None when none is left."""
    kept = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return round(sum(kept) / len(kept), 4) if kept else None


def difference(a: float | None, b: float | None) -> float | None:
    """a - b to 4 decimals; None when either is missing."""
    return None if a is None or b is None else round(a - b, 4)
