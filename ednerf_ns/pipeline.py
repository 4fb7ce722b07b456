"""The ED-NeRF training pipeline: wires the shared diffusion backend into the datamanager and the model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig
from nerfstudio.viewer.viewer_elements import ViewerCheckbox

from ednerf_ns import timeline
from ednerf_ns.compat import index_viser_icons
from ednerf_ns.datamanager import LatentDatamanagerConfig
from ednerf_ns.model import EdNerfModelConfig

TestMode = Literal["test", "val", "inference"]
"""What nerfstudio builds a pipeline for: val = training, test = ns-eval, inference = ns-render and the viewer."""


@dataclass
class EdNerfPipelineConfig(VanillaPipelineConfig):
    """Latent datamanager + latent NeRF model."""

    _target: type = field(default_factory=lambda: EdNerfPipeline)
    datamanager: LatentDatamanagerConfig = field(default_factory=LatentDatamanagerConfig)
    """Serves whole views with their VAE latents."""
    model: EdNerfModelConfig = field(default_factory=EdNerfModelConfig)
    """The latent NeRF and its refinement layer."""


def default_pipeline(config_class: type = EdNerfPipelineConfig, model_class: type = EdNerfModelConfig):
    """The pipeline of a registered method (`ed-nerf`; `ed-nerf-edit` with its own classes): nerfstudio's dataparser,
    and large evaluation chunks (a 512 px view is 4096 latent rays)."""
    return config_class(
        datamanager=LatentDatamanagerConfig(dataparser=NerfstudioDataParserConfig()),
        model=model_class(eval_num_rays_per_chunk=1 << 15),
    )


class EdNerfPipeline(VanillaPipeline):
    """VanillaPipeline whose datamanager encodes with the model's VAE (one shared copy of the weights)."""

    config: EdNerfPipelineConfig

    def __init__(
        self,
        config: EdNerfPipelineConfig,
        device: str,
        test_mode: TestMode = "val",
        world_size: int = 1,
        local_rank: int = 0,
        grad_scaler=None,
    ) -> None:
        super().__init__(config, device, test_mode, world_size, local_rank, grad_scaler)
        timeline.mark("model_built")
        index_viser_icons()  # nerfstudio builds its viewer after the pipeline: 1.2 s less at every start
        self.datamanager.set_diffusion(self.model.diffusion)
        if self.model.config.render_max_image_size is None:
            # Render at the scale the NeRF was trained at (ns-render / viewer cameras come at full resolution).
            self.model.render_max_image_size = self.datamanager.training_image_size()
        if test_mode == "val":
            # Training: encode (or load from the cache) every view now, so a broken image fails before the first
            # step and the encoder's progress bar is not interleaved with the training log.
            _ = self.datamanager.cached_train, self.datamanager.cached_eval
            timeline.mark("latents_ready")
        self.refinement_toggle = ViewerCheckbox(
            "Apply refinement layer",
            default_value=True,
            cb_hook=self._on_refinement_toggle,
            hint="Show the refined render (on) or the raw latent NeRF render (off)",
        )
        timeline.mark("pipeline_ready")

    def _on_refinement_toggle(self, element: ViewerCheckbox) -> None:
        self.model.view_refined = bool(element.value)
