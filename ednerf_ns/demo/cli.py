"""`ednerf-demo`: the whole method on a fresh machine, no GPU and no download.

Renders a procedural scene described by the source prompt, trains `ed-nerf` on it with the embedded tiny latent
diffusion model, edits it towards the target prompt with `ed-nerf-edit`, and measures the edit on held-out views.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ednerf_ns.errors import ArgumentError

EMBEDDED_MODEL = Path(__file__).parent / "weights"


@dataclass
class DemoConfig:
    """Train and edit an ED-NeRF on a procedural scene with the embedded tiny diffusion model."""

    output_dir: Path = Path("ednerf-demo")
    """Where the dataset, both runs, the pictures and metrics.json go."""
    source_prompt: str = "a red sphere on a gray checkered floor"
    """The scene to build and its description: 'a <colour> <sphere|cube|cylinder> on a <floor>', colours red,
    orange, yellow, green, blue, purple; floors 'gray checkered floor', 'wooden floor', 'white tiled floor'."""
    target_prompt: str = "a blue sphere on a gray checkered floor"
    """What the edit should turn the scene into (same words, one thing changed works best)."""
    quick: bool = False
    """Fewer training steps (about a minute on 2 CPU cores; the edit keeps its 300 steps): what CI runs."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train: auto = cuda when available."""
    seed: int = 0
    """Seed of the scene layout, the cameras and training."""
    train_steps: int | None = None
    """ed-nerf steps (default 1500, --quick 400)."""
    edit_steps: int | None = None
    """ed-nerf-edit steps (default 300, --quick too)."""
    views: int = 48
    """Rendered views around the scene; every 8th is held out for evaluation."""
    resolution: int = 128
    """Image size in pixels (latents are 1/8 of it)."""
    diffusion_model: str = field(default_factory=lambda: str(EMBEDDED_MODEL))
    """Diffusion model (diffusers layout). Default: the tiny model shipped with ednerf_ns."""
    video_frames: int = 36
    """Frames of the before/after orbit animation (before_after.gif and .mp4)."""


def parse_scene_prompt(prompt: str):
    """'a red sphere on a wooden floor' -> SceneSpec, or an ArgumentError naming what is missing."""
    from ednerf_ns.demo.colors import COLOR_NAMES
    from ednerf_ns.demo.scene import FLOORS, SHAPES, ObjectSpec, SceneSpec

    words = prompt.lower().replace(",", " ").split()
    color = next((w for w in words if w in COLOR_NAMES), None)
    shape = next((w for w in words if w in SHAPES), None)
    floor = next((f for f in FLOORS if f in " ".join(words)), FLOORS[0])
    if color is None or shape is None:
        raise ArgumentError(
            f"--source-prompt '{prompt}' must describe a demo scene; pass 'a <colour> <shape> on a <floor>' with a "
            f"colour in {', '.join(COLOR_NAMES)} and a shape in {', '.join(SHAPES)}"
        )
    size = {"sphere": 0.55, "cube": 0.45, "cylinder": 0.45}[shape]
    return SceneSpec(objects=[ObjectSpec(shape, color, size=size, height=1.0)], floor=floor)


def prompt_color(prompt: str) -> str | None:
    from ednerf_ns.demo.colors import COLOR_NAMES

    return next((w for w in prompt.lower().replace(",", " ").split() if w in COLOR_NAMES), None)


def main(cfg: DemoConfig) -> dict:
    import torch
    from nerfstudio.utils.rich_utils import CONSOLE
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ednerf_ns.demo.scene import caption, write_nerfstudio_dataset
    from ednerf_ns.tools.runs import load_run
    from ednerf_ns.tools.video import before_after_animation

    start = time.time()
    check_demo_options(cfg)
    spec = parse_scene_prompt(cfg.source_prompt)
    target_color = prompt_color(cfg.target_prompt)
    device = "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ArgumentError("--device cuda, but no CUDA device is available; use --device cpu")
    train_steps = cfg.train_steps or (400 if cfg.quick else 1500)
    # --quick shortens training only: 120 edit steps left the demo sphere 35% blue (300: 87%); see test_demo
    edit_steps = cfg.edit_steps or 300
    out = cfg.output_dir.expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "cache"

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=CONSOLE, transient=False) as progress:
        task = progress.add_task(f"Rendering '{caption(spec)}'", total=1)
        data = write_nerfstudio_dataset(
            spec, out / "scene", num_views=cfg.views, resolution=cfg.resolution, seed=cfg.seed, write_split=True
        )
        progress.advance(task)

        task = progress.add_task("Training the latent NeRF (ed-nerf)", total=train_steps)
        runs = out / "runs"
        source_run = train_scene(
            data,
            runs,
            cache,
            device,
            train_steps,
            cfg.seed,
            cfg.diffusion_model,
            lambda step: progress.update(task, completed=step + 1),
        )
        task = progress.add_task(f"Editing towards '{cfg.target_prompt}' (ed-nerf-edit)", total=edit_steps)
        edit_run = edit_scene(
            source_run,
            data,
            runs,
            cache,
            device,
            edit_steps,
            cfg.seed,
            cfg.source_prompt,
            cfg.target_prompt,
            on_step=lambda step: progress.update(task, completed=step + 1),
        )

        task = progress.add_task("Rendering held-out views and measuring", total=1)
        before_pipeline, after_pipeline = load_run(source_run / "config.yml"), load_run(edit_run / "config.yml")
        metrics = measure(before_pipeline, after_pipeline, target_color, out)
        progress.advance(task)
        task = progress.add_task("Rendering the before/after orbit", total=2 * cfg.video_frames)
        captions = (f"before: {cfg.source_prompt}", f"after: {cfg.target_prompt}")
        advance = lambda: progress.advance(task)  # noqa: E731
        videos, _ = before_after_animation(
            before_pipeline, after_pipeline, captions, out, frames=cfg.video_frames, on_frame=advance
        )

    metrics.update(
        source_prompt=cfg.source_prompt,
        target_prompt=cfg.target_prompt,
        train_steps=train_steps,
        edit_steps=edit_steps,
        device=device,
        wall_time_s=round(time.time() - start, 1),
        source_run=str(source_run / "config.yml"),
        edit_run=str(edit_run / "config.yml"),
        videos=[str(v) for v in videos],
    )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    report(metrics, out)
    return metrics


def train_scene(
    data: Path,
    runs: Path,
    cache: Path,
    device: str,
    steps: int,
    seed: int,
    diffusion_model: str,
    on_step: Callable[[int], None] | None = None,
    name: str = "demo",
    overrides: dict[str, object] | None = None,
) -> Path:
    """Train `ed-nerf` on a demo dataset with the small-scene preset, as the demo does; returns the run folder.
    Shared by the demo and the benchmarks, so that what they measure is what the demo runs."""
    from ednerf_ns.configs import ed_nerf_trainer
    from ednerf_ns.presets import apply_small_scene_preset
    from ednerf_ns.tools.runs import apply_overrides, quiet_run, train_in_process

    config = apply_small_scene_preset(ed_nerf_trainer())
    quiet_run(config, device, runs, name, steps, seed)
    config.pipeline.datamanager.data = data
    config.pipeline.datamanager.cache_dir = cache
    config.pipeline.model.diffusion_model = diffusion_model
    apply_overrides(config, overrides or {})
    return train_in_process(config, on_step)


def edit_scene(
    source_run: Path,
    data: Path,
    runs: Path,
    cache: Path,
    device: str,
    steps: int,
    seed: int,
    source_prompt: str,
    target_prompt: str,
    on_step: Callable[[int], None] | None = None,
    name: str = "demo",
    overrides: dict[str, object] | None = None,
) -> Path:
    """`ed-nerf-edit` of a demo run with the method's defaults; the demo scenes' masks mark the object to edit.
    `overrides` ('pipeline.model.guidance_scale': 15, ...) change single options (benchmark variants)."""
    from ednerf_ns.configs import ed_nerf_edit_trainer
    from ednerf_ns.tools.runs import apply_overrides, quiet_run, train_in_process

    edit = ed_nerf_edit_trainer()
    quiet_run(edit, device, runs, name, steps, seed)
    edit.load_dir = source_run / "nerfstudio_models"
    edit.pipeline.datamanager.data = data
    edit.pipeline.datamanager.cache_dir = cache
    edit.pipeline.model.prompt = target_prompt
    edit.pipeline.model.source_prompt = source_prompt
    edit.pipeline.model.mask_source = "dataset"  # the demo datasets' masks mark the object: the region to edit
    apply_overrides(edit, overrides or {})
    return train_in_process(edit, on_step)


def measure(source_pipeline, edit_pipeline, target_color: str | None, out: Path) -> dict:
    """Held-out views of both runs: reconstruction, colour of the object, and what stayed outside it."""
    import numpy as np

    from ednerf_ns.demo.colors import object_color_score
    from ednerf_ns.ops.metrics import latent_psnr, psnr
    from ednerf_ns.tools.runs import contact_sheet, render_split, save_png

    before = render_split(source_pipeline)
    after = render_split(edit_pipeline)

    def mean(values):
        return round(float(np.mean(values)), 4)

    metrics: dict = {
        "latent_psnr": mean([float(latent_psnr(v.latent, v.target_latent)) for v in before]),
        "rgb_psnr": mean([float(psnr(v.rgb, v.image)) for v in before]),
        "background_psnr": mean(
            [float(psnr(a.rgb, b.rgb, mask=(~b.mask)[..., None])) for a, b in zip(after, before, strict=True)]
        ),
        "held_out_views": len(before),
    }
    if target_color is not None:
        metrics["target_color"] = target_color
        metrics["object_color_score_before"] = mean([object_color_score(v.rgb, v.mask, target_color) for v in before])
        metrics["object_color_score_after"] = mean([object_color_score(v.rgb, v.mask, target_color) for v in after])
    else:
        metrics["object_color_score_before"] = metrics["object_color_score_after"] = None
    pictures = out / "pictures"
    for b, a in zip(before, after, strict=True):
        stem = Path(b.name).stem
        save_png(b.rgb, pictures / f"{stem}_before.png")
        save_png(a.rgb, pictures / f"{stem}_after.png")
    sheet = contact_sheet([[b.image, b.rgb, a.rgb] for b, a in zip(before, after, strict=True)])
    save_png(sheet, out / "before_after.png")
    return metrics


def report(metrics: dict, out: Path) -> None:
    from nerfstudio.utils.rich_utils import CONSOLE

    CONSOLE.print(f"\n[bold green]ED-NeRF demo finished in {metrics['wall_time_s']:.0f} s[/bold green]")
    CONSOLE.print(f"  held-out latent PSNR (reconstruction): {metrics['latent_psnr']:.2f} dB")
    if metrics.get("object_color_score_before") is not None:
        CONSOLE.print(
            f"  object is {metrics['target_color']}: {metrics['object_color_score_before']:.0%} before -> "
            f"{metrics['object_color_score_after']:.0%} after"
        )
    CONSOLE.print(f"  background PSNR (source vs edited, outside the object): {metrics['background_psnr']:.2f} dB")
    CONSOLE.print(f"  side by side (image | before | after): {out / 'before_after.png'}")
    CONSOLE.print(f"  metrics: {out / 'metrics.json'}")
    CONSOLE.print("  look at both runs in the viewer:")
    CONSOLE.print(f"    ns-viewer --load-config {metrics['source_run']}", soft_wrap=True)
    CONSOLE.print(f"    ns-viewer --load-config {metrics['edit_run']}", soft_wrap=True)
    for video in metrics.get("videos", []):  # last: what to open first
        CONSOLE.print(f"  before/after orbit: {video}", soft_wrap=True, highlight=False)


def check_demo_options(cfg: DemoConfig) -> None:
    """The demo's validation pass: every option, before the scene is rendered."""
    from ednerf_ns.errors import check_writable_folder
    from ednerf_ns.validate import check_range

    if not cfg.target_prompt.strip():
        raise ArgumentError('--target-prompt is empty; say what the scene should become, e.g. "a blue sphere on ..."')
    for flag, value in (("--train-steps", cfg.train_steps), ("--edit-steps", cfg.edit_steps)):
        check_range(value, flag, low=1, hint="pass a whole number of steps >= 1")
    check_range(cfg.views, "--views", low=9, hint="pass 9 or more views (every 8th is held out for evaluation)")
    check_range(cfg.resolution, "--resolution", low=32, high=1024, hint="pass an image size in [32, 1024] pixels")
    check_range(cfg.video_frames, "--video-frames", low=2, hint="pass 2 or more frames")
    check_writable_folder(cfg.output_dir, "--output-dir")


def entrypoint() -> None:
    from ednerf_ns.errors import run_command

    run_command("ednerf-demo", DemoConfig, main)


if __name__ == "__main__":
    entrypoint()
