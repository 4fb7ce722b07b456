"""Commands on ed-nerf runs - `ednerf-eval`, `ednerf-compare`, before/after orbit videos, `edit_many` (several
prompts edited in one process) - and the run helpers that they, the demo and the benchmarks share (train
in-process, load a run, render its views).

May import: everything below it (errors, timeline, ops, accel, models2d, the nerfstudio glue at the package's top
level). Never ednerf_ns.demo or ednerf_ns.bench.
"""
