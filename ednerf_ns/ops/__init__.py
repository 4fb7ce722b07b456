"""Pure tensor maths: DDS/SDS guidance, the refinement layer, image and latent metrics, step health counters, the
latent grid (sizes, resizing, masks at 1/8) and camera poses.

May import: torch, numpy (and torchmetrics, lazily). Never nerfstudio, diffusers, transformers or any other
ednerf_ns module, so everything here is testable without weights or a scene.
"""
