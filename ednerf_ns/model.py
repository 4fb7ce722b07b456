"""ED-NeRF's latent NeRF: nerfacto's sampling and field, rendering Stable Diffusion latents, plus the refinement layer.

Training renders one whole view at 1/8 of the image resolution per step (the refinement layer needs the spatial
context), refines it and regresses the encoded image. Viewing (`get_outputs_for_camera`: viewer, ns-render,
ns-eval) renders the same way without gradients and decodes to RGB with the VAE decoder.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.scene_box import OrientedBox
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.field_components.spatial_distortions import SceneContraction
from nerfstudio.fields.density_fields import HashMLPDensityField
from nerfstudio.model_components.losses import distortion_loss, interlevel_loss
from nerfstudio.model_components.renderers import AccumulationRenderer, DepthRenderer
from nerfstudio.model_components.scene_colliders import NearFarCollider
from nerfstudio.models.nerfacto import NerfactoModel, NerfactoModelConfig
from nerfstudio.utils import colormaps
from torch import Tensor
from torch.nn import Parameter

from ednerf_ns.accel.hashgrid import accelerate_hash_grids
from ednerf_ns.accel.step_graph import config_key
from ednerf_ns.errors import UserError, warn
from ednerf_ns.field import LATENT_FEATURES, Implementation, LatentField, resolve_implementation
from ednerf_ns.models2d.diffusion import DEFAULT_MODEL, DtypeName, LatentDiffusion, get_diffusion
from ednerf_ns.ops.latent_grid import (
    LATENT_SCALE,
    image_float,
    latent_at_latent_resolution,
    resize,
    target_size,
    upsample,
)
from ednerf_ns.ops.metrics import latent_psnr, psnr, ssim
from ednerf_ns.ops.refinement import RefinementLayer
from ednerf_ns.samplers import AnnealedProposalSampler, DeviceSpacedSampler


@dataclass
class EdNerfModelConfig(NerfactoModelConfig):
    """Latent NeRF + refinement layer (ED-NeRF stage 1). Inherits nerfacto's field and sampler options."""

    _target: type = field(default_factory=lambda: EdNerfModel)
    diffusion_model: str = DEFAULT_MODEL
    """Stable Diffusion checkpoint in diffusers layout: a hub id or a local folder with vae/, unet/, text_encoder/,
    tokenizer/, scheduler/. Training uses only its VAE."""
    diffusion_dtype: DtypeName = "auto"
    """Precision of the diffusion components: auto = float16 on CUDA, float32 on CPU."""
    implementation: Implementation = "auto"
    """Hash grid / MLP implementation: auto = torch (the project's own grids, measured and tested); tcnn =
    tiny-cuda-nn, only when asked (not verified by this project). The resolved choice is written to the run's
    config.yml (the edit stage must rebuild the same one)."""
    use_refinement: bool = True
    """Apply the refinement layer (ResNet blocks + self-attention) to rendered latents. False = the ablation."""
    refinement_width: int = 128
    """Channels inside the refinement layer."""
    refinement_blocks: int = 2
    """ResNet blocks in the refinement layer (self-attention sits after the first)."""
    refinement_heads: int = 4
    """Attention heads in the refinement layer."""
    raw_loss_mult: float = 1.0
    """Weight of the loss on the un-refined render; it keeps the field itself a good latent NeRF so the refinement
    layer only learns what rays cannot express."""
    mask_training_loss: bool = False
    """Use the dataset's masks (mask_path) as nerfstudio does: pixels outside them are ignored in the training
    loss. Off by default because for ED-NeRF a dataset mask usually marks the region to edit, not invalid pixels."""
    background_color: Literal["last_sample", "black"] = "last_sample"
    """Latent behind the scene: the last sample's latent (nerfacto's default), or zeros."""
    use_appearance_embedding: bool = False
    """Per-image appearance embedding. Off by default: the edit stage and the viewer would see a different
    (averaged) appearance than training did."""
    camera_optimizer: CameraOptimizerConfig = field(default_factory=lambda: CameraOptimizerConfig(mode="off"))
    """Camera pose refinement (off: 1/8-resolution latents constrain poses weakly)."""
    predict_normals: bool = False
    """Not supported by the latent renderer; must stay False."""
    fast_torch_hash_grid: bool = True
    """Without tiny-cuda-nn: run the hash grids with ednerf_ns's vectorised torch kernel (the same function and
    parameters as nerfstudio's, with a much faster backward). False = nerfstudio's own torch code."""
    triton_hash_grid: bool = True
    """With the vectorised torch hash grid on CUDA: run it as two fused Triton kernels (forward; table gradient)
    when triton is importable - the same function and parameters, a fraction of the memory traffic."""
    max_res: int = 512
    """Finest hash-grid resolution. nerfacto uses 2048 for full-resolution RGB; latents are 1/8 of the image, so a
    quarter of that already resolves every latent pixel of a 512 px view."""
    log2_hashmap_size: int = 17
    """Hash table size per level (log2). A quarter of nerfacto's: the coarser target needs fewer entries, and each
    Adam step touches every entry (a large share of a CPU step)."""
    tf32_matmul: bool = False
    """On CUDA, let float32 matrix products (the field's and proposal networks' MLPs) use TF32 tensor cores, as
    cuDNN's convolutions already do by default. Sets torch.backends.cuda.matmul.allow_tf32 for the process. Off:
    measured within noise of float32 on an edit step (docs/benchmarks.md)."""
    proposal_update_schedule: bool = True
    """Update the proposal networks on nerfacto's schedule (every other step at first, every `proposal_update_every`
    steps after `proposal_warmup`). nerfstudio 1.1.5 only counts steps for it when the proposal-weight anneal is
    on, so edits (which start annealed) would otherwise update them at every step."""
    render_max_image_size: int | None = None
    """Views larger than this (longest side, pixels) are rendered at this size - latents at 1/8 of it - decoded,
    then resized to the requested size (ns-render, camera paths and the viewer ask for the dataset's full
    resolution; the NeRF and the refinement layer only know the training scale). None = the size the NeRF was
    trained at (the longest training image after --pipeline.datamanager.max-image-size); 0 = no limit."""
    step_cuda_graph: bool = True
    """On CUDA, replay each training step (render, refinement, losses - and for edits the UNet - and the backward
    pass) from a CUDA graph, captured at a view size's second step: removes the Python and kernel-launch overhead
    that bounds an eager step. Steps the graph cannot express (optimised camera poses, the proposal-weight anneal
    of the first training steps, mixed precision) run eagerly. No effect off CUDA."""


class EdNerfModel(NerfactoModel):
    """See the module docstring. `get_outputs` takes a camera (a whole view), not a ray bundle."""

    config: EdNerfModelConfig

    STEP_GRAPH_EXEMPT: ClassVar[dict[str, str]] = {}
    """The config fields left out of the step graph's key, each with the reason: only fields that a training step
    reads from device buffers, which `prepare_train_step` refreshes from the config before every eager step and
    every replay, so that changing them (in the viewer) needs no new graph. Every other field is in the key; the
    tests check that each field either changes the key or is listed here."""

    # ------------------------------------------------------------------ construction
    def populate_modules(self) -> None:
        device = self.kwargs.get("device", "cpu")
        if self.config.predict_normals:
            raise UserError("--pipeline.model.predict-normals is not supported by ed-nerf")
        implementation = resolve_implementation(self.config.implementation, device)
        if implementation == "tcnn":
            from nerfstudio.utils.external import TCNN_EXISTS

            if not TCNN_EXISTS:
                raise UserError(
                    "this run uses implementation=tcnn but tinycudann is not importable here; install tiny-cuda-nn "
                    "or pass --pipeline.model.implementation torch (a torch run cannot load tcnn weights)"
                )
            warn("implementation tcnn: the tiny-cuda-nn path is not verified by ednerf_ns (auto uses its torch grids)")
        self.config.implementation = implementation  # recorded in config.yml by the trainer
        if torch.device(device).type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = self.config.tf32_matmul
        self._diffusion = get_diffusion(self.config.diffusion_model, device, self.config.diffusion_dtype)
        self.latent_channels = int(self._diffusion.vae.config.latent_channels)

        contraction = None if self.config.disable_scene_contraction else SceneContraction(order=float("inf"))
        appearance_dim = self.config.appearance_embed_dim if self.config.use_appearance_embedding else 0
        self.field = LatentField(
            self.scene_box.aabb,
            latent_channels=self.latent_channels,
            hidden_dim=self.config.hidden_dim,
            num_levels=self.config.num_levels,
            max_res=self.config.max_res,
            base_res=self.config.base_res,
            features_per_level=self.config.features_per_level,
            log2_hashmap_size=self.config.log2_hashmap_size,
            hidden_dim_color=self.config.hidden_dim_color,
            hidden_dim_transient=self.config.hidden_dim_transient,
            spatial_distortion=contraction,
            num_images=self.num_train_data,
            use_average_appearance_embedding=self.config.use_average_appearance_embedding,
            appearance_embedding_dim=appearance_dim,
            average_init_density=self.config.average_init_density,
            implementation=implementation,
        )
        self.camera_optimizer = self.config.camera_optimizer.setup(num_cameras=self.num_train_data, device="cpu")
        self._build_proposal_sampler(contraction, implementation)
        if implementation == "torch" and self.config.fast_torch_hash_grid:
            accelerate_hash_grids(self, triton=self.config.triton_hash_grid)
        self.collider = NearFarCollider(near_plane=self.config.near_plane, far_plane=self.config.far_plane)
        self.renderer_accumulation = AccumulationRenderer()
        self.renderer_depth = DepthRenderer(method="median")
        self.refinement = (
            RefinementLayer(
                self.latent_channels,
                width=self.config.refinement_width,
                num_res_blocks=self.config.refinement_blocks,
                num_heads=self.config.refinement_heads,
            )
            if self.config.use_refinement
            else None
        )
        # Viewer toggle (set by the pipeline's checkbox): compare refined and raw renders live.
        self.view_refined = True
        # Largest view rendered as is (see render_max_image_size); the pipeline fills in the training size.
        self.render_max_image_size: int = self.config.render_max_image_size or 0
        self._ray_cache: dict[int, tuple[RayBundle, int, int]] = {}
        self.step = 0

    def _build_proposal_sampler(self, contraction, implementation: str) -> None:
        """nerfacto's proposal networks and sampler, built from the inherited nerfacto options."""
        cfg = self.config
        self.proposal_networks = torch.nn.ModuleList()
        count = 1 if cfg.use_same_proposal_network else cfg.num_proposal_iterations
        for i in range(count):
            args = cfg.proposal_net_args_list[min(i, len(cfg.proposal_net_args_list) - 1)]
            self.proposal_networks.append(
                HashMLPDensityField(
                    self.scene_box.aabb,
                    spatial_distortion=contraction,
                    **args,
                    average_init_density=cfg.average_init_density,
                    implementation=implementation,
                )
            )
        nets = list(self.proposal_networks)
        self.density_fns = [nets[min(i, len(nets) - 1)].density_fn for i in range(cfg.num_proposal_iterations)]

        def update_schedule(step: int) -> float:
            return float(
                np.clip(
                    np.interp(step, [0, cfg.proposal_warmup], [0, cfg.proposal_update_every]),
                    1,
                    cfg.proposal_update_every,
                )
            )

        self.proposal_sampler = AnnealedProposalSampler(
            num_nerf_samples_per_ray=cfg.num_nerf_samples_per_ray,
            num_proposal_samples_per_ray=cfg.num_proposal_samples_per_ray,
            num_proposal_network_iterations=cfg.num_proposal_iterations,
            single_jitter=cfg.use_single_jitter,
            update_sched=update_schedule,
            # nerfstudio's own first-stage samplers copy their bins from the host every call (a synchronisation,
            # and a CUDA graph cannot contain it); this one makes the same samples on the device.
            initial_sampler=DeviceSpacedSampler(
                "uniform" if cfg.proposal_initial_sampler == "uniform" else "piecewise",
                single_jitter=cfg.use_single_jitter,
            ),
        )

    def get_training_callbacks(self, training_callback_attributes) -> list:
        callbacks = super().get_training_callbacks(training_callback_attributes)
        step_cb = self.proposal_sampler.step_cb
        registered = any(getattr(cb, "func", None) == step_cb for cb in callbacks)
        if self.config.proposal_update_schedule and not registered:
            # nerfstudio 1.1.5 registers the proposal sampler's step counter only together with the weight anneal;
            # without it the proposal networks would update at every step, forever.
            where = [TrainingCallbackLocation.AFTER_TRAIN_ITERATION]
            callbacks.append(TrainingCallback(where_to_run=where, update_every_num_iters=1, func=step_cb))
        return callbacks

    @property
    def diffusion(self) -> LatentDiffusion:
        return self._diffusion

    def get_param_groups(self) -> dict[str, list[Parameter]]:
        groups = super().get_param_groups()
        if self.refinement is not None:
            groups["refinement"] = list(self.refinement.parameters())
        return groups

    # ------------------------------------------------------------------ rendering
    def forward(self, camera: Cameras) -> dict:  # type: ignore[override]
        # nerfstudio's Model.forward applies the collider to a ray bundle; ours gets whole cameras.
        return self.get_outputs(camera)

    def get_outputs(self, camera: Cameras) -> dict:  # type: ignore[override]
        """Render one whole latent view with gradients. Latents are [1, C, h, w]; per-pixel maps are [h, w, 1]."""
        return self.render_latent_view(camera, chunk=None)

    def render_latent_view(self, camera: Cameras, chunk: int | None, obb_box: OrientedBox | None = None) -> dict:
        """Render `camera` (given at image resolution) at 1/8 resolution, then refine.

        chunk=None renders all rays in one pass (training: the refinement layer needs the whole view in one
        graph); an int splits the rays into chunks of that size (viewing, no gradients).
        """
        rays, h, w = self.view_rays(camera, obb_box)
        return self.render_ray_view(rays, h, w, chunk)

    @torch.no_grad()
    def cache_training_rays(self, cameras: Cameras) -> None:
        """Generate the rays of every training view now. nerfstudio's ray generation synchronises with the GPU
        several times per call; done up front, no training step waits for it."""
        if self.config.camera_optimizer.mode != "off":
            return  # rays follow the optimised poses: generated per step
        for idx in range(len(cameras)):
            camera = cameras[idx : idx + 1].to(self.device)
            camera.metadata = {**(camera.metadata or {}), "cam_idx": idx}
            self.view_rays(camera)

    def view_rays(self, camera: Cameras, obb_box: OrientedBox | None = None) -> tuple[RayBundle, int, int]:
        """The collided rays of `camera`'s latent image, flat, with its height and width."""
        cam_idx = (camera.metadata or {}).get("cam_idx")
        # A training view's rays never change (unless poses are optimised): generate them once. Besides the
        # work, nerfstudio's ray generation synchronises with the GPU several times per call.
        cacheable = cam_idx is not None and obb_box is None and self.config.camera_optimizer.mode == "off"
        cached = self._ray_cache.get(int(cam_idx)) if cacheable else None
        if cached is not None:
            return cached
        lat_cam = latent_camera(camera.flatten()[0:1])
        if self.training and self.config.camera_optimizer.mode != "off":
            lat_cam.camera_to_worlds = self.camera_optimizer.apply_to_camera(camera)
        rays = lat_cam.generate_rays(camera_indices=0, keep_shape=True, obb_box=obb_box)
        h, w = rays.shape
        rays = rays.flatten()
        if cam_idx is not None and rays.camera_indices is not None:
            rays.camera_indices = torch.full_like(rays.camera_indices, int(cam_idx))
        rays = self.collider(rays)
        if cacheable:
            self._ray_cache[int(cam_idx)] = (rays, h, w)
        return rays, h, w

    def render_ray_view(self, rays: RayBundle, h: int, w: int, chunk: int | None = None) -> dict:
        """Render the flat rays of an h x w latent view, then refine (see render_latent_view)."""
        if chunk is None:
            per_ray = self.render_rays(rays)
        else:
            parts = [self.render_rays(rays[i : i + chunk]) for i in range(0, len(rays), chunk)]
            per_ray = {k: torch.cat([p[k] for p in parts]) for k, v in parts[0].items() if isinstance(v, Tensor)}
        outputs: dict = {}
        for key, value in per_ray.items():
            if isinstance(value, Tensor):
                outputs[key] = value.view(h, w, -1)
            else:
                outputs[key] = value
        raw = outputs.pop("latent_features").permute(2, 0, 1)[None]  # [1, C, h, w]
        outputs["latent_raw"] = raw
        use_refinement = self.refinement is not None and (self.training or self.view_refined)
        outputs["latent"] = self.refine(raw) if use_refinement else raw
        return outputs

    def refine(self, raw: Tensor) -> Tensor:
        """The refinement layer on a rendered latent image [1, C, h, w]."""
        assert self.refinement is not None
        return self.refinement(raw)

    # ------------------------------------------------------------------ training steps as CUDA graphs
    def step_graph_inputs(self, camera: Cameras, batch: dict) -> tuple[Hashable | None, dict[str, Tensor]]:
        """The key and the per-step tensors of a training step for `ednerf_ns.accel.step_graph` (key None: run
        eagerly).

        The key holds everything the step decides in Python: the view's size, whether the proposal networks update
        this step (nerfstudio decides that in Python), the names, shapes and dtypes of the step's tensors, and every
        option of the model's config except `STEP_GRAPH_EXEMPT` (`step_graph.config_key`).
        """
        cam_idx = (camera.metadata or {}).get("cam_idx")
        sampler = self.proposal_sampler
        if cam_idx is None or self.config.camera_optimizer.mode != "off":
            return None, {}  # rays from optimised poses: new rays every step
        # (the proposal-weight anneal needs no eager steps: AnnealedProposalSampler keeps it in a device tensor)
        rays, h, w = self.view_rays(camera)
        updated = sampler._steps_since_update > sampler.update_sched(sampler._step) or sampler._step < 10
        tensors = {f"ray:{name}": value for name, value in ray_tensors(rays).items()}
        for name, value in batch.items():
            if isinstance(value, Tensor) and name not in _IMAGE_RESOLUTION_KEYS:
                tensors[f"batch:{name}"] = value.to(self.device)
        signature = tuple((name, tuple(t.shape), t.dtype) for name, t in sorted(tensors.items()))
        key = (h, w, bool(updated), signature, config_key(self.config, self.STEP_GRAPH_EXEMPT))
        return key, tensors

    def step_graph_outputs(self, inputs: dict[str, Tensor]) -> tuple[dict, dict]:
        """Model outputs and batch of a training step from the (static) tensors of `step_graph_inputs`."""
        rays = rays_from_tensors({k[4:]: v for k, v in inputs.items() if k.startswith("ray:")})
        batch = {k[6:]: v for k, v in inputs.items() if k.startswith("batch:")}
        h, w = batch["latent"].shape[-2:]
        return self.render_ray_view(rays, int(h), int(w)), batch

    def after_step_graph(self, key: Hashable) -> None:
        """Redo the Python side effects of a step that was replayed (its Python did not run)."""
        if key is not None and key[2]:  # type: ignore[index]
            self.proposal_sampler._steps_since_update = 0

    def prepare_train_step(self) -> None:
        """Refresh per-step inputs that live in static buffers (before an eager step or a replay)."""

    def render_rays(self, rays: RayBundle) -> dict:
        """Sample, query the field and composite latents for a flat bundle of rays."""
        samples, weights_list, samples_list = self.proposal_sampler(rays, density_fns=self.density_fns)
        field_out = self.field.forward(samples)
        weights = samples.get_weights(field_out[FieldHeadNames.DENSITY])
        weights_list.append(weights)
        samples_list.append(samples)
        features = field_out[LATENT_FEATURES]
        latent = torch.sum(weights * features, dim=-2)
        accumulation = self.renderer_accumulation(weights=weights)
        if self.config.background_color == "last_sample":
            latent = latent + (1.0 - accumulation) * features[..., -1, :]
        out = {"latent_features": latent, "accumulation": accumulation}
        if self.training:  # no loss reads depth
            out["weights_list"] = weights_list
            out["ray_samples_list"] = samples_list
        else:
            out["depth"] = self.renderer_depth(weights=weights, ray_samples=samples)
        return out

    @torch.no_grad()
    def get_outputs_for_camera(self, camera: Cameras, obb_box: OrientedBox | None = None) -> dict[str, Tensor]:
        """Viewer / ns-render / ns-eval: decoded RGB plus depth, accumulation and the latent, all at image size."""
        camera = camera.flatten()[0:1]
        height, width = int(camera.height[0]), int(camera.width[0])
        limit = self.render_max_image_size
        if limit > 0 and max(height, width) > limit:
            # Larger than the training scale: render at it, decode, then resize to the requested size.
            h, w = target_size(height, width, limit)
            out = self.get_outputs_for_camera(scaled_camera(camera, h, w), obb_box)
            return {
                key: resize(value, height, width, "nearest" if key == "latent" else "bilinear")
                for key, value in out.items()
            }
        out = self.render_latent_view(camera, chunk=self.config.eval_num_rays_per_chunk, obb_box=obb_box)
        rgb = self._diffusion.decode(out["latent"])[0].permute(1, 2, 0)[:height, :width]
        return {
            "rgb": rgb.to(self.device),
            "depth": upsample(out["depth"], height, width, "bilinear"),
            "accumulation": upsample(out["accumulation"], height, width, "bilinear"),
            # nearest-neighbour x8, so latent_at_latent_resolution() recovers it exactly for metrics
            "latent": upsample(out["latent"][0].permute(1, 2, 0), height, width, "nearest"),
        }

    # ------------------------------------------------------------------ losses and metrics
    def _loss_weights(self, batch: dict, like: Tensor) -> Tensor | None:
        if self.config.mask_training_loss and "latent_mask" in batch:
            return batch["latent_mask"].to(like.device)[None].expand_as(like)
        return None

    def get_metrics_dict(self, outputs: dict, batch: dict) -> dict[str, Tensor]:
        target = batch["latent"].to(self.device)[None]
        metrics = {
            "latent_psnr": latent_psnr(outputs["latent"].detach(), target),
            "latent_psnr_raw": latent_psnr(outputs["latent_raw"].detach(), target),
        }
        if self.training and self.config.distortion_loss_mult > 0:
            # O(samples^2) per ray, forward and backward: skipped when its weight is 0 (edits), where multiplying
            # by 0 would still run its backward pass
            metrics["distortion"] = distortion_loss(outputs["weights_list"], outputs["ray_samples_list"])
        self.camera_optimizer.get_metrics_dict(metrics)
        return metrics

    def get_loss_dict(self, outputs: dict, batch: dict, metrics_dict: dict | None = None) -> dict[str, Tensor]:
        target = batch["latent"].to(self.device)[None]
        weights = self._loss_weights(batch, target)
        loss = {"latent_loss": weighted_mse(outputs["latent"], target, weights)}
        if self.refinement is not None and self.config.raw_loss_mult > 0:
            loss["raw_latent_loss"] = self.config.raw_loss_mult * weighted_mse(outputs["latent_raw"], target, weights)
        if self.training:
            self.add_regularizers(outputs, metrics_dict, loss)
        return loss

    def add_regularizers(self, outputs: dict, metrics_dict: dict | None, loss: dict[str, Tensor]) -> None:
        """nerfacto's proposal (interlevel) and distortion losses, and the camera optimizer's penalty."""
        loss["interlevel_loss"] = self.config.interlevel_loss_mult * interlevel_loss(
            outputs["weights_list"], outputs["ray_samples_list"]
        )
        if self.config.distortion_loss_mult > 0:
            assert metrics_dict is not None and "distortion" in metrics_dict
            loss["distortion_loss"] = self.config.distortion_loss_mult * metrics_dict["distortion"]
        self.camera_optimizer.get_loss_dict(loss)

    def get_image_metrics_and_images(
        self, outputs: dict[str, Tensor], batch: dict[str, Tensor]
    ) -> tuple[dict[str, float], dict[str, Tensor]]:
        gt = image_float(batch["image"].to(self.device)[..., :3])
        rgb = outputs["rgb"]
        target = batch["latent"].to(self.device)
        latent = latent_at_latent_resolution(outputs["latent"]).permute(2, 0, 1)
        metrics = {
            "latent_psnr": float(latent_psnr(latent, target)),
            "psnr": float(psnr(rgb, gt)),
            "ssim": float(ssim(rgb, gt)),
        }
        images = {
            "img": torch.cat([gt, rgb], dim=1),
            "latent": torch.cat(
                [
                    colormaps.apply_pca_colormap(upsample(target.permute(1, 2, 0), *gt.shape[:2], "nearest")),
                    colormaps.apply_pca_colormap(outputs["latent"]),
                ],
                dim=1,
            ),
            "depth": colormaps.apply_depth_colormap(outputs["depth"], accumulation=outputs["accumulation"]),
            "accumulation": colormaps.apply_colormap(outputs["accumulation"]),
        }
        return metrics, images


# Batch entries at image resolution: no loss reads them, so a step graph does not copy them.
_IMAGE_RESOLUTION_KEYS = ("image", "mask")


def ray_tensors(rays: RayBundle) -> dict[str, Tensor]:
    """The tensors of a flat RayBundle by name (metadata entries as `metadata.<name>`)."""
    out = {}
    for f in dataclasses.fields(rays):
        value = getattr(rays, f.name)
        if isinstance(value, Tensor):
            out[f.name] = value
        elif f.name == "metadata":
            # non-tensor entries (nerfstudio copies the camera's `cam_idx` here) are not read by rendering
            out.update({f"metadata.{k}": v for k, v in (value or {}).items() if isinstance(v, Tensor)})
    return out


def rays_from_tensors(tensors: dict[str, Tensor]) -> RayBundle:
    """Inverse of `ray_tensors`."""
    metadata = {k[len("metadata.") :]: v for k, v in tensors.items() if k.startswith("metadata.")}
    fields = {k: v for k, v in tensors.items() if not k.startswith("metadata.")}
    return RayBundle(**fields, metadata=metadata)


def latent_camera(camera: Cameras) -> Cameras:
    """The camera of the latent image: intrinsics / 8 and ceil(size / 8), so its pixel i covers image pixels
    [8i, 8i + 8) and the decoded image (8 ceil(W/8) wide) starts exactly at the requested image's origin."""
    width, height = torch.ceil(camera.width / LATENT_SCALE).long(), torch.ceil(camera.height / LATENT_SCALE).long()
    return resized_camera(camera, 1 / LATENT_SCALE, 1 / LATENT_SCALE, width, height)


def scaled_camera(camera: Cameras, height: int, width: int) -> Cameras:
    """`camera` (one view) resized to height x width pixels: intrinsics scale with each axis."""
    sx, sy = width / float(camera.width[0]), height / float(camera.height[0])
    return resized_camera(camera, sx, sy, torch.full_like(camera.width, width), torch.full_like(camera.height, height))


def resized_camera(camera: Cameras, sx: float, sy: float, width: Tensor, height: Tensor) -> Cameras:
    """`camera` with its intrinsics scaled by (sx, sy) and the given image size; pose and the rest unchanged."""
    return Cameras(
        camera_to_worlds=camera.camera_to_worlds,
        fx=camera.fx * sx,
        fy=camera.fy * sy,
        cx=camera.cx * sx,
        cy=camera.cy * sy,
        width=width,
        height=height,
        distortion_params=camera.distortion_params,
        camera_type=camera.camera_type,
        times=camera.times,
        metadata=camera.metadata,
    )


def weighted_mse(pred: Tensor, target: Tensor, weights: Tensor | None) -> Tensor:
    if weights is None:
        return F.mse_loss(pred, target)
    return ((pred - target) ** 2 * weights).sum() / weights.sum().clamp_min(1.0)
