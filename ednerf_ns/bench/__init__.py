"""Measurements: `ednerf-bench gpu` (speed and memory at Stable Diffusion 1.5 size), `ednerf-bench e2e` (whole
commands timed from outside), `ednerf-bench ablations` and `ednerf-bench edits` (the edit suite). The one home of
measurement code: the scripts in benchmarks/ import it.

May import: anything in ednerf_ns (the top layer).
"""
