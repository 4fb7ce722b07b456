"""`ednerf-eval`: measure a text edit of an ED-NeRF run against its source run.

Renders the same views (held-out by default) from both runs and reports:

- CLIP directional similarity, the paper's metric: cos(E_img(edited) - E_img(source), E_txt(target) - E_txt(source)),
  and CLIP text-image similarity of both renders with both prompts;
- background PSNR / SSIM outside the edit region (source render vs edited render): did the edit keep the rest?
- multi-view consistency by depth reprojection, for the source and the edited renders (see `reproject`).

transformers (CLIP) and CLIPSeg load lazily, inside functions: `configs.py` never imports this module, so
`ns-train` stays light.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from ednerf_ns.errors import ArgumentError, UserError, first_line, warn
from ednerf_ns.ops.latent_grid import binarize, downsample_mask, image_float, latent_at_latent_resolution, upsample
from ednerf_ns.ops.metrics import difference, mean_finite, rounded
from ednerf_ns.tools.runs import RenderedView

DEFAULT_CLIP = "openai/clip-vit-large-patch14"


@dataclass
class EvalConfig:
    """Measure a text edit: CLIP direction and scores, what stayed outside the edit region, multi-view consistency."""

    source: Path
    """config.yml (or run folder) of the source `ed-nerf` run."""
    edited: Path
    """config.yml (or run folder) of the edited run. An `ed-nerf-edit` run records its prompts; any other ed-nerf
    run (e.g. one trained on edited images) needs --source-prompt and --target-prompt."""
    output_dir: Path = Path("ednerf-eval")
    """Where evaluation.json and views.png go."""
    split: Literal["eval", "train"] = "eval"
    """Which views to render: the held-out ones (eval) or the training views."""
    max_views: int | None = None
    """Render at most this many views of the split (the first ones); default all."""
    source_prompt: str | None = None
    """What the source scene shows. Default: the edited run's pipeline.model.source_prompt."""
    target_prompt: str | None = None
    """What the edit asked for. Default: the edited run's pipeline.model.prompt."""
    clip: bool = True
    """Compute the CLIP metrics (--no-clip skips them, e.g. on a machine without the CLIP weights)."""
    clip_model: str = DEFAULT_CLIP
    """CLIP checkpoint: a hub id or a local folder in transformers layout (CLIPModel + CLIPProcessor)."""
    dataset_masks: bool | None = None
    """Whether the dataset's masks mark the edited object (the region the background metrics leave out). Default:
    as the edit did (--pipeline.model.mask-source dataset); in nerfstudio a dataset mask usually marks pixels to
    ignore, so they are not taken as the object otherwise."""
    mask_prompt: str | None = None
    """Region of the edit for the background metrics, segmented with CLIPSeg, when dataset masks do not mark it.
    Default: the edited run's --pipeline.model.mask-prompt, if it used one."""
    consistency_tolerance: float = 0.05
    """Depth test of the reprojection: a point counts as visible in the other view when that view's depth there
    agrees with the point's distance to 5% (relative)."""


# ----------------------------------------------------------------------------------------------------------------------
# Rendering


@dataclass
class EvalView(RenderedView):
    """A rendered view plus what reprojection needs."""

    depth: Tensor = field(default_factory=lambda: torch.zeros(0))
    """[H, W] rendered (median) depth along each unit-length ray, bilinearly upsampled from latent resolution."""
    camera: object = None
    """The view's nerfstudio `Cameras` (one camera, CPU, at image resolution)."""


@torch.no_grad()
def render_views(pipeline, split: str = "eval", limit: int | None = None, on_view=None) -> list[EvalView]:
    """Like `ednerf_ns.tools.runs.render_split`, keeping depth and camera for the reprojection."""

    dm = pipeline.datamanager
    cached = dm.cached_eval if split == "eval" else dm.cached_train
    dataset = dm.eval_dataset if split == "eval" else dm.train_dataset
    views = []
    for idx, data in enumerate(cached[:limit]):
        camera = dataset.cameras[idx : idx + 1]
        out = pipeline.model.get_outputs_for_camera(camera.to(pipeline.device))
        mask = data["mask"][..., 0].cpu() if "mask" in data else None
        views.append(
            EvalView(
                name=Path(dataset.image_filenames[idx]).name,
                rgb=out["rgb"].cpu().float().clamp(0, 1),
                image=image_float(data["image"].cpu()),
                mask=mask,
                latent=latent_at_latent_resolution(out["latent"]).permute(2, 0, 1).cpu(),
                target_latent=data["latent"].cpu(),
                depth=out["depth"][..., 0].cpu().float(),
                camera=camera.to("cpu"),
            )
        )
        if on_view is not None:
            on_view()
    return views


# ----------------------------------------------------------------------------------------------------------------------
# Multi-view consistency


def reproject(
    rgb_j: Tensor, depth_j: Tensor, camera_j, depth_i: Tensor, camera_i, tolerance: float = 0.05
) -> tuple[Tensor, Tensor]:
    """Warp view j's image into view i through view i's depth.

    Each pixel of view i is lifted to the 3D point its ray hits (origin + depth x unit direction, the rays nerfstudio
    renders with), projected into camera j (pinhole; nerfstudio/OpenGL axes: x right, y up, looking down -z; pixel
    centres at +0.5) and `rgb_j` is sampled there bilinearly. A pixel is valid when the point lies in front of
    camera j, inside its image, and is not hidden there: j's own depth at that spot must match the point's distance
    from j within `tolerance` (relative).

    Args:
        rgb_j: [H, W, C] image of view j. depth_j: [H, W] depth of view j. camera_j, camera_i: one-camera
            nerfstudio `Cameras` (perspective). depth_i: [Hi, Wi] depth of view i. tolerance: relative depth test.

    Returns:
        warped [Hi, Wi, C] and valid [Hi, Wi] bool.
    """
    import torch.nn.functional as F

    rays = camera_i.generate_rays(camera_indices=0, keep_shape=True)
    points = rays.origins + rays.directions * depth_i[..., None]  # [Hi, Wi, 3]
    c2w = camera_j.camera_to_worlds.reshape(3, 4).float()
    rotation, center = c2w[:, :3], c2w[:, 3]
    local = (points - center) @ rotation  # world -> camera j: R^T (p - t), written for row vectors
    z = -local[..., 2]
    safe_z = z.clamp_min(1e-6)
    fx, fy = float(camera_j.fx.flatten()[0]), float(camera_j.fy.flatten()[0])
    cx, cy = float(camera_j.cx.flatten()[0]), float(camera_j.cy.flatten()[0])
    height, width = depth_j.shape
    x = cx + fx * local[..., 0] / safe_z  # continuous pixel coordinates (pixel c spans [c, c + 1))
    y = cy - fy * local[..., 1] / safe_z
    inside = (z > 1e-6) & (x >= 0) & (x <= width) & (y >= 0) & (y <= height)
    grid = torch.stack([2 * x / width - 1, 2 * y / height - 1], dim=-1)[None]  # align_corners=False convention
    stacked = torch.cat([rgb_j.float(), depth_j[..., None].float()], dim=-1).permute(2, 0, 1)[None]
    sampled = F.grid_sample(stacked, grid, mode="bilinear", padding_mode="border", align_corners=False)
    sampled = sampled[0].permute(1, 2, 0)
    warped, seen_depth = sampled[..., :-1], sampled[..., -1]
    distance = (points - center).norm(dim=-1)
    visible = (seen_depth - distance).abs() <= tolerance * distance
    finite = torch.isfinite(points).all(-1) & torch.isfinite(seen_depth)
    return warped, inside & visible & finite


def neighbour_pairs(views: list[EvalView]) -> list[tuple[int, int]]:
    """Each view with its nearest other view (camera centres), as unordered pairs without repeats."""
    if len(views) < 2:
        return []
    centers = torch.stack([v.camera.camera_to_worlds.reshape(3, 4)[:, 3] for v in views])
    dist = torch.cdist(centers, centers)
    dist.fill_diagonal_(float("inf"))
    pairs = {tuple(sorted((i, int(dist[i].argmin())))) for i in range(len(views))}
    return sorted(pairs)  # type: ignore[arg-type]


def consistency(
    views: list[EvalView], pairs: list[tuple[int, int]], regions: list[Tensor | None], tolerance: float
) -> dict:
    """Reprojection PSNR of the renders over view pairs (both directions), overall and inside the edit region.

    Why this measure: an edit is 3D-consistent when every view shows the same surface in the same colour. Warping
    view j's render into view i through the run's own rendered depth and comparing it with view i's render tests
    exactly that, pixel by pixel, where both views see the same point. It needs no extra model (CLIP direction
    consistency, Instruct-NeRF2NeRF's measure, needs CLIP and measures semantics of whole images, which a
    view-dependent colour blotch barely moves), and it catches ED-NeRF's own risk: the 2D refinement layer and the
    per-view VAE decoding could produce view-dependent detail that no 3D field explains.

    The absolute number is limited by things unrelated to the edit: depth is rendered at 1/8 resolution and
    upsampled (object borders are smeared), shading may depend on the view, and the VAE decoder adds its own
    per-view noise. Hence it is reported for the source renders too, over the same pairs: the edit should not
    make it worse (`consistency_psnr_change` near 0 or positive). Assumes perspective cameras.
    """
    from ednerf_ns.ops.metrics import psnr

    overall, inside, valid_share = [], [], []
    for a, b in pairs:
        for i, j in ((a, b), (b, a)):
            src, dst = views[j], views[i]
            warped, valid = reproject(src.rgb, src.depth, src.camera, dst.depth, dst.camera, tolerance)
            valid_share.append(float(valid.float().mean()))
            if valid.any():
                overall.append(float(psnr(warped, views[i].rgb, mask=valid[..., None])))
            region = regions[i]
            if region is not None and (valid & region).any():
                inside.append(float(psnr(warped, views[i].rgb, mask=(valid & region)[..., None])))
    return {
        "psnr": mean_finite(overall),
        "psnr_in_region": mean_finite(inside),
        "valid_fraction": mean_finite(valid_share),
    }


# ----------------------------------------------------------------------------------------------------------------------
# Edit region (for the background metrics)


def edit_regions(
    views: list[RenderedView],
    threshold: float,
    dilation: int,
    *,
    dataset_masks: bool,
    mask_prompt: str | None = None,
    segmentation_model: str = "CIDAS/clipseg-rd64-refined",
    device: torch.device | str = "cpu",
    cache_dir: Path | None = None,
) -> tuple[list[Tensor] | None, dict]:
    """Per view, the [H, W] bool region the edit may change, made the way the edit makes its mask M.

    Dataset masks (when `dataset_masks` says they mark the object), or else CLIPSeg probabilities for
    `mask_prompt`, are brought to latent resolution, thresholded and dilated exactly as `ed-nerf-edit` does, then
    upsampled x8: outside this region the edit promises to keep the scene. Returns (None, reason) when nothing
    marks the region.
    """
    from ednerf_ns.models2d.segmentation import TextSegmenter

    info: dict = {"threshold": threshold, "dilation": dilation}
    has_masks = all(v.mask is not None for v in views)
    if dataset_masks and has_masks:
        info["source"] = "dataset masks"
        softs = [downsample_mask(v.mask[..., None]) for v in views]  # type: ignore[index]
    elif mask_prompt:
        info["source"] = f"CLIPSeg '{segmentation_model}' for '{mask_prompt}'"
        segmenter = TextSegmenter(segmentation_model, device, cache_dir)
        softs = [segmenter.latent_probabilities(v.image, mask_prompt) for v in views]
    else:
        info["source"] = None
        if has_masks:
            info["reason"] = (
                "the edit used neither the dataset's masks nor a mask prompt: nothing marks the unedited region "
                "(pass --dataset-masks True if the masks mark the edited object, or --mask-prompt 'the edited "
                "object' to segment it with CLIPSeg)"
            )
        else:
            info["reason"] = (
                "the dataset has no masks and the edit used no mask prompt: nothing marks the unedited region "
                "(pass --mask-prompt 'the edited object' to segment it with CLIPSeg)"
            )
        return None, info
    regions = []
    for view, soft in zip(views, softs, strict=True):
        mask = binarize(soft.float().cpu(), threshold, dilation)  # [1, h, w]
        height, width = view.rgb.shape[:2]
        regions.append(upsample(mask.permute(1, 2, 0), height, width, "nearest")[..., 0] > 0.5)
    info["coverage"] = mean_finite([float(r.float().mean()) for r in regions])
    return regions, info


def background_metrics(source: list[RenderedView], edited: list[RenderedView], regions: list[Tensor]) -> dict:
    """PSNR and SSIM of the edited renders against the source renders, outside each view's edit region."""
    from ednerf_ns.ops.metrics import masked_ssim, psnr

    psnrs, ssims = [], []
    for s, e, region in zip(source, edited, regions, strict=True):
        keep = ~region
        if not keep.any():
            psnrs.append(None)
            ssims.append(None)
            continue
        psnrs.append(float(psnr(e.rgb, s.rgb, mask=keep[..., None])))
        ssims.append(float(masked_ssim(e.rgb, s.rgb, keep)))
    return {"psnr": psnrs, "ssim": ssims}


# ----------------------------------------------------------------------------------------------------------------------
# CLIP


class ClipScorer:
    """CLIP image and text embeddings (transformers CLIPModel + CLIPProcessor), loaded once."""

    def __init__(self, model: str, device) -> None:
        from ednerf_ns.models2d.diffusion import quiet_hf_logging

        quiet_hf_logging()
        try:
            from transformers import CLIPModel, CLIPProcessor

            self.processor = CLIPProcessor.from_pretrained(model)
            self.model = CLIPModel.from_pretrained(model).to(device).eval()
        except Exception as exc:
            if Path(model).expanduser().exists():
                reason = first_line(exc, 200)
            else:  # transformers' hub messages run to several sentences; say what happened in a few words
                reason = "not a local folder, and not a hub id this machine can load (offline, or misspelled?)"
            raise UserError(
                f"could not load the CLIP model '{model}': {reason}; pass --clip-model <local folder with a "
                f"transformers CLIPModel and CLIPProcessor> (or a reachable hub id), or --no-clip to skip the CLIP "
                f"metrics"
            ) from None
        self.device = torch.device(device)

    @torch.no_grad()
    def images(self, images: list[Tensor]) -> Tensor:
        """[H, W, 3] images in [0, 1] -> [N, D] embeddings."""
        pixels = [(img.clamp(0, 1) * 255).round().to(torch.uint8).numpy() for img in images]
        inputs = self.processor(images=pixels, return_tensors="pt")
        return _features(self.model.get_image_features(pixel_values=inputs["pixel_values"].to(self.device)))

    @torch.no_grad()
    def texts(self, texts: list[str]) -> Tensor:
        inputs = self.processor.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
        return _features(self.model.get_text_features(**inputs))


def _features(out) -> Tensor:
    # transformers 4.x returns the projected embeddings; 5.x an output object with them as pooler_output.
    return (out if isinstance(out, Tensor) else out.pooler_output).float().cpu()


def clip_metrics(
    scorer: ClipScorer, source: list[RenderedView], edited: list[RenderedView], source_prompt: str, target_prompt: str
) -> dict:
    """Per-view CLIP directional similarity and text-image similarities (cosines)."""
    from ednerf_ns.ops.metrics import directional_similarity

    src = scorer.images([v.rgb for v in source])
    edit = scorer.images([v.rgb for v in edited])
    text = scorer.texts([source_prompt, target_prompt])

    def cosine(images: Tensor, t: Tensor) -> list[float]:
        return torch.nn.functional.cosine_similarity(images, t[None], dim=-1).tolist()

    return {
        "directional_similarity": directional_similarity(src, edit, text[0], text[1]).tolist(),
        "edited_vs_target_prompt": cosine(edit, text[1]),
        "source_vs_target_prompt": cosine(src, text[1]),
        "source_vs_source_prompt": cosine(src, text[0]),
        "edited_vs_source_prompt": cosine(edit, text[0]),
    }


# ----------------------------------------------------------------------------------------------------------------------
# Runs and their relation


def resolve_prompts(edited_config, source_prompt: str | None, target_prompt: str | None) -> tuple[str, str, str]:
    """(source prompt, target prompt, where they came from)."""
    model = edited_config.pipeline.model
    if edited_config.method_name != "ed-nerf-edit":
        if source_prompt is None or target_prompt is None:
            raise ArgumentError(
                f"--edited is an '{edited_config.method_name}' run, which records no prompts: pass --source-prompt "
                f"'what the source shows' and --target-prompt 'what the edit asked for'"
            )
        return source_prompt, target_prompt, "flags"
    origin = "edited run" if source_prompt is None and target_prompt is None else "flags and edited run"
    source = model.source_prompt if source_prompt is None else source_prompt
    target = (model.prompt or "") if target_prompt is None else target_prompt
    if not target.strip():
        raise UserError("the edited run records no target prompt; pass --target-prompt")
    return source, target, origin


def check_same_scene(source_pipeline, edited_pipeline, split: str, source_path: Path, edited_path: Path) -> None:
    """Refuse runs whose views of `split` are not the same cameras (different scenes or splits)."""
    from ednerf_ns.validate import config_data_path

    def cameras(pipeline):
        dm = pipeline.datamanager
        return (dm.eval_dataset if split == "eval" else dm.train_dataset).cameras

    a, b = cameras(source_pipeline), cameras(edited_pipeline)
    data_a = config_data_path(source_pipeline.datamanager.config)
    data_b = config_data_path(edited_pipeline.datamanager.config)
    where = f"(data '{data_a}' vs '{data_b}')"
    if len(a) != len(b):
        raise UserError(
            f"'{source_path}' and '{edited_path}' are not runs of the same scene: {len(a)} vs {len(b)} {split} "
            f"views {where}; pass --edited an edit of --source"
        )
    same = torch.allclose(a.camera_to_worlds, b.camera_to_worlds, atol=1e-4) and all(
        torch.allclose(getattr(a, k).float(), getattr(b, k).float(), atol=1e-3)
        for k in ("fx", "fy", "cx", "cy", "width", "height")
    )
    if not same:
        raise UserError(
            f"'{source_path}' and '{edited_path}' are not runs of the same scene: their {split} cameras differ "
            f"{where}; pass --edited an edit of --source"
        )


# ----------------------------------------------------------------------------------------------------------------------
# The command


def main(cfg: EvalConfig) -> dict:
    from nerfstudio.utils.rich_utils import CONSOLE
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ednerf_ns.edit_model import EdNerfEditModelConfig
    from ednerf_ns.errors import check_writable_folder
    from ednerf_ns.tools.runs import check_run, contact_sheet, load_run, save_png
    from ednerf_ns.validate import check_range

    start = time.time()
    check_range(cfg.max_views, "--max-views", low=1, hint="render at least one view")
    check_range(cfg.consistency_tolerance, "--consistency-tolerance", low=0, high=1, low_open=True, high_open=True,
                hint="pass a relative depth difference, e.g. 0.05")  # fmt: skip
    check_writable_folder(cfg.output_dir, "--output-dir")
    source_file, _, _ = check_run(cfg.source, "--source")
    edited_file, edited_config, _ = check_run(cfg.edited, "--edited")
    source_prompt, target_prompt, prompt_origin = resolve_prompts(edited_config, cfg.source_prompt, cfg.target_prompt)
    edit_model = edited_config.pipeline.model
    defaults = EdNerfEditModelConfig()
    recorded_source = getattr(edited_config.pipeline, "source_config", None)
    if recorded_source is not None and Path(recorded_source).resolve() != source_file.resolve():
        warn(f"the edited run was made from '{recorded_source}', not from --source '{source_file}'")

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # where nerfstudio's eval_setup loads
    scorer = ClipScorer(cfg.clip_model, device) if cfg.clip else None  # fails before anything slow
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=CONSOLE, transient=False) as progress:
        source_pipeline = load_run(source_file)
        edited_pipeline = load_run(edited_file)
        check_same_scene(source_pipeline, edited_pipeline, cfg.split, cfg.source, cfg.edited)
        dm = source_pipeline.datamanager
        total = len(dm.eval_dataset if cfg.split == "eval" else dm.train_dataset)
        if total == 0:
            raise UserError(f"the {cfg.split} split of '{cfg.source}' has no views; try --split train")
        n = total if cfg.max_views is None else min(total, cfg.max_views)
        task = progress.add_task(f"Rendering {n} {cfg.split} views of both runs", total=2 * n)
        source = render_views(source_pipeline, cfg.split, n, lambda: progress.advance(task))
        edited = render_views(edited_pipeline, cfg.split, n, lambda: progress.advance(task))

        task = progress.add_task("Scoring", total=3)
        mask_source = getattr(edit_model, "mask_source", "auto")  # how the edit made its mask
        mask_prompt = cfg.mask_prompt or getattr(edit_model, "mask_prompt", None)
        if mask_source == "none" and cfg.mask_prompt is None:
            mask_prompt = None  # that edit had no mask; only dataset masks (or --mask-prompt) can mark a region
        cache = dm.config.cache_dir
        dataset_masks = cfg.dataset_masks
        if dataset_masks is None:  # as the edit did: nerfstudio masks mark pixels to ignore unless told otherwise
            dataset_masks = mask_source == "dataset"
        regions, mask_info = edit_regions(
            source,
            threshold=getattr(edit_model, "mask_threshold", defaults.mask_threshold),
            dilation=getattr(edit_model, "mask_dilation", defaults.mask_dilation),
            dataset_masks=dataset_masks,
            mask_prompt=mask_prompt,
            segmentation_model=getattr(edit_model, "segmentation_model", defaults.segmentation_model),
            device=device,
            cache_dir=None if cache is None else Path(cache) / "masks",
        )
        background = background_metrics(source, edited, regions) if regions is not None else None
        progress.advance(task)
        pairs = neighbour_pairs(source)
        in_region = regions if regions is not None else [None] * len(source)
        cons_source = consistency(source, pairs, in_region, cfg.consistency_tolerance)
        cons_edited = consistency(edited, pairs, in_region, cfg.consistency_tolerance)
        progress.advance(task)
        clip = clip_metrics(scorer, source, edited, source_prompt, target_prompt) if scorer is not None else None
        progress.advance(task)

    result = summarize(
        Scores(source, edited, clip, background, mask_info, cons_source, cons_edited, pairs),
        source_prompt=source_prompt,
        target_prompt=target_prompt,
        prompt_origin=prompt_origin,
        clip_model=cfg.clip_model if cfg.clip else None,
        split=cfg.split,
    )
    result.update(
        source_run=str(source_file),
        edited_run=str(edited_file),
        wall_time_s=round(time.time() - start, 1),
    )
    out = cfg.output_dir.expanduser()
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    rows = []
    for i, (s, e) in enumerate(zip(source, edited, strict=True)):
        row = [s.rgb, e.rgb]
        if regions is not None:
            row.append(regions[i].float()[..., None].expand(-1, -1, 3))
        rows.append(row)
    save_png(contact_sheet(rows), out / "views.png")
    report(result, out)
    return result


@dataclass
class Scores:
    """Everything measured on one pair of runs, before it is summarised."""

    source: list[EvalView]
    """Renders of the source run."""
    edited: list[EvalView]
    """Renders of the edited run (same cameras)."""
    clip: dict | None
    """Per-view CLIP values (`clip_metrics`), or None when skipped."""
    background: dict | None
    """Per-view background PSNR / SSIM (`background_metrics`), or None without an edit region."""
    region: dict
    """How the edit region was made (`edit_regions`), with the reason when there is none."""
    consistency_source: dict
    """`consistency` of the source renders."""
    consistency_edited: dict
    """`consistency` of the edited renders."""
    pairs: list[tuple[int, int]]
    """The view pairs used for consistency."""


CLIP_SIMILARITIES = ("edited_vs_target_prompt", "source_vs_target_prompt", "source_vs_source_prompt",
                     "edited_vs_source_prompt")  # fmt: skip


def summarize(
    scores: Scores, *, source_prompt: str, target_prompt: str, prompt_origin: str, clip_model: str | None, split: str
) -> dict:
    """The JSON document: summary metrics (null when undefined, with the reason in `notes`) and per-view values."""
    notes: dict[str, str] = {}
    metrics: dict = {}
    clip, background = scores.clip, scores.background
    if clip is None:
        metrics["clip_directional_similarity"] = None
        metrics.update({f"clip_{key}": None for key in CLIP_SIMILARITIES})
        notes["clip"] = "skipped (--no-clip)"
    else:
        metrics["clip_directional_similarity"] = mean_finite(clip["directional_similarity"])
        if metrics["clip_directional_similarity"] is None:
            notes["clip_directional_similarity"] = (
                "undefined: the source and target prompts are identical (no text direction)"
                if source_prompt.strip() == target_prompt.strip()
                else "undefined in every view: the edited renders are identical to the source renders"
            )
        elif any(rounded(v) is None for v in clip["directional_similarity"]):
            notes["clip_directional_similarity"] = "mean over the views whose edited render differs from the source"
        metrics.update({f"clip_{key}": mean_finite(clip[key]) for key in CLIP_SIMILARITIES})
    if background is None:
        metrics["background_psnr"] = metrics["background_ssim"] = None
        notes["background"] = scores.region["reason"]
    else:
        metrics["background_psnr"] = mean_finite(background["psnr"])
        metrics["background_ssim"] = mean_finite(background["ssim"])
    cons_source, cons_edited = scores.consistency_source, scores.consistency_edited
    metrics["consistency_psnr_source"] = cons_source["psnr"]
    metrics["consistency_psnr_edited"] = cons_edited["psnr"]
    metrics["consistency_psnr_change"] = difference(cons_edited["psnr"], cons_source["psnr"])
    metrics["consistency_psnr_in_region_source"] = cons_source["psnr_in_region"]
    metrics["consistency_psnr_in_region_edited"] = cons_edited["psnr_in_region"]
    if not scores.pairs:
        notes["consistency"] = "needs at least two views"
    elif cons_source["psnr"] is None or cons_edited["psnr"] is None:
        notes["consistency"] = (
            "no pixel of any view pair passed the depth test (each pair's rendered depths disagree: a barely trained "
            "run, or views that share nothing)"
        )
    per_view = []
    for i, view in enumerate(scores.source):
        entry: dict = {"name": view.name}
        if clip is not None:
            entry["clip_directional_similarity"] = rounded(clip["directional_similarity"][i])
            entry["clip_edited_vs_target_prompt"] = rounded(clip["edited_vs_target_prompt"][i])
            entry["clip_source_vs_target_prompt"] = rounded(clip["source_vs_target_prompt"][i])
        if background is not None:
            entry["background_psnr"] = rounded(background["psnr"][i])
            entry["background_ssim"] = rounded(background["ssim"][i])
        per_view.append(entry)
    return {
        "metrics": metrics,
        "notes": notes,
        "prompts": {"source": source_prompt, "target": target_prompt, "from": prompt_origin},
        "clip_model": clip_model,
        "split": split,
        "views": len(scores.source),
        "edit_region": {k: v for k, v in scores.region.items() if k != "reason"},
        "consistency": {
            "method": "depth reprojection between each view and its nearest neighbour (both directions); PSNR over "
            "the pixels visible in both; change = edited - source",
            "pairs": [list(p) for p in scores.pairs],
            "valid_fraction_source": cons_source["valid_fraction"],
            "valid_fraction_edited": cons_edited["valid_fraction"],
        },
        "per_view": per_view,
    }


def report(result: dict, out: Path) -> None:
    from nerfstudio.utils.rich_utils import CONSOLE

    m = result["metrics"]

    def fmt(value, unit: str = "") -> str:
        return "n/a" if value is None else f"{value:.4g}{unit}"

    CONSOLE.print(f"\n[bold green]ednerf-eval: {result['views']} {result['split']} views[/bold green]")
    CONSOLE.print(f"  CLIP directional similarity: {fmt(m['clip_directional_similarity'])}")
    CONSOLE.print(
        f"  CLIP similarity with the target prompt: edited {fmt(m['clip_edited_vs_target_prompt'])}, "
        f"source {fmt(m['clip_source_vs_target_prompt'])}"
    )
    CONSOLE.print(
        f"  background (outside the edit region): PSNR {fmt(m['background_psnr'], ' dB')}, "
        f"SSIM {fmt(m['background_ssim'])}"
    )
    CONSOLE.print(
        f"  reprojection consistency: source {fmt(m['consistency_psnr_source'], ' dB')}, edited "
        f"{fmt(m['consistency_psnr_edited'], ' dB')}"
    )
    for key, note in result["notes"].items():
        CONSOLE.print(f"  note ({key}): {note}", highlight=False)
    CONSOLE.print(f"  {out / 'evaluation.json'}, {out / 'views.png'}")


def entrypoint() -> None:
    from ednerf_ns.errors import run_command

    run_command("ednerf-eval", EvalConfig, main)


if __name__ == "__main__":
    entrypoint()
