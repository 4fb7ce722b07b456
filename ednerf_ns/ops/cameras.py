"""Camera poses as tensors (nerfstudio / OpenGL axes), for the demo scenes and the before/after orbits."""

from __future__ import annotations

import torch


def look_at(eye: torch.Tensor, target: torch.Tensor, up: torch.Tensor | None = None) -> torch.Tensor:
    """[N, 3] eyes and targets -> [N, 3, 4] camera-to-world (OpenGL: columns right, up, back, position)."""
    if up is None:
        up = torch.tensor([0.0, 0.0, 1.0], dtype=eye.dtype, device=eye.device).expand_as(eye)
    fwd = torch.nn.functional.normalize(target - eye, dim=-1)
    right = torch.nn.functional.normalize(torch.cross(fwd, up, dim=-1), dim=-1)
    cam_up = torch.cross(right, fwd, dim=-1)
    return torch.stack([right, cam_up, -fwd, eye], dim=-1)
