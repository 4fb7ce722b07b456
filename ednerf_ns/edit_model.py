"""ED-NeRF stage 2: the latent NeRF trained by Delta Denoising Score towards a target prompt.

Each step renders one whole training view with gradients and refines it (z_tgt), takes that view's source latent
(z_src: the encoded image, or the source model's render), and applies the DDS gradient (or SDS, for ablations)
from one batched UNet call, masked to the edit region, plus a reconstruction loss outside the region.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation
from torch import Tensor
from torch.nn import Parameter

from ednerf_ns.accel import step_graph
from ednerf_ns.accel.unet_graph import UNetAcceleration
from ednerf_ns.errors import UserError, warn
from ednerf_ns.model import EdNerfModel, EdNerfModelConfig
from ednerf_ns.ops import guidance
from ednerf_ns.validate import check_edit_options


@dataclass
class EdNerfEditModelConfig(EdNerfModelConfig):
    """Editing options. Architecture options (field, refinement, diffusion model) are taken from the source run's
    config.yml unless you set them explicitly here."""

    _target: type = field(default_factory=lambda: EdNerfEditModel)
    prompt: str | None = None
    """Target prompt: what the edited scene should show (`--prompt` sets it)."""
    source_prompt: str = ""
    """Source prompt: what the scene shows now. DDS steers by the difference of the two prompts, so describe the
    original in the same words, e.g. source 'a red sphere on a gray floor', target 'a blue sphere on a gray
    floor'. Empty = the unconditional prompt (works, but edits less precisely)."""
    guidance: guidance.GuidanceKind = "dds"
    """dds (Delta Denoising Score, the method) or sds (Score Distillation Sampling, the baseline for ablations)."""
    guidance_scale: float = 7.5
    """Classifier-free guidance scale for both branches (DDS's 2D default)."""
    t_min: float = 0.05
    """Smallest diffusion timestep sampled, as a fraction of the schedule (DDS samples t in [50, 950] of 1000)."""
    t_max: float = 0.95
    """Largest diffusion timestep sampled, as a fraction of the schedule."""
    timestep_weighting: Literal["uniform", "sds"] = "uniform"
    """w(t): uniform (DDS) or 1 - alpha_bar(t) (DreamFusion's SDS weighting)."""
    guidance_weight: float = 1.0
    """Multiplier of the guidance loss. The loss is mean(z * grad): its gradient equals that of an MSE towards the
    detached target z - grad, so weight 1 pushes as hard as the reconstruction training loss would."""
    guidance_clip: float = 0.0
    """Clamp each element of the guidance gradient to [-clip, clip]; 0 = no clamp."""
    reconstruction_weight: float = 10.0
    """lambda of the masked reconstruction loss lambda * mean(||(1 - M)(z_tgt - z_src)||^2), which keeps what lies
    outside the edit mask. Without a mask (M = 1) it is zero."""
    mask_source: Literal["auto", "dataset", "prompt", "none"] = "auto"
    """Where the edit mask M comes from: auto = the mask prompt if given, else none (the whole view is editable);
    dataset = the dataset's masks (mask_path) mark the region to edit - only when asked, because in nerfstudio a
    dataset mask marks pixels to ignore; prompt = CLIPSeg on --pipeline.model.mask-prompt."""
    mask_prompt: str | None = None
    """Text naming the region to edit (e.g. 'the hat'), segmented with CLIPSeg in every training view."""
    segmentation_model: str = "CIDAS/clipseg-rd64-refined"
    """CLIPSeg checkpoint for --mask-prompt: a hub id or a local folder (transformers layout)."""
    mask_threshold: float = 0.35
    """A latent pixel is inside the mask when its value exceeds this (CLIPSeg: probability; dataset masks: the
    share of its 8x8 image block covered)."""
    mask_dilation: int = 1
    """Grow the mask by this many latent pixels (8 image pixels each), so edits can reach the region's border."""
    masked_guidance: bool = True
    """Multiply the guidance gradient by M (masked DDS). False = guidance everywhere, reconstruction outside."""
    source_latent: Literal["image", "render"] = "image"
    """z_src: the VAE latent of the training image (default), or the source model's own render of the view."""
    use_proposal_weight_anneal: bool = False
    """nerfacto anneals the proposal weights from flat to sharp over the first steps of training; an edit starts
    from trained proposals, so it samples with the fully annealed weights from its first step."""
    distortion_loss_mult: float = 0.0
    """Distortion regulariser while editing. Off: its tiny gradients reach every hash-grid entry, and Adam scales
    them up to full steps, so it would drift the regions the edit should keep."""
    edit_field: Literal["grid", "grid_and_color", "all"] = "grid_and_color"
    """Which parts of the field an edit trains: grid = the hash-grid features only (local: each entry stores one
    place of the scene); grid_and_color = also the colour head (the MLP from features and view direction to the
    latent), which widens the range of latents the field can produce; all = also the density MLP. The MLPs are
    shared by the whole scene, so they learn at the rate of the `field_mlps` optimizer. With tiny-cuda-nn the grid
    and the density MLP are one fused tensor: grid then trains both."""
    edit_field_mlps: bool = False
    """Older name of edit_field=all, kept so that earlier runs' config.yml files load: True selects all."""
    edit_geometry: bool = False
    """Let the edit change the scene's density (its shape) as well as its appearance. Off by default: the density
    comes from a frozen copy of the source run's density network (and the proposal networks are frozen), so the
    edit changes colour and texture and the shape stays exactly the source's. On the edit suite this kept every
    object's silhouette (IoU 1.00 against 0.84, where DDS melted cube edges into blobs) and gained 0.7 dB on the
    object and 1.2 dB on the background (docs/results.md). Pass True for prompts that change the shape (a sphere
    into a cube): frozen geometry cannot do that."""
    t_schedule: Literal["uniform", "anneal"] = "uniform"
    """How timesteps are drawn over the edit: uniform in [t_min, t_max] at every step, or anneal: the upper bound
    falls linearly from t_max to t_anneal_end over the edit, so large-scale changes (high t) come first and
    details (low t) last."""
    t_anneal_end: float = 0.5
    """With t_schedule anneal: the upper bound of t at the last step (a fraction of the schedule, >= t_min)."""
    train_refinement: bool = False
    """Also update the refinement layer while editing. Off by default: a per-view 2D layer could paint the edit
    into single views instead of the 3D field, which would break multi-view consistency."""
    refinement_bf16: bool = False
    """On CUDA, run the (frozen) refinement layer under bfloat16 autocast during edit steps: its self-attention
    over the whole view then takes the flash kernel. The refined latent stays float32 (the render plus the
    layer's correction); viewing and evaluation run the layer in float32. Off by default: it saves 1.4 ms per
    step on an H200 but its first step took 6.8 s longer (bf16 kernels set up once per process), more than a
    500-step edit gains (docs/benchmarks.md)."""
    unet_cuda_graph: bool = True
    """Replay the UNet call of each step from a CUDA graph (captured at the first step, one per view size):
    removes the kernel-launch overhead that is about half of an eager SD 1.5 call. Falls back to eager calls
    with a warning if capture fails. No effect off CUDA."""
    unet_compile: bool = False
    """torch.compile the UNet (CUDA only). Costs a minute or more of compilation at the first step."""
    unet_channels_last: bool = False
    """Run the UNet's convolutions in channels_last memory format (CUDA only)."""


class EdNerfEditModel(EdNerfModel):
    """EdNerfModel whose training loss is DDS/SDS guidance plus the masked reconstruction loss."""

    config: EdNerfEditModelConfig

    STEP_GRAPH_EXEMPT: ClassVar[dict[str, str]] = {
        "prompt": "its embedding is copied into the _guidance_text buffer by prepare_train_step",
        "source_prompt": "its embedding is copied into the _guidance_text buffer by prepare_train_step",
        "guidance_scale": "copied into the _guidance_scale buffer by prepare_train_step",
    }
    """See EdNerfModel.STEP_GRAPH_EXEMPT: the viewer's live controls (prompts, guidance scale) change these during an
    edit, and the step reads them from buffers, so they never force a new graph."""

    def populate_modules(self) -> None:
        super().populate_modules()
        if self.refinement is not None and not self.config.train_refinement:
            self.refinement.requires_grad_(False)
        if not self.config.edit_geometry:
            self.field.freeze_geometry()
            self.proposal_networks.requires_grad_(False)  # they follow a density that no longer changes
        self.diffusion.set_unet_acceleration(
            UNetAcceleration(
                cuda_graph=self.config.unet_cuda_graph,
                compile=self.config.unet_compile,
                channels_last=self.config.unet_channels_last,
            )
        )
        # Device-side counter: checking finiteness on the host every step would stall the GPU. A buffer updated in
        # place, so that a step replayed from a CUDA graph still counts.
        self.register_buffer("_skipped_steps", torch.zeros((), dtype=torch.long), persistent=False)
        # Prompt embeddings [uncond, target, source] and the guidance scale live in buffers that each step refreshes
        # from the config (the viewer may change both): a step replayed from a CUDA graph reads them from there.
        self._guidance_text: Tensor | None = None
        self._guidance_scale: Tensor | None = None
        self.register_buffer("_edit_progress", torch.zeros(()), persistent=False)

    def get_param_groups(self) -> dict[str, list[Parameter]]:
        groups = super().get_param_groups()
        if not self.config.train_refinement:
            groups.pop("refinement", None)
        which = "all" if self.config.edit_field_mlps else self.config.edit_field
        grid, mlps = select_edit_parameters(self.field, which)
        chosen = grid + mlps
        for p in self.field.parameters():
            p.requires_grad_(any(p is q for q in chosen))
        groups["fields"] = grid
        if not self.config.edit_geometry:
            groups.pop("proposal_networks", None)
        if mlps:
            groups["field_mlps"] = mlps
        return groups

    def get_training_callbacks(self, training_callback_attributes) -> list:
        callbacks = super().get_training_callbacks(training_callback_attributes)
        trainer = training_callback_attributes.trainer
        total = getattr(getattr(trainer, "config", None), "max_num_iterations", None)
        if total:
            # the t schedule needs the edit's progress; a buffer, so a step replayed from a CUDA graph reads it
            def track(step: int) -> None:
                self._edit_progress.fill_(min(1.0, step / max(1, total - 1)))

            where = [TrainingCallbackLocation.BEFORE_TRAIN_ITERATION]
            callbacks.append(TrainingCallback(where_to_run=where, update_every_num_iters=1, func=track))
        return callbacks

    def refine(self, raw: Tensor) -> Tensor:
        if self.training and self.config.refinement_bf16 and raw.is_cuda:
            # bfloat16, not float16: the gradients flowing back to the render are tiny (the guidance loss is a
            # per-element mean) and would underflow float16 without loss scaling
            with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
                return super().refine(raw).float()
        return super().refine(raw)

    # ------------------------------------------------------------------ prompts
    def validate_prompts(self) -> None:
        """Refuse what cannot work (the validation pass's checks, for callers that build the pipeline without the
        trainer); warn about what cannot do much."""
        check_edit_options(self.config)
        prompt = (self.config.prompt or "").strip()
        if prompt == self.config.source_prompt.strip() and self.config.guidance == "dds":
            warn("source and target prompts are identical: DDS has nothing to change (the gradient is zero)")
        if not self.config.source_prompt.strip() and self.config.guidance == "dds":
            warn(
                "no --pipeline.model.source-prompt: DDS will compare against the empty prompt; describing the "
                "original scene in the target prompt's words gives cleaner edits"
            )
        for p in {prompt, self.config.source_prompt}:
            self.diffusion.embed([p])  # encodes once (cached) and warns if the tokenizer truncates it

    def prepare_train_step(self) -> None:
        """Copy the current prompts' embeddings and guidance scale into the buffers the step reads."""
        cfg = self.config
        text = self.diffusion.embed(["", cfg.prompt or "", cfg.source_prompt])
        if self._guidance_text is None or self._guidance_text.shape != text.shape:
            self._guidance_text = text.clone()
            self._guidance_scale = torch.zeros((), device=text.device)
        else:
            self._guidance_text.copy_(text)
        assert self._guidance_scale is not None
        self._guidance_scale.fill_(float(cfg.guidance_scale))

    # ------------------------------------------------------------------ the edit step
    def get_loss_dict(self, outputs: dict, batch: dict, metrics_dict: dict | None = None) -> dict[str, Tensor]:
        if not self.training:  # eval batches: plain reconstruction numbers against the source images
            return super().get_loss_dict(outputs, batch, metrics_dict)
        cfg = self.config
        diffusion = self.diffusion
        z_tgt = outputs["latent"]
        z_src = batch["source_latent" if cfg.source_latent == "render" else "latent"].to(z_tgt.device)[None]
        mask = batch.get("edit_mask")
        mask = None if mask is None else mask.to(z_tgt.device)[None]
        alphas = diffusion.alphas_cumprod()
        steps = diffusion.num_train_timesteps
        t_max = cfg.t_max
        if cfg.t_schedule == "anneal":
            t_max = cfg.t_max + (max(cfg.t_min, cfg.t_anneal_end) - cfg.t_max) * self._edit_progress
        t, eps = guidance.sample_timestep_and_noise(z_tgt, cfg.t_min * (steps - 1), t_max * (steps - 1))
        if not step_graph.is_capturing():  # a capture reads the buffers the caller refreshes before each replay
            self.prepare_train_step()
        text, scale = self._guidance_text, self._guidance_scale
        assert text is not None and scale is not None
        if cfg.guidance == "dds":
            grad = guidance.dds_gradient(
                z_tgt, z_src, text[1], text[2], text[0], diffusion.predict_noise, alphas, t, eps, scale
            )
        else:
            grad = guidance.sds_gradient(z_tgt, text[1], text[0], diffusion.predict_noise, alphas, t, eps, scale)
        grad = grad * guidance.timestep_weight(t, alphas, cfg.timestep_weighting)
        out = guidance.sanitize(grad, cfg.guidance_clip)
        self._skipped_steps.add_((~out.finite).long())
        if metrics_dict is not None:  # nerfstudio computes metrics before losses: report the count here
            metrics_dict["edit_skipped_steps"] = self._skipped_steps
        guidance_mask = mask if cfg.masked_guidance else None
        loss = {"guidance_loss": cfg.guidance_weight * guidance.guidance_loss(z_tgt, out.grad, guidance_mask)}
        if mask is not None and cfg.reconstruction_weight > 0:
            loss["reconstruction_loss"] = cfg.reconstruction_weight * guidance.masked_reconstruction_loss(
                z_tgt, z_src, mask
            )
        if cfg.edit_geometry:  # the proposal networks must keep following the (changing) density of the field
            self.add_regularizers(outputs, metrics_dict, loss)
        return loss


def field_parameter_parts(field: torch.nn.Module) -> dict[str, list[Parameter]]:
    """The field's parameters by the module they belong to (never by name, which differs between
    implementations): grid = the hash encodings of the density network `mlp_base` (with tiny-cuda-nn, nerfstudio
    fuses grid and density MLP into one tensor, so there it is all of `mlp_base`); density = the rest of
    `mlp_base`; color = the colour head `mlp_head`; other = anything else (appearance embedding, ...)."""
    from nerfstudio.field_components.encodings import HashEncoding

    base: torch.nn.Module = field.mlp_base  # type: ignore[assignment]
    head: torch.nn.Module = field.mlp_head  # type: ignore[assignment]
    encodings = [m for m in base.modules() if isinstance(m, HashEncoding)]
    grid = [p for m in encodings for p in m.parameters()] if encodings else list(base.parameters())
    density = [p for p in base.parameters() if not any(p is q for q in grid)]
    color = list(head.parameters())
    taken = grid + density + color
    other = [p for p in field.parameters() if not any(p is q for q in taken)]
    return {"grid": grid, "density": density, "color": color, "other": other}


def select_edit_parameters(field: torch.nn.Module, which: str) -> tuple[list[Parameter], list[Parameter]]:
    """(hash-grid parameters, MLP parameters) an edit trains for `edit_field` = `which`; refuses a field in which
    no grid is found (the edit would have nothing local to train)."""
    parts = field_parameter_parts(field)
    mlps = {"grid": [], "grid_and_color": parts["color"], "all": parts["density"] + parts["color"]}[which]
    if not parts["grid"]:
        raise UserError(
            "ed-nerf-edit found no hash-grid parameters in the field to edit (an unexpected field layout); pass "
            "--pipeline.model.implementation torch to rebuild it with the project's own grids"
        )
    return parts["grid"], mlps
