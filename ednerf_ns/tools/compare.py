"""`ednerf-compare`: watch an edit go around the object - a before/after orbit of a source run and its edit.

Writes before_after.gif (plays in any browser or image viewer), before_after.mp4 (H.264, through the ffmpeg that
the imageio-ffmpeg wheel ships: no system ffmpeg) and before_after.png (the first frame), and prints their paths.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ednerf_ns.tools.video import VIDEO_FORMATS


@dataclass
class CompareConfig:
    """Render a before/after orbit of an edit: the source run and the edited run side by side, under their prompts."""

    source: Path
    """config.yml (or run folder) of the source `ed-nerf` run."""
    edited: Path
    """config.yml (or run folder) of the edited run (an `ed-nerf-edit` run records its prompts)."""
    output_dir: Path = Path("ednerf-compare")
    """Where before_after.gif, before_after.mp4 and before_after.png go."""
    frames: int = 48
    """Frames in one orbit."""
    fps: float = 12.0
    """Frames per second of the animation."""
    max_size: int = 512
    """Render at most this many pixels on the longer side (the training cameras' size scaled down); 0 = theirs."""
    formats: tuple[Literal["gif", "mp4"], ...] = field(default_factory=lambda: VIDEO_FORMATS)
    """Which animations to write."""
    source_prompt: str | None = None
    """Caption of the left half. Default: the edited run's source prompt (or 'before')."""
    target_prompt: str | None = None
    """Caption of the right half. Default: the edited run's target prompt (or 'after')."""


def captions_of(edited_config, source_prompt: str | None, target_prompt: str | None) -> tuple[str, str]:
    """'before: <source prompt>' and 'after: <target prompt>', from the flags or the edited run's config."""
    model = edited_config.pipeline.model
    source = source_prompt if source_prompt is not None else getattr(model, "source_prompt", "") or ""
    target = target_prompt if target_prompt is not None else getattr(model, "prompt", "") or ""
    return (f"before: {source}" if source.strip() else "before"), (f"after: {target}" if target.strip() else "after")


def main(cfg: CompareConfig) -> list[Path]:
    from nerfstudio.utils.rich_utils import CONSOLE
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ednerf_ns.errors import check_writable_folder
    from ednerf_ns.tools.evaluate import check_same_scene
    from ednerf_ns.tools.runs import check_run, load_run, save_png
    from ednerf_ns.tools.video import before_after_animation
    from ednerf_ns.validate import check_range

    check_range(cfg.frames, "--frames", low=2, hint="pass 2 or more frames")
    check_range(cfg.fps, "--fps", low=0, low_open=True, high=100, hint="pass frames per second in (0, 100]")
    check_range(cfg.max_size, "--max-size", low=0, hint="pass 0 (the cameras' size) or a size in pixels")
    check_writable_folder(cfg.output_dir, "--output-dir")
    source_file, _, _ = check_run(cfg.source, "--source", with_data=False)
    edited_file, edited_config, _ = check_run(cfg.edited, "--edited", with_data=False)
    captions = captions_of(edited_config, cfg.source_prompt, cfg.target_prompt)

    source = load_run(source_file, test_mode="inference")
    edited = load_run(edited_file, test_mode="inference")
    check_same_scene(source, edited, "train", cfg.source, cfg.edited)
    out = cfg.output_dir.expanduser()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=CONSOLE, transient=True) as progress:
        task = progress.add_task("Rendering the orbit from both runs", total=2 * cfg.frames)
        advance = lambda: progress.advance(task)  # noqa: E731
        written, first_frame = before_after_animation(
            source, edited, captions, out, cfg.frames, cfg.fps, cfg.max_size, cfg.formats, advance
        )
    files = [*written, save_png(first_frame, out / "before_after.png")]
    CONSOLE.print("[bold green]ednerf-compare:[/bold green] before/after orbit of the edit:")
    for path in files:
        CONSOLE.print(f"  {path}", soft_wrap=True, highlight=False)
    return files


def entrypoint() -> None:
    from ednerf_ns.errors import run_command

    run_command("ednerf-compare", CompareConfig, main)


if __name__ == "__main__":
    entrypoint()
