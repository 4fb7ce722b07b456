"""The ED-NeRF edit pipeline: loads the source run, prepares per-view edit masks, exposes live prompt controls.

The source run is only ever read: its config.yml tells how to rebuild the same field, refinement layer, diffusion
model and dataparser; its checkpoint is loaded with weights_only=True and every parameter is verified. The edit
writes a new run folder and starts at step 0 with fresh optimizers.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
from nerfstudio.utils.rich_utils import CONSOLE
from nerfstudio.viewer.viewer_elements import ViewerSlider, ViewerText

from ednerf_ns import timeline
from ednerf_ns.checkpoint import SourceRun, load_verified, read_checkpoint, require_source_run
from ednerf_ns.datamanager import LatentDatamanagerConfig, default_cache_dir
from ednerf_ns.edit_model import EdNerfEditModel, EdNerfEditModelConfig
from ednerf_ns.errors import UserError, warn
from ednerf_ns.model import EdNerfModelConfig
from ednerf_ns.models2d.segmentation import TextSegmenter
from ednerf_ns.ops.latent_grid import binarize, image_float
from ednerf_ns.pipeline import EdNerfPipeline, EdNerfPipelineConfig, TestMode, default_pipeline


@dataclass
class EdNerfEditPipelineConfig(EdNerfPipelineConfig):
    """Edit pipeline; the source run comes from --source-run (or --load-dir)."""

    _target: type = field(default_factory=lambda: EdNerfEditPipeline)
    model: EdNerfEditModelConfig = field(default_factory=EdNerfEditModelConfig)
    """The latent NeRF being edited, and the editing options."""
    source_checkpoint: Path | None = None
    """Checkpoint of the run being edited. Filled in from --load-dir / --load-step; recorded for provenance."""
    source_config: Path | None = None
    """config.yml of the run being edited. Filled in from --source-run / --load-dir."""
    viewer_changes: list[str] = field(default_factory=list)
    """Prompt and guidance changes made in the viewer during the edit ('step N: target prompt = ...'), filled in by
    the edit and saved in config.yml with each checkpoint (pipeline.model holds the values in use at the end)."""


def default_edit_pipeline() -> EdNerfEditPipelineConfig:
    """The pipeline of the registered `ed-nerf-edit` method (the edit trainer's defaults, for merging options)."""
    return default_pipeline(EdNerfEditPipelineConfig, EdNerfEditModelConfig)


class EdNerfEditPipeline(EdNerfPipeline):
    """See the module docstring."""

    config: EdNerfEditPipelineConfig
    model: EdNerfEditModel

    def __init__(self, config: EdNerfEditPipelineConfig, device: str, test_mode: TestMode = "val", **kwargs) -> None:
        super().__init__(config, device, test_mode, **kwargs)  # world_size, local_rank, grad_scaler: as nerfstudio's
        if test_mode != "val":
            return  # ns-eval / ns-render / ns-viewer load the edited weights; no UNet, no source run needed
        require_source_run(config.source_checkpoint)
        state = read_checkpoint(config.source_checkpoint)
        load_verified(self, state["pipeline"], f"source checkpoint '{config.source_checkpoint}'")
        CONSOLE.log(f"Loaded every parameter of {config.source_checkpoint} (step {state.get('step')})")
        self.model.validate_prompts()
        if not self.model.config.edit_geometry:
            CONSOLE.log(
                "Editing appearance only: the shape stays the source run's (pass "
                "--pipeline.model.edit-geometry True for prompts that change the shape)"
            )
        self.current_step = 0  # the trainer's step (EdNerfEditTrainer.train_iteration sets it), for the viewer log
        self._prepare_views()
        cfg = self.model.config
        self.target_prompt_text = ViewerText(
            "Target prompt", cfg.prompt or "", cb_hook=self._on_target_prompt, hint="Takes effect on the next step"
        )
        self.source_prompt_text = ViewerText(
            "Source prompt", cfg.source_prompt, cb_hook=self._on_source_prompt, hint="What the scene shows now"
        )
        self.guidance_scale_slider = ViewerSlider(
            "Guidance scale", float(cfg.guidance_scale), 1.0, 30.0, 0.5, cb_hook=self._on_guidance_scale
        )
        timeline.mark("pipeline_ready")

    # ------------------------------------------------------------------ viewer callbacks
    def _on_target_prompt(self, element: ViewerText) -> None:
        if element.value.strip():  # an emptied field while typing keeps the last usable prompt
            self._record("prompt", element.value)

    def _on_source_prompt(self, element: ViewerText) -> None:
        self._record("source_prompt", element.value)

    def _on_guidance_scale(self, element: ViewerSlider) -> None:
        self._record("guidance_scale", float(element.value))

    def _record(self, name: str, value) -> None:
        """Apply a viewer change from the next step on, and log it in the run's config (saved with checkpoints)."""
        if getattr(self.model.config, name) == value:
            return
        setattr(self.model.config, name, value)
        self.config.viewer_changes.append(f"step {self.current_step}: {name} = {value!r}")
        CONSOLE.log(f"Viewer: {name} = {value!r} from step {self.current_step}")

    # ------------------------------------------------------------------ per-view preparation
    def _prepare_views(self) -> None:
        """Attach `edit_mask` (and `source_latent`) to every cached training view, once."""
        cfg = self.model.config
        views = self.datamanager.cached_train
        source = resolve_mask_source(cfg.mask_source, cfg.mask_prompt, has_dataset_masks="latent_mask" in views[0])
        # (--pipeline.model.mask-source prompt without a mask prompt was refused by ednerf_ns.validate)
        if source == "dataset" and "latent_mask" not in views[0]:
            raise UserError(
                "--pipeline.model.mask-source dataset, but the dataset has no masks (mask_path); pass "
                "--pipeline.model.mask-source auto, none or prompt"
            )
        segmenter = None
        if source == "prompt":
            cache = (self.datamanager.config.cache_dir or default_cache_dir()) / "masks"
            segmenter = TextSegmenter(cfg.segmentation_model, self.device, cache)
        coverage = []
        for view in views:
            if source == "dataset":
                soft = view["latent_mask"]
            elif source == "prompt":
                assert segmenter is not None
                soft = segmenter.latent_probabilities(image_float(view["image"]), cfg.mask_prompt or "")
            else:
                continue
            mask = binarize(soft.float().cpu(), cfg.mask_threshold, cfg.mask_dilation)
            view["edit_mask"] = mask.to(view["latent"].device)
            coverage.append(float(mask.mean()))
        if coverage:
            mean = sum(coverage) / len(coverage)
            CONSOLE.log(f"Edit masks from {source}: {mean:.0%} of each view on average")
            if mean > LARGE_MASK_SHARE:
                warn(
                    f"the edit mask ({source}) covers {mean:.0%} of the view area on average: almost nothing is kept; "
                    + (
                        "in nerfstudio dataset masks usually mark pixels to ignore - if yours do, drop "
                        "--pipeline.model.mask-source dataset"
                        if source == "dataset"
                        else "check --pipeline.model.mask-prompt / --pipeline.model.mask-threshold"
                    )
                )
            if max(coverage) == 0.0:
                warn(
                    "the edit mask is empty in every view: nothing will change; lower --pipeline.model.mask-threshold"
                    " or check --pipeline.model.mask-prompt"
                )
        else:
            CONSOLE.log("No edit mask: the whole view is editable")
        if cfg.source_latent == "render":
            self._attach_source_renders(views)

    @torch.no_grad()
    def _attach_source_renders(self, views: list[dict]) -> None:
        """z_src = the source model's own refined render of each training view (before any edit step)."""
        was_training = self.model.training
        self.model.eval()
        cameras = self.datamanager.train_cameras
        for idx, view in enumerate(views):
            camera = cameras[idx : idx + 1].to(self.device)
            out = self.model.render_latent_view(camera, chunk=self.model.config.eval_num_rays_per_chunk)
            view["source_latent"] = out["latent"][0].to(view["latent"].device)
        self.model.train(was_training)


LARGE_MASK_SHARE = 0.7
"""Warn when the edit mask covers more than this share of the view area (the mean over training views)."""


def resolve_mask_source(requested: str, mask_prompt: str | None, has_dataset_masks: bool) -> str:
    """Where the edit mask comes from. auto = the mask prompt if one is given, else no mask: in nerfstudio a
    dataset mask marks pixels to *ignore*, so it marks the edit region only when asked (`dataset`)."""
    if requested == "auto":
        source = "prompt" if (mask_prompt or "").strip() else "none"
        if source == "none" and has_dataset_masks:
            CONSOLE.log(
                "The dataset has masks; they are not used as edit regions (nerfstudio masks mark pixels to ignore). "
                "Pass --pipeline.model.mask-source dataset if they mark the region to edit"
            )
        return source
    return requested


# Stage-1 options that are training hyperparameters, not architecture: the edit's own values apply.
EDIT_TIME_OPTIONS = {
    "_target",
    "prompt",
    "distortion_loss_mult",
    "interlevel_loss_mult",
    "raw_loss_mult",
    "mask_training_loss",
    "use_proposal_weight_anneal",
    "eval_num_rays_per_chunk",
}


def merge_source_config(
    cli: EdNerfEditPipelineConfig,
    source: SourceRun,
    defaults: EdNerfEditPipelineConfig,
    given: set[str] | None = None,
):
    """The edit's pipeline config: the source run's architecture and data settings, except what the user set.

    `given`: the options typed on the command line (`ednerf_ns.cli_options`); each of them wins over the source run,
    even when it equals the default. Without it (a config built in Python), a value counts as set when it differs
    from the method's default. The edit-only options (prompts, guidance, masks) always come from the edit's config.
    """
    src_pipeline = source.config.pipeline  # type: ignore[attr-defined]

    def user_set(path: str, value, default) -> bool:
        return path in given if given is not None else value != default

    merged = copy.deepcopy(cli)
    stage1_fields = {f.name for f in dataclasses.fields(EdNerfModelConfig)} - EDIT_TIME_OPTIONS
    for name in stage1_fields:
        if not user_set(f"pipeline.model.{name}", getattr(cli.model, name), getattr(defaults.model, name)):
            if hasattr(src_pipeline.model, name):
                setattr(merged.model, name, copy.deepcopy(getattr(src_pipeline.model, name)))
    # (a --pipeline.model.diffusion-model other than the source run's was refused by ednerf_ns.validate)
    src_dm = src_pipeline.datamanager
    if isinstance(src_dm, LatentDatamanagerConfig):
        dm = copy.deepcopy(src_dm)
        for f in dataclasses.fields(LatentDatamanagerConfig):
            if f.name in ("_target", "data", "dataparser"):
                continue
            value = getattr(cli.datamanager, f.name)
            if user_set(f"pipeline.datamanager.{f.name}", value, getattr(defaults.datamanager, f.name)):
                setattr(dm, f.name, copy.deepcopy(value))
        dm.dataparser = merge_dataparser(
            cli.datamanager.dataparser, dm.dataparser, defaults.datamanager.dataparser, given
        )
        dm.data = cli.datamanager.data if cli.datamanager.data is not None else src_dm.data
        if dm.data is not None:
            dm.dataparser.data = Path(dm.data)
        dm._target = cli.datamanager._target
        merged.datamanager = dm
    merged.source_checkpoint = source.checkpoint_path
    merged.source_config = source.config_path
    return merged


def merge_dataparser(cli, source, default, given: set[str] | None):
    """The source run's dataparser with the options the user set (another dataparser: the user's, whole)."""
    from ednerf_ns.cli_options import DATAPARSER

    if type(cli) is not type(source):
        chosen = DATAPARSER in given if given is not None else type(cli) is not type(default)
        return copy.deepcopy(cli if chosen else source)
    merged = copy.deepcopy(source)
    baseline = default if type(default) is type(cli) else type(cli)()
    for f in dataclasses.fields(cli):
        if f.name in ("_target", "data"):
            continue
        value = getattr(cli, f.name)
        is_set = f"{DATAPARSER}.{f.name}" in given if given is not None else value != getattr(baseline, f.name)
        if is_set:
            setattr(merged, f.name, copy.deepcopy(value))
    return merged
