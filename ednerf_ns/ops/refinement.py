"""The refinement layer: a small 2D network applied to a whole rendered latent image.

A NeRF renders every ray independently, but the VAE encoder that produced the target latents mixes neighbouring
pixels (ResNet blocks) and the whole image (self-attention). ED-NeRF closes that gap with a head shaped like the
VAE's mid-block - ResNet block, self-attention, ResNet block - working on the rendered latent image. Its output
projection is zero-initialised and added to the input, so at step 0 the layer is exactly the identity and training
starts from the plain latent NeRF.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def _groups(channels: int) -> int:
    """The largest group count <= 32 that divides the channels (GroupNorm needs an exact split)."""
    return max(g for g in range(1, min(32, channels) + 1) if channels % g == 0)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv3x3 twice, plus the skip connection."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(channels), channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(_groups(channels), channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return x + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over all pixels of the latent image (PyTorch SDPA picks the fused kernel)."""

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"refinement width {channels} is not divisible by {num_heads} attention heads")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        # [b, heads, tokens, dim], contiguous: SDPA's fused kernels need unit stride along `dim`; with strided
        # inputs it falls back to the math path, which materialises the tokens x tokens matrix (4096^2 per head
        # for a 512 px view) in forward and backward.
        q, k, v = qkv.permute(1, 0, 2, 4, 3).contiguous().unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class RefinementLayer(nn.Module):
    """Latent image [B, C, h, w] -> refined latent image of the same shape; identity at initialisation."""

    def __init__(self, channels: int = 4, width: int = 128, num_res_blocks: int = 2, num_heads: int = 4) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(channels, width, 3, padding=1)
        blocks: list[nn.Module] = []
        for i in range(max(num_res_blocks, 1)):
            blocks.append(ResBlock(width))
            if i == 0:  # attention between the first and second ResNet block, as in the VAE mid-block
                blocks.append(SelfAttention(width, num_heads))
        self.blocks = nn.Sequential(*blocks)
        self.norm_out = nn.GroupNorm(_groups(width), width)
        self.conv_out = nn.Conv2d(width, channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, z: Tensor) -> Tensor:
        h = self.blocks(self.conv_in(z))
        return z + self.conv_out(F.silu(self.norm_out(h)))
