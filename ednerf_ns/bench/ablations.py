"""`ednerf-bench ablations`: ED-NeRF's three claims as numbers, on procedural scenes, CPU only, nothing downloaded.

Per scene (a demo scene and a one-word edit of it) this trains two `ed-nerf` runs and makes four edits of one:

1. refinement layer on vs off: held-out latent PSNR, decoded RGB PSNR / SSIM against the images;
2. DDS vs SDS at matched steps, seed and settings: background kept (PSNR / SSIM outside the edit region), object
   colour before/after (`object_color_score`), and - because the scenes are procedural - PSNR against a render of
   the true target scene (same cameras, the object recoloured), which also catches blur and oversaturation;
3. edit mask vs no mask (mask_source none), for both guidances.

Every edit is also measured for multi-view consistency by depth reprojection (`ednerf_ns.tools.evaluate`). CLIP metrics
are added when --clip-model names a CLIP checkpoint that loads (none is bundled, so by default they are skipped).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from ednerf_ns.demo.cli import EMBEDDED_MODEL, edit_scene, train_scene
from ednerf_ns.errors import UserError
from ednerf_ns.ops.metrics import difference, mean_finite

DEFAULT_SCENES: tuple[str, ...] = (
    "a red sphere on a gray checkered floor -> a blue sphere on a gray checkered floor",
    "a green cube on a wooden floor -> a yellow cube on a wooden floor",
    "a purple cylinder on a white tiled floor -> an orange cylinder on a white tiled floor",
)
# name -> (guidance, mask_source); "dataset" uses the demo dataset's object masks as edit regions.
EDITS: dict[str, tuple[str, str]] = {
    "dds_mask": ("dds", "dataset"),
    "sds_mask": ("sds", "dataset"),
    "dds_no_mask": ("dds", "none"),
    "sds_no_mask": ("sds", "none"),
}


@dataclass
class AblationConfig:
    """Refinement on/off, DDS vs SDS, mask vs no mask: train and edit procedural scenes and measure each claim."""

    output_dir: Path = Path("ednerf-ablations")
    """Where the scenes, runs, ablations.json and the contact sheets go."""
    scenes: tuple[str, ...] = DEFAULT_SCENES
    """Scene / edit pairs 'source prompt -> target prompt'; each source is a demo scene ('a <colour> <shape> on a
    <floor>'), each target changes the object's colour."""
    quick: bool = False
    """Smoke run (the first scene, 16 views, 60 training and 10 edit steps): checks the pipeline, not the claims."""
    train_steps: int | None = None
    """ed-nerf steps per run (default 1000, --quick 60)."""
    edit_steps: int | None = None
    """ed-nerf-edit steps per edit, the same for every variant (default 300, --quick 10)."""
    views: int | None = None
    """Rendered views per scene, every 8th held out (default 48, --quick 16)."""
    resolution: int = 128
    """Image size in pixels (the embedded model's training size; latents are 1/8 of it)."""
    seed: int = 0
    """Seed of scenes, cameras, training and edits (every variant of a scene uses the same one)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train: auto = cuda when available."""
    diffusion_model: str = field(default_factory=lambda: str(EMBEDDED_MODEL))
    """Diffusion model (diffusers layout). Default: the tiny model shipped with ednerf_ns."""
    clip_model: str | None = None
    """CLIP checkpoint (hub id or local folder) for CLIP directional similarity; default none (skipped)."""
    picture_views: int = 3
    """Held-out views shown per scene in the contact sheet."""


@dataclass
class Scene:
    """One scene/edit pair and its prepared data."""

    source_prompt: str
    """Caption of the scene as rendered."""
    target_prompt: str
    """What the edits ask for."""
    source_color: str
    """Palette colour of the object before the edit."""
    target_color: str
    """Palette colour the target prompt asks for."""
    folder: Path
    """This scene's output folder."""
    data: Path
    """nerfstudio dataset of the source scene."""
    target_data: Path | None
    """The same cameras on the true target scene (object recoloured), for edit fidelity; None if not derivable."""


def parse_pairs(pairs: tuple[str, ...]) -> list[tuple[str, str]]:
    from ednerf_ns.demo.cli import parse_scene_prompt, prompt_color

    out = []
    for pair in pairs:
        if pair.count("->") != 1:
            raise UserError(f"--scenes entry '{pair}' must be 'source prompt -> target prompt'")
        source, target = (p.strip() for p in pair.split("->"))
        parse_scene_prompt(source)
        if prompt_color(target) is None or prompt_color(target) == prompt_color(source):
            raise UserError(f"--scenes entry '{pair}': the target prompt must name another palette colour")
        out.append((source, target))
    if not out:
        raise UserError("--scenes is empty")
    return out


def main(config: AblationConfig) -> dict:
    from nerfstudio.utils.rich_utils import CONSOLE
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    start = time.time()
    cfg = config
    pairs = parse_pairs(cfg.scenes)[: 1 if cfg.quick else None]
    train_steps = cfg.train_steps or (60 if cfg.quick else 1000)
    edit_steps = cfg.edit_steps or (10 if cfg.quick else 300)
    views = cfg.views or (16 if cfg.quick else 48)
    device = "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but no CUDA device is available; use --device cpu")
    if views < 9:
        raise UserError(f"--views {views}: need at least 9 (every 8th view is held out; consistency needs two)")
    if cfg.resolution < 64 or cfg.resolution % 8:
        raise UserError(f"--resolution {cfg.resolution}: use a multiple of 8, at least 64 (the model is made for 128)")
    out = cfg.output_dir.expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    scorer = None
    if cfg.clip_model:
        from ednerf_ns.tools.evaluate import ClipScorer

        scorer = ClipScorer(cfg.clip_model, device)  # fails now, not after the first hour

    results = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=CONSOLE, transient=False) as progress:
        overall = progress.add_task("Ablations (runs)", total=len(pairs) * (2 + len(EDITS)))

        def advance_overall() -> None:
            progress.advance(overall)

        for k, (source_prompt, target_prompt) in enumerate(pairs):
            scene = prepare_scene(k, source_prompt, target_prompt, out, views, cfg.resolution, cfg.seed)
            steps = (train_steps, edit_steps)
            results.append(run_scene(scene, cfg, device, steps, scorer, progress, advance_overall))

    report = {
        "claims": claims(results),
        "mean": mean_over_scenes(results),
        "scenes": results,
        "settings": {
            "train_steps": train_steps,
            "edit_steps": edit_steps,
            "views": views,
            "held_out_every": 8,
            "resolution": cfg.resolution,
            "seed": cfg.seed,
            "device": device,
            "diffusion_model": cfg.diffusion_model,
            "clip_model": cfg.clip_model,
            "quick": cfg.quick,
            "edit_variants": {name: {"guidance": g, "mask_source": m} for name, (g, m) in EDITS.items()},
        },
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        },
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "wall_time_s": round(time.time() - start, 1),
    }
    (out / "ablations.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    (out / "ablations.md").write_text(markdown_tables(report))
    print_summary(report, out)
    return report


# ----------------------------------------------------------------------------------------------------------------------
# One scene


def prepare_scene(
    index: int, source_prompt: str, target_prompt: str, out: Path, views: int, resolution: int, seed: int
) -> Scene:
    """Render the source scene and, with the same cameras, the true target scene (object recoloured)."""
    from ednerf_ns.demo.cli import parse_scene_prompt, prompt_color
    from ednerf_ns.demo.scene import write_nerfstudio_dataset

    folder = out / f"scene_{index}"
    spec = parse_scene_prompt(source_prompt)
    target_spec = parse_scene_prompt(target_prompt)
    source_color, target_color = prompt_color(source_prompt), prompt_color(target_prompt)
    assert source_color is not None and target_color is not None
    options = dict(num_views=views, resolution=resolution, seed=seed, write_split=True)
    data = write_nerfstudio_dataset(spec, folder / "scene", **options)
    target_data = None
    same_geometry = target_spec.objects[0].shape == spec.objects[0].shape and target_spec.floor == spec.floor
    if same_geometry:  # only the colour differs: the same cameras see the ideal result of the edit
        recoloured = dataclasses.replace(spec, objects=[dataclasses.replace(spec.objects[0], color=target_color)])
        target_data = write_nerfstudio_dataset(recoloured, folder / "target_scene", **options)
    return Scene(source_prompt, target_prompt, source_color, target_color, folder, data, target_data)


def run_scene(
    scene: Scene, cfg: AblationConfig, device: str, steps: tuple[int, int], scorer, progress, advance
) -> dict:
    """Train both stage-1 runs and the four edits of one scene, then measure them. steps = (train, edit). Each run
    is the demo's (`train_scene` / `edit_scene`) with the ablated option changed."""
    train_steps, edit_steps = steps
    cache, folder = scene.folder / "cache", scene.folder / "runs"
    timings: dict[str, float] = {}
    runs: dict[str, Path] = {}

    def timed(name: str, steps: int, stage: Callable[..., Path]) -> None:
        task = progress.add_task(f"  {scene.folder.name}: {name}", total=steps)
        began = time.time()
        runs[name] = stage(on_step=lambda step: progress.update(task, completed=step + 1))
        timings[name] = round(time.time() - began, 1)
        progress.remove_task(task)
        advance()

    for use_refinement in (True, False):
        name = "refinement_on" if use_refinement else "refinement_off"
        options = {"pipeline.model.use_refinement": use_refinement}
        args = (scene.data, folder, cache, device, train_steps, cfg.seed, cfg.diffusion_model)
        timed(name, train_steps, functools.partial(train_scene, *args, name=name, overrides=options))

    for name, (guidance, mask_source) in EDITS.items():
        options = {"pipeline.model.guidance": guidance, "pipeline.model.mask_source": mask_source}
        args = (runs["refinement_on"], scene.data, folder, cache, device, edit_steps, cfg.seed)
        prompts = (scene.source_prompt, scene.target_prompt)
        timed(name, edit_steps, functools.partial(edit_scene, *args, *prompts, name=name, overrides=options))

    task = progress.add_task(f"  {scene.folder.name}: rendering and measuring", total=len(runs))
    result = measure_scene(scene, runs, scorer, lambda: progress.advance(task), cfg.picture_views)
    progress.remove_task(task)
    result["timings_s"] = timings
    return result


def measure_scene(scene: Scene, runs: dict[str, Path], scorer, advance, picture_views: int) -> dict:
    """Render the held-out views of every run and compute the numbers of all three claims."""
    from ednerf_ns.demo.colors import object_color_score
    from ednerf_ns.edit_model import EdNerfEditModelConfig
    from ednerf_ns.ops.metrics import latent_psnr, masked_ssim, psnr
    from ednerf_ns.tools.evaluate import clip_metrics, consistency, edit_regions, neighbour_pairs, render_views
    from ednerf_ns.tools.runs import load_run

    rendered = {}
    unrefined = None
    for name, run in runs.items():
        pipeline = load_run(run / "config.yml")
        rendered[name] = render_views(pipeline, "eval")
        if name == "refinement_on":  # the same field without its refinement layer, for reference
            pipeline.model.view_refined = False
            unrefined = render_views(pipeline, "eval")
        del pipeline
        advance()
    source = rendered["refinement_on"]
    assert unrefined is not None and all(v.mask is not None for v in source)
    truth = target_images(scene, source)

    def reconstruction(views) -> dict:
        return {
            "latent_psnr": mean_finite([float(latent_psnr(v.latent, v.target_latent)) for v in views]),
            "rgb_psnr": mean_finite([float(psnr(v.rgb, v.image)) for v in views]),
            "rgb_ssim": mean_finite([float(masked_ssim(v.rgb, v.image)) for v in views]),
        }

    refinement = {"on": reconstruction(source), "off": reconstruction(rendered["refinement_off"])}
    refinement["on_without_refinement_layer"] = reconstruction(unrefined)

    defaults = EdNerfEditModelConfig()
    regions, region_info = edit_regions(source, defaults.mask_threshold, defaults.mask_dilation, dataset_masks=True)
    assert regions is not None
    pairs = neighbour_pairs(source)
    source_consistency = consistency(source, pairs, regions, tolerance=0.05)
    objects = [v.mask for v in source]

    def colour(views, name: str) -> float | None:
        return mean_finite([object_color_score(v.rgb, m, name) for v, m in zip(views, objects, strict=True)])

    def edit_numbers(views) -> dict:
        numbers = {
            "target_color_score": colour(views, scene.target_color),
            "source_color_score": colour(views, scene.source_color),
        }
        if views is not source:
            numbers["background_psnr"] = mean_finite(
                [
                    float(psnr(e.rgb, s.rgb, mask=(~r)[..., None]))
                    for e, s, r in zip(views, source, regions, strict=True)
                ]
            )
            numbers["background_ssim"] = mean_finite(
                [float(masked_ssim(e.rgb, s.rgb, ~r)) for e, s, r in zip(views, source, regions, strict=True)]
            )
        if truth is not None:
            numbers["target_scene_psnr"] = mean_finite(
                [float(psnr(v.rgb, t)) for v, t in zip(views, truth, strict=True)]
            )
            numbers["target_scene_psnr_object"] = mean_finite(
                [float(psnr(v.rgb, t, mask=m[..., None])) for v, t, m in zip(views, truth, objects, strict=True)]
            )
        cons = source_consistency if views is source else consistency(views, pairs, regions, tolerance=0.05)
        numbers["consistency_psnr"] = cons["psnr"]
        numbers["consistency_psnr_in_region"] = cons["psnr_in_region"]
        if scorer is not None and views is not source:
            clip = clip_metrics(scorer, source, views, scene.source_prompt, scene.target_prompt)
            numbers["clip_directional_similarity"] = mean_finite(clip["directional_similarity"])
            numbers["clip_edited_vs_target_prompt"] = mean_finite(clip["edited_vs_target_prompt"])
        return numbers

    edits = {"source": edit_numbers(source)}
    for name in EDITS:
        edits[name] = edit_numbers(rendered[name])
    picture = scene.folder / "contact_sheet.png"
    save_sheet(scene, source, unrefined, rendered, truth, picture_views, picture)
    return {
        "source_prompt": scene.source_prompt,
        "target_prompt": scene.target_prompt,
        "held_out_views": len(source),
        "refinement": refinement,
        "edits": edits,
        "edit_region": region_info,
        "consistency_pairs": [list(p) for p in pairs],
        "contact_sheet": str(picture),
    }


def target_images(scene: Scene, views) -> list[torch.Tensor] | None:
    """The true target scene's images for the rendered views (same file names, same cameras)."""
    import numpy as np
    from PIL import Image

    if scene.target_data is None:
        return None
    images = []
    for view in views:
        array = np.asarray(Image.open(scene.target_data / "images" / view.name).convert("RGB"), dtype=np.float32)
        image = torch.from_numpy(array / 255.0)
        if image.shape != view.rgb.shape:
            return None
        images.append(image)
    return images


SHEET_COLUMNS = (
    "image",
    "refinement on",
    "refinement off",
    "DDS + mask",
    "SDS + mask",
    "DDS, no mask",
    "SDS, no mask",
    "true target",
)


def save_sheet(scene: Scene, source, unrefined, rendered: dict, truth, count: int, path: Path) -> None:
    """Held-out views (rows) x the columns of SHEET_COLUMNS, with a label strip on top."""
    from ednerf_ns.tools.runs import labelled_contact_sheet

    del unrefined  # shown as numbers only: it is the same field minus the 2D layer
    rows = []
    for i in range(min(count, len(source))):
        row = [source[i].image, source[i].rgb, rendered["refinement_off"][i].rgb]
        row += [rendered[name][i].rgb for name in EDITS]
        if truth is not None:
            row.append(truth[i])
        rows.append(row)
    labelled_contact_sheet(rows, list(SHEET_COLUMNS), path)


# ----------------------------------------------------------------------------------------------------------------------
# Summaries


def mean_over_scenes(results: list[dict]) -> dict:
    """Each number averaged over the scenes (same nesting as one scene's entry)."""

    def average(items: list):
        if all(isinstance(x, dict) for x in items):
            return {k: average([x[k] for x in items]) for k in items[0] if all(k in x for x in items)}
        return mean_finite([x for x in items if isinstance(x, (int, float))])

    return {"refinement": average([r["refinement"] for r in results]), "edits": average([r["edits"] for r in results])}


# claim -> difference -> (key path of a, key path of b): each is reported as a - b, per scene and mean. Positive
# means the claim's direction (the method's choice is always `a`).
CLAIM_DIFFERENCES: dict[str, dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "1_refinement_on_minus_off": {
        name: (("refinement", "on", name), ("refinement", "off", name))
        for name in ("latent_psnr", "rgb_psnr", "rgb_ssim")
    },
    "2_dds_minus_sds": {
        f"{name}_{masked}": (("edits", f"dds_{suffix}", name), ("edits", f"sds_{suffix}", name))
        for masked, suffix in (("masked", "mask"), ("unmasked", "no_mask"))
        for name in ("background_psnr", "target_color_score", "target_scene_psnr", "consistency_psnr")
    },
    "3_mask_minus_no_mask": {
        f"{name}_{guidance}": (("edits", f"{guidance}_mask", name), ("edits", f"{guidance}_no_mask", name))
        for guidance in ("dds", "sds")
        for name in ("background_psnr", "target_color_score", "target_scene_psnr")
    },
}


def claims(results: list[dict]) -> dict:
    """The differences each claim is about (CLAIM_DIFFERENCES), per scene and their mean."""

    def get(result: dict, path: tuple[str, ...]):
        for key in path:
            result = result.get(key) if isinstance(result, dict) else None  # type: ignore[assignment]
        return result

    out: dict = {}
    for claim, differences in CLAIM_DIFFERENCES.items():
        out[claim] = {}
        for name, (a, b) in differences.items():
            per_scene = [difference(get(r, a), get(r, b)) for r in results]  # type: ignore[arg-type]
            out[claim][name] = {"mean": mean_finite(per_scene), "per_scene": per_scene}
    return out


def markdown_tables(report: dict) -> str:
    """The numbers of ablations.json as Markdown tables, one per claim (rows: scenes and their mean)."""
    scenes = report["scenes"]
    names = [f"{r['source_prompt']} -> {prompt_color_or(r['target_prompt'])}" for r in scenes]

    def fmt(value) -> str:
        return "n/a" if value is None else f"{value:.3f}" if abs(value) < 10 else f"{value:.2f}"

    def table(title: str, columns: list[tuple[str, tuple[str, ...]]]) -> list[str]:
        lines = [f"### {title}", "", "| scene | " + " | ".join(c for c, _ in columns) + " |"]
        lines.append("|---" * (len(columns) + 1) + "|")
        rows = [*zip(names, scenes, strict=True), ("**mean**", report["mean"])]
        for name, entry in rows:
            values = []
            for _, path in columns:
                value = entry
                for key in path:
                    value = value.get(key) if isinstance(value, dict) else None
                values.append(fmt(value))
            lines.append(f"| {name} | " + " | ".join(values) + " |")
        return [*lines, ""]

    ref = [
        (f"{metric} {variant}", ("refinement", key, metric))
        for metric in ("latent_psnr", "rgb_psnr", "rgb_ssim")
        for variant, key in (("on", "on"), ("off", "off"), ("on, layer bypassed", "on_without_refinement_layer"))
    ]
    variants = ["source", *EDITS]
    lines = [f"Settings: {json.dumps(report['settings'])}", ""]
    lines += table("1. Refinement layer (held-out views)", ref)
    edit_metrics = ("background_psnr", "background_ssim", "target_color_score", "source_color_score")
    edit_metrics += ("target_scene_psnr", "target_scene_psnr_object", "consistency_psnr", "consistency_psnr_in_region")
    for metric in edit_metrics:
        lines += table(f"Edits: {metric}", [(v, ("edits", v, metric)) for v in variants])
    lines += ["### Claim differences (a - b, mean over scenes)", "", "| claim | difference | mean | per scene |"]
    lines.append("|---|---|---|---|")
    for claim, differences in report["claims"].items():
        for name, d in differences.items():
            per_scene = ", ".join(fmt(v) for v in d["per_scene"])
            lines.append(f"| {claim} | {name} | {fmt(d['mean'])} | {per_scene} |")
    return "\n".join(lines) + "\n"


def prompt_color_or(prompt: str) -> str:
    from ednerf_ns.demo.cli import prompt_color

    return prompt_color(prompt) or prompt


def print_summary(report: dict, out: Path) -> None:
    from nerfstudio.utils.rich_utils import CONSOLE

    mean = report["mean"]
    CONSOLE.print(f"\n[bold green]Ablations finished in {report['wall_time_s']:.0f} s[/bold green] (mean over scenes)")
    for name, numbers in mean["refinement"].items():
        CONSOLE.print(f"  refinement {name}: latent PSNR {numbers['latent_psnr']}, RGB PSNR {numbers['rgb_psnr']}")
    for name, numbers in mean["edits"].items():
        CONSOLE.print(
            f"  {name}: background PSNR {numbers.get('background_psnr')}, target colour score "
            f"{numbers['target_color_score']}, PSNR vs the true target scene {numbers.get('target_scene_psnr')}"
        )
    CONSOLE.print(f"  {out / 'ablations.json'}; contact sheets: {out}/scene_*/contact_sheet.png")
