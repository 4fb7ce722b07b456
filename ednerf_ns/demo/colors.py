"""Named colour palette of the demo scenes and hue-based colour scoring of (edited) objects.

Scoring uses hue rather than RGB distance: Lambertian shading multiplies a surface colour by a scalar, which changes
its value (brightness) but keeps hue and saturation, so a shaded red sphere is still "red" everywhere.
Pure torch (numpy arrays are accepted and converted); no nerfstudio import.
"""

from __future__ import annotations

from typing import Union

import numpy as np
import torch

ArrayLike = Union[torch.Tensor, np.ndarray]

# Albedos of the palette; hues well apart (about 0, 30, 57, 125, 228, 278 degrees) and fully saturated-ish so shading
# cannot move one colour into another's hue bin.
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.10, 0.10),
    "orange": (0.95, 0.50, 0.05),
    "yellow": (0.92, 0.84, 0.10),
    "green": (0.10, 0.68, 0.16),
    "blue": (0.10, 0.26, 0.90),
    "purple": (0.56, 0.16, 0.82),
}
COLOR_NAMES: tuple[str, ...] = tuple(PALETTE)

# Defaults for "this pixel shows a coloured surface": floors and skies of the demo are kept below 0.35 saturation.
MIN_SATURATION = 0.45
MIN_VALUE = 0.12


def _as_tensor(x: ArrayLike) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    return x


def rgb_to_hsv(rgb: ArrayLike) -> torch.Tensor:
    """Convert [..., 3] RGB in [0, 1] to [..., 3] HSV with hue in degrees [0, 360), saturation and value in [0, 1]."""
    rgb = _as_tensor(rgb).float().clamp(0.0, 1.0)
    r, g, b = rgb.unbind(-1)
    maxc, argmax = rgb.max(dim=-1)
    minc = rgb.min(dim=-1).values
    delta = maxc - minc
    safe = torch.where(delta > 1e-8, delta, torch.ones_like(delta))
    hue_r = ((g - b) / safe) % 6.0
    hue_g = (b - r) / safe + 2.0
    hue_b = (r - g) / safe + 4.0
    hue = torch.where(argmax == 0, hue_r, torch.where(argmax == 1, hue_g, hue_b)) * 60.0
    hue = torch.where(delta > 1e-8, hue, torch.zeros_like(hue)) % 360.0
    sat = torch.where(
        maxc > 1e-8, delta / torch.where(maxc > 1e-8, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc)
    )
    return torch.stack([hue, sat, maxc], dim=-1)


def palette_hues() -> torch.Tensor:
    """Hues (degrees) of the palette colours, in COLOR_NAMES order."""
    return rgb_to_hsv(torch.tensor([PALETTE[n] for n in COLOR_NAMES]))[:, 0]


def colorful_mask(rgb: ArrayLike, min_saturation: float = MIN_SATURATION, min_value: float = MIN_VALUE) -> torch.Tensor:
    """[H, W] bool: pixels saturated and bright enough for their hue to mean something."""
    hsv = rgb_to_hsv(rgb)
    return (hsv[..., 1] >= min_saturation) & (hsv[..., 2] >= min_value)


def _hue_labels(rgb: ArrayLike, mask: ArrayLike, min_saturation: float, min_value: float) -> tuple[torch.Tensor, int]:
    """Palette index of each colourful masked pixel (nearest hue, circular), and the number of masked pixels."""
    rgb_t = _as_tensor(rgb)
    mask_t = _as_tensor(mask).bool().to(rgb_t.device)
    hsv = rgb_to_hsv(rgb_t)[mask_t]
    n_mask = int(mask_t.sum())
    keep = (hsv[:, 1] >= min_saturation) & (hsv[:, 2] >= min_value)
    hue = hsv[keep, 0]
    ref = palette_hues().to(hue.device)
    diff = (hue[:, None] - ref[None, :]).abs() % 360.0
    diff = torch.minimum(diff, 360.0 - diff)
    return diff.argmin(dim=1), n_mask


def color_histogram(
    rgb: ArrayLike, mask: ArrayLike, min_saturation: float = MIN_SATURATION, min_value: float = MIN_VALUE
) -> dict[str, int]:
    """Number of colourful pixels inside the mask assigned to each palette colour."""
    labels, _ = _hue_labels(rgb, mask, min_saturation, min_value)
    counts = torch.bincount(labels.cpu(), minlength=len(COLOR_NAMES))
    return {name: int(c) for name, c in zip(COLOR_NAMES, counts, strict=True)}


def object_color_score(
    rgb: ArrayLike,
    mask: ArrayLike,
    color_name: str,
    min_saturation: float = MIN_SATURATION,
    min_value: float = MIN_VALUE,
    min_colorful_fraction: float = 0.25,
) -> float:
    """How much the object under `mask` has the palette colour `color_name`, in [0, 1].

    Score = (colourful masked pixels whose nearest palette hue is `color_name`) / max(colourful masked pixels,
    min_colorful_fraction * masked pixels). The denominator floor stops an object that turned gray (few colourful
    pixels left) from scoring 1 on a handful of tinted pixels.

    Args:
        rgb: [H, W, 3] image in [0, 1].
        mask: [H, W] bool, the object's pixels.
        color_name: one of COLOR_NAMES.
        min_saturation: pixels below this HSV saturation have no meaningful hue and are not counted as matches.
        min_value: pixels darker than this have no meaningful hue either.
        min_colorful_fraction: floor of the denominator as a fraction of the mask size.
    """
    if color_name not in PALETTE:
        raise ValueError(f"unknown colour {color_name!r}; expected one of {COLOR_NAMES}")
    labels, n_mask = _hue_labels(rgb, mask, min_saturation, min_value)
    if n_mask == 0:
        return 0.0
    matches = int((labels == COLOR_NAMES.index(color_name)).sum())
    denom = max(float(labels.numel()), min_colorful_fraction * n_mask, 1.0)
    return float(min(1.0, matches / denom))


def dominant_color(
    rgb: ArrayLike,
    mask: ArrayLike,
    min_saturation: float = MIN_SATURATION,
    min_value: float = MIN_VALUE,
    min_pixels: int = 4,
) -> str:
    """Palette colour of most colourful pixels inside the mask; "none" if fewer than `min_pixels` are colourful."""
    labels, _ = _hue_labels(rgb, mask, min_saturation, min_value)
    if labels.numel() < min_pixels:
        return "none"
    counts = torch.bincount(labels.cpu(), minlength=len(COLOR_NAMES))
    return COLOR_NAMES[int(counts.argmax())]
