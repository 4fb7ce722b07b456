"""ED-NeRF for nerfstudio. The map of the house, lowest layer first; a module imports only from its own layer or a
lower one, never in a circle (tests/test_layout.py keeps it so):

errors.py     one-line errors and exit codes (stdlib; nerfstudio and tyro lazily, to print)
ops/          pure tensor maths: DDS/SDS guidance, refinement layer, metrics, step health, the latent grid, camera
              poses (torch and numpy only)
accel/        optional accelerations with eager fallbacks: hash-grid kernels, CUDA graphs of steps and UNet calls
models2d/     the 2D models: Stable Diffusion and CLIPSeg, loaded lazily (never nerfstudio)
*.py          the nerfstudio glue: configs (the method registrations), trainer, pipeline, edit_pipeline, model,
              edit_model, datamanager - saved config.yml files name these classes, so their paths never change -
              and field, samplers, checkpoint, validate, cli_options, presets, compat
tools/        commands on finished runs (ednerf-eval, ednerf-compare, before/after videos) and the run helpers
demo/         ednerf-demo: procedural scenes and the embedded tiny diffusion model (its weights/ path is recorded in
              demo runs: it never moves)
bench/        measurements (ednerf-bench): GPU speed and memory, ablations, the edit suite

This file imports nothing: every `ns-train` imports each plugin's package.
"""
