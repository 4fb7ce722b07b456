"""nerfacto's proposal sampling, made replayable from a CUDA graph.

`AnnealedProposalSampler` keeps nerfacto's proposal-weight anneal exponent in a device tensor, so training steps
during the anneal (the first 1000 of the default run) replay from the step graph too.

`DeviceSpacedSampler` is the proposal sampler's first stage, with its bins made on the device.

nerfacto starts every ray with samples spaced uniformly (or uniformly near and in disparity far away) between
the near and far plane, jittered within their bins during training. nerfstudio's `SpacedSampler` builds the bin
edges on the host and copies them to the GPU at every call: a host-to-device copy from pageable memory, which
waits for the GPU to finish all queued work and cannot be recorded in a CUDA graph. This sampler makes the same
samples (same spacing functions, same random draws in the same order) with the edges built on the rays' device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from nerfstudio.cameras.rays import RayBundle, RaySamples
from nerfstudio.model_components.ray_samplers import ProposalNetworkSampler, Sampler
from torch import Tensor

Spacing = Literal["uniform", "piecewise"]


def _piecewise(x: Tensor) -> Tensor:
    """Distance -> spacing: linear up to 1, then linear in disparity (nerfacto's "piecewise" sampler)."""
    return torch.where(x < 1, x / 2, 1 - 1 / (2 * x))


def _piecewise_inverse(s: Tensor) -> Tensor:
    return torch.where(s < 0.5, 2 * s, 1 / (2 - 2 * s))


def _identity(x: Tensor) -> Tensor:
    return x


_SPACINGS: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    "uniform": (_identity, _identity),
    "piecewise": (_piecewise, _piecewise_inverse),
}


class DeviceSpacedSampler(Sampler):
    """Stratified samples evenly spaced in `spacing(distance)` between each ray's near and far plane."""

    def __init__(
        self,
        spacing: Spacing = "piecewise",
        num_samples: int | None = None,
        train_stratified: bool = True,
        single_jitter: bool = False,
    ) -> None:
        super().__init__(num_samples=num_samples)
        self.spacing = spacing
        self.spacing_fn, self.spacing_fn_inv = _SPACINGS[spacing]
        self.train_stratified = train_stratified
        self.single_jitter = single_jitter

    def generate_ray_samples(self, ray_bundle: RayBundle | None = None, num_samples: int | None = None) -> RaySamples:
        assert ray_bundle is not None and ray_bundle.nears is not None and ray_bundle.fars is not None
        count = num_samples or self.num_samples
        assert count is not None
        num_rays = ray_bundle.origins.shape[0]
        device = ray_bundle.origins.device
        edges = torch.linspace(0.0, 1.0, count + 1, device=device)[None]  # [1, count + 1]
        if self.train_stratified and self.training:
            # Each edge moves at random within the half-bins around it (the end edges stay inside [0, 1]).
            jitter = torch.rand((num_rays, 1 if self.single_jitter else count + 1), dtype=edges.dtype, device=device)
            centres = (edges[..., 1:] + edges[..., :-1]) / 2.0
            upper = torch.cat([centres, edges[..., -1:]], -1)
            lower = torch.cat([edges[..., :1], centres], -1)
            edges = lower + (upper - lower) * jitter
        near, far = self.spacing_fn(ray_bundle.nears), self.spacing_fn(ray_bundle.fars)

        def to_distance(s: Tensor) -> Tensor:
            return self.spacing_fn_inv(s * far + (1 - s) * near)

        distance = to_distance(edges)
        return ray_bundle.get_ray_samples(
            bin_starts=distance[..., :-1, None],
            bin_ends=distance[..., 1:, None],
            spacing_starts=edges[..., :-1, None],
            spacing_ends=edges[..., 1:, None],
            spacing_to_euclidean_fn=to_distance,
        )


class AnnealedProposalSampler(ProposalNetworkSampler):
    """nerfacto's `ProposalNetworkSampler` whose anneal exponent (`_anneal`, set every step during the anneal) is a
    0-d device buffer written in place. nerfstudio raises the proposal weights to it with `torch.pow`, which reads a
    tensor exponent when the kernel runs: a step recorded in a CUDA graph follows the anneal, where a Python float
    would be baked into the graph (and so those steps had to run eagerly, about 3x slower)."""

    def __init__(self, *args, **kwargs) -> None:
        self._initial_anneal = 1.0  # the base class sets _anneal before the buffer can exist
        super().__init__(*args, **kwargs)
        self.register_buffer("anneal_exponent", torch.tensor(self._initial_anneal), persistent=False)

    @property
    def _anneal(self) -> Tensor | float:  # type: ignore[override]
        buffer = self.__dict__.get("_buffers", {}).get("anneal_exponent")
        return self._initial_anneal if buffer is None else buffer

    @_anneal.setter
    def _anneal(self, value: float) -> None:
        buffer = self.__dict__.get("_buffers", {}).get("anneal_exponent")
        if buffer is None:
            self._initial_anneal = float(value)
        else:
            buffer.fill_(float(value))  # in place: a replayed graph reads this very tensor
