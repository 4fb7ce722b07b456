"""The benchmark's options (`GpuBenchConfig`, its command line), the prompts of its edits and the issue's targets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

SOURCE_PROMPT = "a red sphere on a gray checkered floor"
TARGET_PROMPT = "a blue sphere on a gray checkered floor"
# The targets on one H100 at SD 1.5 size.
TARGETS = {"edit_step_ms": 25.0, "edit_peak_memory_gb": 6.0, "edit_default_s": 60.0, "train_default_s": 300.0}


@dataclass
class GpuBenchConfig:
    """Speed and memory of training and editing at Stable Diffusion 1.5 size (or a CPU smoke run)."""

    mode: Literal["sd15", "tiny"] = "sd15"
    """sd15: random-weight SD 1.5-size model on CUDA and a 512 px scene. tiny: the embedded tiny model on the
    CPU at small sizes, the same measurements (a smoke test of this benchmark)."""
    output: Path | None = None
    """Also write the JSON result to this file (rewritten after every section, so an interrupted run keeps
    what it measured)."""
    workdir: Path | None = None
    """Where the model, the scene and the runs go. Default: a temporary folder, deleted at the end."""
    device: Literal["auto", "cuda", "cpu"] = "auto"
    """auto = cuda for sd15, cpu for tiny."""
    resolution: int | None = None
    """Scene image size in pixels (latents are 1/8). Default 512 (sd15) / 64 (tiny)."""
    views: int | None = None
    """Rendered views of the scene; every 8th is held out. Default 24 (sd15) / 8 (tiny)."""
    train_steps: int | None = None
    """Measured ed-nerf training steps, after the warm-up. Default 300 (sd15) / 3 (tiny)."""
    train_warmup: int | None = None
    """ed-nerf steps run before measuring. Default 20 (sd15) / 1 (tiny)."""
    edit_steps: int | None = None
    """Measured steps of each short edit (the UNet variants), after the warm-up. Default 60 (sd15) / 2 (tiny)."""
    edit_warmup: int | None = None
    """Edit steps run before measuring (the first captures the CUDA graph). Default 10 (sd15) / 1 (tiny)."""
    full_edit: bool = True
    """Run the default edit at its full default length (configs.EDIT_STEPS) once (sd15; the tiny mode always runs
    a short edit and extrapolates)."""
    edit_variants: bool = True
    """Also run short edits without each speed-up (the fused hash grid, the step graph, the UNet graph): the
    before/after of each, in the same process."""
    unet_iters: int | None = None
    """Timed UNet calls per variant in the UNet benchmark. Default 30 (sd15) / 2 (tiny)."""
    train_variants: bool = True
    """Also time ed-nerf steps after the proposal-weight anneal (replayed from a CUDA graph), for the estimate
    of the default run."""
    compile: bool = False
    """Also time torch.compile of the UNet (with and without a CUDA graph); compiling takes a minute or more."""
    sync_window: int = 5
    """Steps of the training and edit loops run with torch's sync debug mode on, to list host synchronisations."""
    time_budget_s: float = 420.0
    """Skip the remaining optional sections (edit variants, compile) when they would end after this many seconds."""
    seed: int = 0
    """Seed of the scene's cameras, the model weights and the runs."""


def parse_args(argv: list[str]) -> GpuBenchConfig:
    """`--name value` / `--name` / `--no-name` for the config's fields: tyro when installed, else argparse."""
    try:
        import tyro

        return tyro.cli(GpuBenchConfig, args=argv)
    except ImportError:
        pass
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ednerf_ns.bench.gpu", description=GpuBenchConfig.__doc__)
    for f in dataclasses.fields(GpuBenchConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default)
        elif "Path" in str(f.type):
            parser.add_argument(flag, dest=f.name, type=Path, default=f.default)
        elif "int" in str(f.type):
            parser.add_argument(flag, dest=f.name, type=int, default=f.default)
        elif "float" in str(f.type):
            parser.add_argument(flag, dest=f.name, type=float, default=f.default)
        else:
            parser.add_argument(flag, dest=f.name, default=f.default)
    return GpuBenchConfig(**vars(parser.parse_args(argv)))
