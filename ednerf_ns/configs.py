"""nerfstudio method registrations: `ed-nerf` (latent NeRF training) and `ed-nerf-edit` (DDS editing).

Every `ns-train` / `ns-eval` / `ns-render` call imports every plugin's entry point, so this module imports no
diffusers or transformers (those load lazily, when a model is actually built).
"""

from __future__ import annotations

from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig
from nerfstudio.plugins.types import MethodSpecification

from ednerf_ns.compat import allow_numpy_scalars_in_checkpoints
from ednerf_ns.datamanager import LatentDatamanagerConfig
from ednerf_ns.edit_model import EdNerfEditModelConfig
from ednerf_ns.edit_pipeline import EdNerfEditPipelineConfig
from ednerf_ns.model import EdNerfModelConfig
from ednerf_ns.pipeline import EdNerfPipelineConfig
from ednerf_ns.trainer import EdNerfEditTrainerConfig, EdNerfTrainerConfig

TRAIN_STEPS = 5000
EDIT_STEPS = 500

allow_numpy_scalars_in_checkpoints()


def _adam(lr: float, final: float, steps: int, max_norm: float | None = None) -> dict:
    return {
        "optimizer": AdamOptimizerConfig(lr=lr, eps=1e-15, max_norm=max_norm),
        "scheduler": ExponentialDecaySchedulerConfig(lr_final=final, max_steps=steps),
    }


def ed_nerf_trainer() -> EdNerfTrainerConfig:
    return EdNerfTrainerConfig(
        method_name="ed-nerf",
        steps_per_eval_batch=500,
        steps_per_eval_image=500,
        steps_per_save=1000,
        max_num_iterations=TRAIN_STEPS,
        mixed_precision=False,
        pipeline=EdNerfPipelineConfig(
            datamanager=LatentDatamanagerConfig(dataparser=NerfstudioDataParserConfig()),
            model=EdNerfModelConfig(eval_num_rays_per_chunk=1 << 15),
        ),
        optimizers={
            "proposal_networks": _adam(1e-2, 1e-4, TRAIN_STEPS),
            "fields": _adam(1e-2, 1e-4, TRAIN_STEPS),
            "refinement": _adam(1e-3, 1e-4, TRAIN_STEPS),
            "camera_opt": _adam(1e-3, 1e-4, TRAIN_STEPS),
        },
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
        vis="viewer",
    )


ed_nerf = MethodSpecification(
    config=ed_nerf_trainer(),
    description="ED-NeRF stage 1: a NeRF of Stable Diffusion latents plus a refinement layer (then: ed-nerf-edit).",
)


def ed_nerf_edit_trainer() -> EdNerfEditTrainerConfig:
    return EdNerfEditTrainerConfig(
        method_name="ed-nerf-edit",
        steps_per_eval_batch=500,
        steps_per_eval_image=250,
        steps_per_save=500,
        max_num_iterations=EDIT_STEPS,
        mixed_precision=False,
        pipeline=EdNerfEditPipelineConfig(
            datamanager=LatentDatamanagerConfig(dataparser=NerfstudioDataParserConfig()),
            model=EdNerfEditModelConfig(eval_num_rays_per_chunk=1 << 15),
        ),
        optimizers={
            "proposal_networks": _adam(1e-3, 1e-4, EDIT_STEPS),
            "fields": _adam(1e-2, 1e-3, EDIT_STEPS),
            "refinement": _adam(1e-4, 1e-5, EDIT_STEPS),
            "camera_opt": _adam(1e-4, 1e-5, EDIT_STEPS),
        },
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
        vis="viewer",
    )


ed_nerf_edit = MethodSpecification(
    config=ed_nerf_edit_trainer(),
    description="ED-NeRF stage 2: edit an ed-nerf run with a text prompt (Delta Denoising Score).",
)
