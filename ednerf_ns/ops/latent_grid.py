"""The latent grid of Stable Diffusion's VAE: one latent pixel per 8 x 8 image block.

Image sizes snapped to it, resizing of images and masks, masks taken down to latent resolution and renders taken
back up to image resolution (shared by the datamanager, the model, the edit masks and the evaluation tools).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

LATENT_SCALE = 8  # Stable Diffusion's VAE downsamples by 8 in each direction


def image_float(image: Tensor) -> Tensor:
    """An image as float in [0, 1] (cached images are uint8)."""
    return image.float() / 255.0 if image.dtype == torch.uint8 else image.float()


def target_size(height: int, width: int, max_size: int) -> tuple[int, int]:
    """Longer side <= max_size (if > 0), both sides rounded to multiples of 8, at least 8."""
    scale = min(1.0, max_size / max(height, width)) if max_size > 0 else 1.0

    def snap(x: float) -> int:
        return max(LATENT_SCALE, int(x * scale / LATENT_SCALE + 0.5) * LATENT_SCALE)  # nearest, ties up

    return snap(height), snap(width)


def resize_image(image: Tensor, height: int, width: int) -> Tensor:
    """[H, W, 3] float -> [height, width, 3], antialiased when shrinking."""
    if tuple(image.shape[:2]) == (height, width):
        return image.contiguous()
    x = image.permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return x[0].permute(1, 2, 0).clamp(0, 1).contiguous()


def resize_mask(mask: Tensor, height: int, width: int) -> Tensor:
    """[H, W, 1] bool -> [height, width, 1] bool (area average, then majority)."""
    if tuple(mask.shape[:2]) == (height, width):
        return mask
    x = mask.float().permute(2, 0, 1)[None]
    x = F.interpolate(x, size=(height, width), mode="area" if height <= mask.shape[0] else "bilinear")
    return (x[0].permute(1, 2, 0) > 0.5).contiguous()


def downsample_mask(mask: Tensor) -> Tensor:
    """[H, W, 1] bool at image resolution -> [1, H/8, W/8] float: the share of each 8x8 block inside the mask."""
    x = mask.float().permute(2, 0, 1)[None]
    return F.avg_pool2d(x, LATENT_SCALE)[0]


def binarize(soft: Tensor, threshold: float, dilation: int) -> Tensor:
    """Soft mask [1, h, w] -> {0, 1} mask, grown by `dilation` pixels (max-pooling)."""
    mask = (soft > threshold).float()
    if dilation > 0:
        mask = F.max_pool2d(mask[None], kernel_size=2 * dilation + 1, stride=1, padding=dilation)[0]
    return mask


def resize(image: Tensor, height: int, width: int, mode: str) -> Tensor:
    """[h, w, C] -> [height, width, C] (bilinear: antialiased when shrinking)."""
    x = image.permute(2, 0, 1)[None].float()
    options = {} if mode == "nearest" else {"align_corners": False, "antialias": True}
    x = F.interpolate(x, size=(height, width), mode=mode, **options)
    return x[0].permute(1, 2, 0).to(image.dtype)


def upsample(image: Tensor, height: int, width: int, mode: str) -> Tensor:
    """[h, w, C] at latent resolution -> [height, width, C]: scale by 8, then crop the ceil() overhang."""
    x = image.permute(2, 0, 1)[None].float()
    size = (image.shape[0] * LATENT_SCALE, image.shape[1] * LATENT_SCALE)
    x = F.interpolate(x, size=size, mode=mode, **({} if mode == "nearest" else {"align_corners": False}))
    return x[0].permute(1, 2, 0)[:height, :width]


def latent_at_latent_resolution(latent_full: Tensor) -> Tensor:
    """Undo the nearest-neighbour x8 upsampling of the `latent` output exactly (first pixel of each 8x8 block)."""
    return latent_full[::LATENT_SCALE, ::LATENT_SCALE]
