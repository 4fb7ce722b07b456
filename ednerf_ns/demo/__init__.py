"""`ednerf-demo`: procedural scenes, the embedded tiny Stable Diffusion (weights/: its path is recorded in every demo
run's config.yml, so this folder never moves) and the demo command.

May import: everything below it (errors, ops, accel, models2d, the nerfstudio glue, tools). Never ednerf_ns.bench.
"""
