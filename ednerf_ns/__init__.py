"""ED-NeRF for nerfstudio. The map of the house, lowest layer first; a module imports only from its own layer or a
lower one, never in a circle (tests/test_layout.py keeps it so):

errors.py     one-line errors and exit codes; timeline.py: wall-clock marks of a run's phases (standard library
              only; errors imports nerfstudio and tyro lazily, to print)
ops/          pure tensor maths: DDS/SDS guidance, refinement layer, metrics, step health, the latent grid, camera
              poses (torch and numpy only)
accel/        optional accelerations with eager fallbacks: hash-grid kernels, CUDA graphs of steps and UNet calls
models2d/     the 2D models: Stable Diffusion and CLIPSeg, loaded lazily (never nerfstudio)
*.py          the nerfstudio glue: configs (the method registrations), trainer, pipeline, edit_pipeline, model,
              edit_model, datamanager - saved config.yml files name these classes, so their paths never change -
              and field, samplers, checkpoint, validate, cli_options, presets, compat
tools/        commands on ed-nerf runs (ednerf-eval, ednerf-compare, before/after videos, several edits in one
              process) and the run helpers they share
demo/         ednerf-demo: procedural scenes and the embedded tiny diffusion model (its weights/ path is recorded in
              demo runs: it never moves)
bench/        measurements (ednerf-bench): GPU speed and memory, whole commands end to end, ablations, the edit
              suite

This file imports nothing: every `ns-train` imports each plugin's package.
"""
