"""The latent radiance field: nerfacto's hash-grid field with a 4-channel, unbounded colour head.

Stable Diffusion latents are not colours: they have 4 channels and take any real value (roughly -5..5 after
scaling), so the sigmoid that keeps nerfacto's RGB in [0, 1] would clip them. Everything else - hash encoding,
density MLP, direction encoding, appearance embedding - is nerfacto's, reused by subclassing.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from nerfstudio.cameras.rays import RaySamples
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.field_components.activations import trunc_exp
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.field_components.mlp import MLP
from nerfstudio.fields.nerfacto_field import NerfactoField
from torch import Tensor

LATENT_FEATURES = FieldHeadNames.RGB  # nerfstudio's samplers/renderers key the colour output by this name

Implementation = Literal["auto", "tcnn", "torch"]


def resolve_implementation(requested: Implementation, device: torch.device | str) -> Literal["tcnn", "torch"]:
    """auto -> torch: the project's own hash grids (ednerf_ns.accel.hashgrid), the path that is measured and tested.

    tiny-cuda-nn is used only when asked for (`implementation tcnn`): a build from source on our test machine
    (nvcc 13, torch 2.11, H200) imports but crashes in its first forward, so nothing here verifies that path.
    nerfstudio silently falls back to torch when tcnn is requested but missing, which changes every parameter
    name; we decide explicitly and record the answer in the run's config so the edit stage rebuilds the same one.
    """
    del device  # the answer no longer depends on the device; kept for callers
    return "torch" if requested == "auto" else requested


class LatentField(NerfactoField):
    """NerfactoField whose colour head outputs `latent_channels` unbounded values."""

    def __init__(self, *args, latent_channels: int = 4, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        implementation = kwargs.get("implementation", "tcnn")
        # Replace the 3-channel sigmoid head with an identically shaped MLP without output activation.
        self.mlp_head = MLP(
            in_dim=self.mlp_head.in_dim,
            num_layers=self.mlp_head.num_layers,
            layer_width=self.mlp_head.layer_width,
            out_dim=latent_channels,
            activation=torch.nn.ReLU(),
            out_activation=None,
            implementation=implementation,
        )
        self.latent_channels = latent_channels
        self.density_base: torch.nn.Module | None = None
        self._register_load_state_dict_pre_hook(_complete_frozen_geometry, with_module=True)

    def freeze_geometry(self) -> None:
        """From now on take the density from a frozen copy of the density network (hash grid + density MLP) and
        only the colour features from `mlp_base`: training then changes what the scene looks like, never its
        shape. Call it before loading weights: a state without `density_base` entries gets them from `mlp_base`
        (the geometry the weights were trained with)."""
        self.density_base = copy.deepcopy(self.mlp_base).requires_grad_(False)

    def get_density(self, ray_samples: RaySamples) -> tuple[Tensor, Tensor]:
        """nerfacto's density, without marking the sample positions as requiring a gradient.

        NerfactoField marks them so that normals can be taken as the density's gradient. ED-NeRF never predicts
        normals, and the mark makes every backward pass also differentiate the hash encoding with respect to its
        input for every field sample: work whose result nobody reads.
        """
        positions = ray_samples.frustums.get_positions()
        if self.spatial_distortion is not None:
            positions = (self.spatial_distortion(positions) + 2.0) / 4.0  # contracted [-2, 2]^3 -> [0, 1]^3
        else:
            positions = SceneBox.get_normalized_positions(positions, self.aabb)
        # The hash grid takes [0, 1]^3; points outside read the origin's features and get zero density below.
        inside = ((positions > 0.0) & (positions < 1.0)).all(dim=-1, keepdim=True)
        positions = positions * inside
        self._sample_locations = positions
        h = self.mlp_base(positions.view(-1, 3)).view(*ray_samples.frustums.shape, -1)
        raw_density, features = torch.split(h, [1, self.geo_feat_dim], dim=-1)
        if self.density_base is not None:
            with torch.no_grad():
                frozen = self.density_base(positions.view(-1, 3)).view(*ray_samples.frustums.shape, -1)
            raw_density = frozen[..., :1]
        self._density_before_activation = raw_density
        density = self.average_init_density * trunc_exp(raw_density.to(positions)) * inside
        return density, features


def complete_frozen_geometry(state: dict, own_keys) -> dict:
    """Fill the `density_base` entries a state lacks (a source run, or an edit saved before geometry could be
    frozen) from its `mlp_base` entries: the frozen copy starts as the geometry those weights were trained with."""
    for key in [k for k in own_keys if ".density_base." in f".{k}" and k not in state]:
        source = key.replace("density_base.", "mlp_base.", 1)
        if source in state:
            state[key] = state[source].clone()
    return state


def _complete_frozen_geometry(module, state_dict, prefix, *args) -> None:
    """load_state_dict pre-hook of LatentField (nerfstudio's own loading path: ns-viewer, ns-render, ns-eval)."""
    if module.density_base is not None:
        own = [prefix + k for k in module.state_dict() if k.startswith("density_base.")]
        complete_frozen_geometry(state_dict, own)
