"""Measurements: `ednerf-bench gpu` (speed and memory at Stable Diffusion 1.5 size) and `ednerf-bench ablations`."""
