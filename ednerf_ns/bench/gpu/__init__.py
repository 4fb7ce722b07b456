"""`ednerf-bench gpu`: speed and memory of ED-NeRF at Stable Diffusion 1.5 size, measured through the real code.

What it does (mode `sd15`, on CUDA):
1. Builds random-weight components with the exact SD 1.5 architecture (no download), writes them in diffusers
   layout (fp16) and loads them back through `LatentDiffusion`, as a user's run does.
2. Times the UNet call of an edit step (batch 4 at the scene's latent size) in every variant in one process:
   eager, channels_last, CUDA-graph replay, both, and (with --compile) torch.compile with and without a graph;
   checks each against eager; counts its FLOPs and bytes and compares with the card's measured ceilings.
3. Renders a procedural 512 x 512 scene (64 x 64 latents) and trains `ed-nerf` with the method's default config
   in nerfstudio's real trainer loop for a few hundred steps; extrapolates the default step count honestly
   (measured loop + remaining steps x mean step + the evaluations and checkpoints the default run would do).
4. Edits that run with `ed-nerf-edit` at its default config and length, timing each step's phases (data,
   render + refine forward, metrics, loss with the UNet, backward, optimizer) with CUDA events, the peak memory,
   and the host synchronisations left in the loop; then short edits with the UNet variants.
Everything is printed as one JSON object (last line of stdout) and written to --output after every section.

Mode `tiny` runs the same measurements with the embedded tiny model on the CPU at small sizes (wall-clock timed):
a smoke test of this benchmark that runs in CI.

Layout: config (options, prompts, targets, command line), timing (clocks and per-phase step records), sd15 (the
random-weight SD 1.5 model and FLOP/byte counters), core (one run's settings, results and sections), environment,
unet and nerf (the sections), run (`Bench` and `main`). `python -m ednerf_ns.bench.gpu` runs `main`.
"""

from ednerf_ns.bench.gpu.config import SOURCE_PROMPT, TARGET_PROMPT, GpuBenchConfig, parse_args
from ednerf_ns.bench.gpu.nerf import apply_options
from ednerf_ns.bench.gpu.run import Bench, main
from ednerf_ns.bench.gpu.sd15 import SD15_TEXT, SD15_UNET, SD15_VAE, build_sd15

__all__ = [
    "SD15_TEXT",
    "SD15_UNET",
    "SD15_VAE",
    "SOURCE_PROMPT",
    "TARGET_PROMPT",
    "Bench",
    "GpuBenchConfig",
    "apply_options",
    "build_sd15",
    "main",
    "parse_args",
]
